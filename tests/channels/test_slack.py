"""SlackNotifier end to end: manager → outbox → sender → channel → a loopback "Slack".

The loopback server answers the way Slack documents for incoming webhooks: ``200 ok``,
plain-text error codes (``invalid_payload``, ``no_service``, ``channel_is_archived``) and
429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.slack import SlackNotifier
from afs_callbacks.config import Env
from afs_callbacks.events import NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import TRUNCATION_MARK
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, Reply
from tests.channels import support
from tests.channels.support import assert_not_shown, assert_not_stored, notify_with, wait_delivery

SECRET = "XXXXslackSECRET0123456789"
HOOK_PATH = f"/services/T000/B000/{SECRET}"

# The shared fixture, bound in this module so that pytest finds it for these tests.
manager_for = support.manager_for

notify = notify_with(
    title="Training completed: bert-tiny",
    message="Run r1 finished in 3m 02s.",
    event_type="training_completed",
    model="bert-tiny",
    run_id="r1",
    metrics={"loss": 0.1234567, "accuracy": 0.91},
)


def mrkdwn_texts(payload: dict[str, Any]) -> list[str]:
    """Every text Slack parses as mrkdwn: the fallback and every mrkdwn text object."""
    texts = [payload["text"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                texts.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(payload["blocks"])
    return texts


def assert_within_slack_limits(payload: dict[str, Any]) -> None:
    """Slack's documented Block Kit limits."""
    blocks = payload["blocks"]
    assert 1 <= len(blocks) <= 50
    for block in blocks:
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert 1 <= len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            if "text" in block:
                assert 1 <= len(block["text"]["text"]) <= 3000
            if "fields" in block:
                assert 1 <= len(block["fields"]) <= 10
                assert all(1 <= len(field["text"]) <= 2000 for field in block["fields"])
    assert len(payload["text"]) <= 40_000


def test_message_shape(manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver) -> None:
    manager = manager_for(SlackNotifier(webhook_url=receiver.url(HOOK_PATH), channel="#training"))
    event = notify(manager)

    [request] = receiver.wait_for(1)
    assert request.method == "POST" and request.path == HOOK_PATH
    assert request.headers["Content-Type"] == "application/json"
    payload = request.json()
    assert_within_slack_limits(payload)
    header = payload["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"] == "✅ Training completed: bert-tiny"
    texts = "\n".join(mrkdwn_texts(payload))
    assert "*Model*\nbert-tiny" in texts and "*Run*\nr1" in texts
    assert "*loss*\n0.1235" in texts and "*accuracy*\n0.91" in texts
    assert "Run r1 finished in 3m 02s." in texts
    assert payload["text"].startswith("SUCCESS: Training completed: bert-tiny")
    assert payload["channel"] == "#training"
    row = wait_delivery(manager, event, lambda d: d.state == "delivered")
    assert row.attempts == 1


def test_huge_message_and_100_metrics_fit_the_limits(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver
) -> None:
    manager = manager_for(SlackNotifier(webhook_url=receiver.url(HOOK_PATH)))
    metrics = {f"metric_{index:03d}": index / 7 for index in range(100)}
    notify(manager, title="T" * 400, message="&<>x" * 20_000, metrics=metrics)

    payload = receiver.wait_for(1)[0].json()
    assert_within_slack_limits(payload)
    assert payload["blocks"][0]["text"]["text"].endswith(TRUNCATION_MARK)
    sections = [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section" and "text" in b]
    message = next(text for text in sections if text.startswith("&amp;&lt;&gt;x"))
    assert message.endswith(TRUNCATION_MARK)
    # The cut never splits an entity.
    assert message[: -len(TRUNCATION_MARK)].endswith(("x", "&amp;", "&lt;", "&gt;"))
    texts = "\n".join(mrkdwn_texts(payload))
    # Twenty metrics get fields; the other eighty are listed, none dropped silently.
    assert "*metric_019*" in texts and "80 more: metric_020=" in texts and "metric_099=" in texts


def test_mentions_and_links_from_run_text_are_escaped(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver
) -> None:
    manager = manager_for(SlackNotifier(webhook_url=receiver.url(HOOK_PATH)))
    hostile = "<!channel> <@U024BE7LH> <https://evil.example|click here> & <!here>"
    notify(
        manager, title=f"NaN in {hostile}", message=f"error: {hostile}", model=hostile, metrics={hostile: 1.0}
    )

    payload = receiver.wait_for(1)[0].json()
    for text in mrkdwn_texts(payload):
        assert "<" not in text and ">" not in text, text
    texts = "\n".join(mrkdwn_texts(payload))
    assert (
        "&lt;!channel&gt; &lt;@U024BE7LH&gt; &lt;https://evil.example|click here&gt; &amp; &lt;!here&gt;"
        in texts
    )
    # The header is plain_text: Slack shows it literally and parses no mention in it.
    assert payload["blocks"][0]["text"]["type"] == "plain_text"


def test_429_waits_the_retry_after_hint_then_delivers(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver
) -> None:
    manager = manager_for(SlackNotifier(webhook_url=receiver.url(HOOK_PATH)))
    receiver.reply(Reply(429, "rate_limited", headers={"Retry-After": "30"}))
    event = notify(manager)

    row = wait_delivery(manager, event, lambda d: d.attempts == 1 and d.state == "pending")
    assert row.next_attempt is not None
    # The server's 30 s, not the 0.05 s backoff of the settings.
    assert 25 < row.next_attempt - time.time() <= 30
    assert "429" in (row.last_error or "") and "rate_limited" in (row.last_error or "")
    assert len(receiver.wait_for(1)) == 1

    # A flush honours the pause too (hammering a rate-limited service gets it banned): the
    # next attempt is 30 s away, beyond this flush's deadline, so nothing more is sent.
    report = manager.flush(timeout=0.5)
    assert report.delivered == 0 and report.pending == 1
    assert len(receiver.requests) == 1


def test_5xx_is_retried(manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver) -> None:
    manager = manager_for(SlackNotifier(webhook_url=receiver.url(HOOK_PATH)))
    receiver.reply(Reply(500, "rollup_error"), Reply(503, ""))
    event = notify(manager)

    row = wait_delivery(manager, event, lambda d: d.state == "delivered")
    assert row.attempts == 3
    assert len(receiver.wait_for(3)) == 3


@pytest.mark.parametrize(
    ("status", "body", "disables"),
    [
        (400, "invalid_payload", False),
        (403, "action_prohibited", True),
        (404, "no_service", True),
        (410, "channel_is_archived", True),
    ],
)
def test_permanent_answers_are_not_retried(
    manager_for: Callable[..., NotificationManager],
    receiver: LoopbackReceiver,
    status: int,
    body: str,
    disables: bool,
) -> None:
    manager = manager_for(SlackNotifier(webhook_url=receiver.url(HOOK_PATH)))
    receiver.reply(Reply(status, body))
    first = notify(manager)
    row = wait_delivery(manager, first, lambda d: d.state == "dead")
    assert row.attempts == 1
    assert row.last_error == f"HTTP {status}: {body}"

    second = notify(manager, title="next message")
    later = wait_delivery(manager, second, lambda d: d.state in ("dead", "delivered"))
    if disables:
        # A dead hook is not asked again: the message is dead without a request.
        assert later.state == "dead" and later.attempts == 0
        assert (later.last_error or "").startswith("channel disabled")
        assert len(receiver.wait_for(1)) == 1
    else:
        assert later.state == "delivered"
        assert len(receiver.wait_for(2)) == 2


def test_secret_never_leaks(
    manager_for: Callable[..., NotificationManager],
    receiver: LoopbackReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # A dead port: requests' ConnectionError names the whole URL.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = SlackNotifier(webhook_url=f"http://127.0.0.1:{port}{HOOK_PATH}")
    manager = manager_for(refused, max_age=0.5)  # transient failures end only with age
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.state == "dead")
    assert "ConnectionError" in (row.last_error or "")

    # An error page that echoes the path (without the host).
    echoing = SlackNotifier(webhook_url=receiver.url(HOOK_PATH))
    receiver.reply(*[Reply(404, f"no_service for {HOOK_PATH}")] * 2)
    manager.register_handler("slack", echoing)
    second = notify(manager, title="second")
    echoed = wait_delivery(manager, second, lambda d: d.state == "dead")
    assert "no_service for ***" in (echoed.last_error or "")

    result = echoing.send(second)
    assert result.outcome is Outcome.PERMANENT
    shown = [
        caplog.text,
        row.last_error or "",
        echoed.last_error or "",
        result.detail,
        repr(refused),
        refused.describe(),
        str(refused.status()),
        repr(echoing),
    ]
    assert_not_shown(shown, SECRET)
    assert refused.describe() == f"http://127.0.0.1:{port}/***"
    manager.close(timeout=0)
    assert_not_stored(tmp_path / "state", SECRET)


def test_from_env(receiver: LoopbackReceiver) -> None:
    assert SlackNotifier.from_env(Env({}, env_file=False)) is None
    notifier = SlackNotifier.from_env(
        Env({"SLACK_WEBHOOK_URL": receiver.url(HOOK_PATH), "SLACK_CHANNEL": "#ml"}, env_file=False)
    )
    assert notifier is not None and notifier.channel == "#ml"
    assert notifier.describe() == f"http://127.0.0.1:{receiver.port}/*** #ml"


def test_from_env_wants_the_url_when_a_channel_is_set() -> None:
    with pytest.raises(ConfigurationError) as raised:
        SlackNotifier.from_env(Env({"SLACK_CHANNEL": "#ml"}, env_file=False))
    assert raised.value.variable == "SLACK_WEBHOOK_URL"


def test_from_env_refuses_plain_http_to_a_remote_host_without_echoing_it() -> None:
    url = f"http://hooks.example.com{HOOK_PATH}"
    with pytest.raises(ConfigurationError) as raised:
        SlackNotifier.from_env(Env({"SLACK_WEBHOOK_URL": url}, env_file=False))
    assert raised.value.variable == "SLACK_WEBHOOK_URL"
    assert SECRET not in str(raised.value)
    allowed = SlackNotifier.from_env(Env({"SLACK_WEBHOOK_URL": url, "AFS_ALLOW_HTTP": "1"}, env_file=False))
    assert allowed is not None


def test_manager_from_env_builds_the_channel(receiver: LoopbackReceiver, tmp_path: Path) -> None:
    env = Env(
        {"SLACK_WEBHOOK_URL": receiver.url(HOOK_PATH), "AFS_STATE_DIR": str(tmp_path / "env-state")},
        env_file=False,
    )
    manager = NotificationManager.from_env(env, channels=["slack"])
    try:
        assert isinstance(manager.handlers["slack"], SlackNotifier)
    finally:
        manager.close(timeout=0)


def test_check_says_a_probe_is_not_possible(receiver: LoopbackReceiver) -> None:
    result = SlackNotifier(webhook_url=receiver.url(HOOK_PATH)).check()
    assert result.outcome is Outcome.PERMANENT and "cannot be probed" in result.detail
    assert receiver.requests == []


def test_payload_is_json_serialisable_for_odd_metric_values(receiver: LoopbackReceiver) -> None:
    notifier = SlackNotifier(webhook_url=receiver.url(HOOK_PATH))
    event = NotificationEvent(
        "nan_detected", "error", "NaN", "", {"metrics": {"loss": float("nan"), "lr": 1e-7, "ok": True}}
    )
    payload = notifier.payload(NotificationEvent.from_json(event.to_json()))
    text = json.dumps(payload)
    assert "*loss*\\nNaN" in text and "*lr*\\n1.000e-07" in text
