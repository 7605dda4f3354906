"""WebhookNotifier end to end: manager → outbox → sender → channel → a loopback receiver.

The receiving side checks signatures the way a Standard Webhooks consumer does: with the
reference ``standardwebhooks`` library when it is installed, and always with a verifier
written from the specification (HMAC-SHA256 over ``id.timestamp.body``, ``v1,<base64>``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.webhook import WebhookNotifier, signing_key
from afs_callbacks.config import Env
from afs_callbacks.events import Attachment, NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import assert_not_shown, assert_not_stored, notify_with, wait_delivery

KEY = b"0123456789abcdef0123456789abcdefKEY!"
WHSEC = "whsec_" + base64.b64encode(KEY).decode()
RAW_SECRET = "plain-shared-secret-RAW-4242"
PATH_TOKEN = "pathTOKEN0123456789xyz"
HOOK_PATH = f"/hooks/{PATH_TOKEN}"
AUTH = "Bearer hdrSECRET-abcdefghijkl"


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager_for = support.manager_for

notify = notify_with(
    title="NaN loss",
    message="loss became NaN at step 120",
    event_type="nan_detected",
    model="gpt-tiny",
    run_id="r9",
    step=120,
    metrics={"loss": float("nan"), "lr": 3e-4},
)


def verify_from_spec(request: ReceivedRequest, key: bytes, tolerance: float = 300) -> dict[str, Any]:
    """A Standard Webhooks consumer: check headers, timestamp window and signature."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    message_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) <= tolerance
    signed = f"{message_id}.{timestamp}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [entry.split(",", 1) for entry in headers["webhook-signature"].split(" ")]
    assert any(version == "v1" and hmac.compare_digest(sig, expected) for version, sig in offered)
    body: dict[str, Any] = json.loads(request.body)
    return body


def test_signed_event_verifies_with_the_reference_library(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver
) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    manager = manager_for(WebhookNotifier(url=receiver.url(HOOK_PATH), secret=WHSEC))
    event = notify(manager)

    [request] = receiver.wait_for(1)
    body = standardwebhooks.Webhook(WHSEC).verify(request.body, dict(request.headers))
    assert body["id"] == event.id
    tampered = request.body.replace(b"NaN loss", b"all fine")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(WHSEC).verify(tampered, dict(request.headers))


def test_body_is_the_event_and_headers_follow_standard_webhooks(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver
) -> None:
    manager = manager_for(WebhookNotifier(url=receiver.url(HOOK_PATH), secret=WHSEC))
    chart = Attachment("loss.png", "image/png", b"\x89PNG fake")
    event = notify(manager, attachments=[chart])

    [request] = receiver.wait_for(1)
    assert request.path == HOOK_PATH
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == event.id
    body = verify_from_spec(request, KEY)
    rebuilt = NotificationEvent.from_dict(body)
    assert (rebuilt.id, rebuilt.title, rebuilt.event_type) == (event.id, "NaN loss", event.event_type)
    # JSON has no NaN: the body spells it out.
    assert body["context"]["metrics"] == {"loss": "nan", "lr": 3e-4}
    assert rebuilt.attachments == (chart,)
    assert wait_delivery(manager, event, lambda d: d.state == "delivered").attempts == 1


def test_raw_secret_signs_with_its_bytes(receiver: LoopbackReceiver) -> None:
    notifier = WebhookNotifier(url=receiver.url(HOOK_PATH), secret=RAW_SECRET)
    assert notifier.send(NotificationEvent("custom", "info", "hello")).ok
    verify_from_spec(receiver.wait_for(1)[0], RAW_SECRET.encode())


def test_unsigned_without_a_secret_and_attachments_can_be_left_out(receiver: LoopbackReceiver) -> None:
    notifier = WebhookNotifier(url=receiver.url(HOOK_PATH), include_attachments=False)
    chart = Attachment("loss.png", "image/png", b"\x89PNG fake")
    assert notifier.send(NotificationEvent("custom", "info", "hello", attachments=(chart,))).ok
    [request] = receiver.wait_for(1)
    assert "webhook-signature" not in request.headers and "webhook-id" in request.headers
    assert request.json()["attachments"] == []


def test_retries_keep_the_id_and_sign_each_attempt(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver
) -> None:
    manager = manager_for(WebhookNotifier(url=receiver.url(HOOK_PATH), secret=WHSEC))
    receiver.reply(Reply(503, "busy"), Reply(408, ""))
    event = notify(manager)

    row = wait_delivery(manager, event, lambda d: d.state == "delivered")
    assert row.attempts == 3
    requests = receiver.wait_for(3)
    # One id across attempts: the receiver can drop the duplicates of at-least-once delivery.
    assert {request.headers["webhook-id"] for request in requests} == {event.id}
    for request in requests:
        verify_from_spec(request, KEY)
    assert len({request.body for request in requests}) == 1


def test_429_waits_the_retry_after_hint(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver
) -> None:
    manager = manager_for(WebhookNotifier(url=receiver.url(HOOK_PATH)))
    receiver.reply(Reply(429, "slow down", headers={"Retry-After": "40"}))
    event = notify(manager)

    row = wait_delivery(manager, event, lambda d: d.attempts == 1 and d.state == "pending")
    assert row.next_attempt is not None and 35 < row.next_attempt - time.time() <= 40
    # A flush honours the pause too: 40 s is beyond its deadline, so nothing more is sent.
    assert manager.flush(timeout=0.5).pending == 1
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(("status", "disables"), [(400, False), (401, False), (404, False), (410, True)])
def test_4xx_is_permanent_and_410_disables(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver, status: int, disables: bool
) -> None:
    manager = manager_for(WebhookNotifier(url=receiver.url(HOOK_PATH)))
    receiver.reply(Reply(status, "nope"))
    first = notify(manager)
    row = wait_delivery(manager, first, lambda d: d.state == "dead")
    assert row.attempts == 1 and row.last_error == f"HTTP {status}: nope"

    second = notify(manager, title="next")
    later = wait_delivery(manager, second, lambda d: d.state in ("dead", "delivered"))
    assert later.state == ("dead" if disables else "delivered")
    expected_requests = 1 if disables else 2
    assert len(receiver.wait_for(expected_requests)) == expected_requests


def test_from_env_reads_secret_and_headers(receiver: LoopbackReceiver) -> None:
    assert WebhookNotifier.from_env(Env({}, env_file=False)) is None
    env = Env(
        {
            "WEBHOOK_URL": receiver.url(HOOK_PATH),
            "WEBHOOK_SECRET": WHSEC,
            "WEBHOOK_HEADERS": json.dumps({"Authorization": AUTH, "X-Team": "ml"}),
            "WEBHOOK_INCLUDE_ATTACHMENTS": "false",
        },
        env_file=False,
    )
    notifier = WebhookNotifier.from_env(env)
    assert notifier is not None and notifier.signed and not notifier.include_attachments
    assert notifier.send(NotificationEvent("custom", "info", "hello")).ok
    [request] = receiver.wait_for(1)
    assert request.headers["Authorization"] == AUTH and request.headers["X-Team"] == "ml"
    verify_from_spec(request, KEY)
    assert notifier.describe() == (
        f"http://127.0.0.1:{receiver.port}/*** (signed; headers: Authorization, X-Team)"
    )


@pytest.mark.parametrize(
    ("variables", "variable"),
    [
        ({"WEBHOOK_SECRET": "whsec_%%%not-base64-SECRETVALUE"}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_HEADERS": "Authorization: Bearer SECRETVALUE"}, "WEBHOOK_HEADERS"),
        ({"WEBHOOK_HEADERS": '{"webhook-id": "SECRETVALUE"}'}, "WEBHOOK_HEADERS"),
        ({"WEBHOOK_HEADERS": '{"X-Key": "SECRETVALUE\\r\\nX-Evil: 1"}'}, "WEBHOOK_HEADERS"),
        ({"WEBHOOK_URL": "ftp://example.com/SECRETVALUE"}, "WEBHOOK_URL"),
    ],
)
def test_bad_settings_name_the_variable_without_echoing_it(
    receiver: LoopbackReceiver, variables: Mapping[str, str], variable: str
) -> None:
    env = Env({"WEBHOOK_URL": receiver.url(HOOK_PATH), **variables}, env_file=False)
    with pytest.raises(ConfigurationError) as raised:
        WebhookNotifier.from_env(env)
    assert raised.value.variable == variable
    assert "SECRETVALUE" not in str(raised.value)


def test_a_secret_without_a_url_is_an_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        WebhookNotifier.from_env(Env({"WEBHOOK_SECRET": WHSEC}, env_file=False))
    assert raised.value.variable == "WEBHOOK_URL" and WHSEC not in str(raised.value)


def test_signing_key_accepts_unpadded_base64() -> None:
    unpadded = WHSEC.rstrip("=")
    assert signing_key(unpadded) == signing_key(WHSEC) == KEY
    assert signing_key("not-prefixed") == b"not-prefixed"


def test_check_says_a_probe_is_not_possible(receiver: LoopbackReceiver) -> None:
    result = WebhookNotifier(url=receiver.url(HOOK_PATH)).check()
    assert result.outcome is Outcome.PERMANENT and receiver.requests == []


def test_secrets_never_leak(
    manager_for: Callable[..., NotificationManager],
    receiver: LoopbackReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = WebhookNotifier(url=receiver.url(HOOK_PATH), secret=WHSEC, headers={"Authorization": AUTH})
    manager = manager_for(notifier, max_age=0.5)  # transient failures end only with age
    # A receiver whose error pages echo the request line and the headers it got.
    receiver.responder = lambda request: Reply(
        500, f"failed {request.path} auth={request.headers.get('Authorization')} key={WHSEC}"
    )
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.state == "dead")
    assert "HTTP 500: failed" in (row.last_error or "")

    secrets = (PATH_TOKEN, WHSEC, AUTH.split()[1])
    shown = (caplog.text, row.last_error or "", repr(notifier), notifier.describe(), str(notifier.status()))
    assert_not_shown(shown, *secrets)
    manager.close(timeout=0)
    assert_not_stored(tmp_path / "state", *secrets)
