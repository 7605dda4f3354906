"""DiscordNotifier end to end: manager → outbox → sender → channel → a loopback "Discord".

The loopback server answers as Discord documents for ``POST /webhooks/{id}/{token}?wait=true``:
200 with the stored message, 429 with both ``Retry-After`` and a JSON ``retry_after``
(float seconds), 401/404 for a deleted or revoked webhook, and ``GET`` on the webhook URL
returning the webhook object (which holds its token).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.discord import DiscordNotifier
from afs_callbacks.config import Env
from afs_callbacks.events import Attachment, NotificationEvent
from afs_callbacks.formatting import LEVEL_COLORS, TRUNCATION_MARK
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import assert_not_shown, assert_not_stored, notify_with, wait_delivery

TOKEN = "dIsCoRdToKeN_0123456789abcdefSECRET"
HOOK_PATH = f"/api/webhooks/112233445566778899/{TOKEN}"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager_for = support.manager_for

notify = notify_with(
    title="Epoch 3 done",
    message="validation loss improved",
    event_type="epoch_completed",
    model="resnet18",
    run_id="r7",
    epoch=3,
    metrics={"val_loss": 0.25, "val_acc": 0.93},
)


@pytest.fixture
def discord(receiver: LoopbackReceiver) -> LoopbackReceiver:
    """The receiver answering like Discord does with ``wait=true``: the stored message."""
    receiver.default = Reply(200, {"id": "1234", "type": 0, "content": "", "embeds": []})
    return receiver


def form_parts(request: ReceivedRequest) -> dict[str, tuple[str | None, str, bytes]]:
    """A multipart/form-data body as ``{name: (filename, content type, bytes)}``."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    assert message.is_multipart()
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        parts[str(name)] = (part.get_filename(), part.get_content_type(), payload)
    return parts


def assert_within_discord_limits(payload: dict[str, Any]) -> None:
    """Discord's documented message and embed limits."""
    assert len(payload.get("content", "")) <= 2000
    assert 1 <= len(payload["embeds"]) <= 10
    for embed in payload["embeds"]:
        assert len(embed["title"]) <= 256
        assert len(embed.get("description", "")) <= 4096
        assert len(embed["fields"]) <= 25
        for field in embed["fields"]:
            assert 1 <= len(field["name"]) <= 256
            assert 1 <= len(field["value"]) <= 1024
        assert len(embed["footer"]["text"]) <= 2048
        total = len(embed["title"]) + len(embed.get("description", "")) + len(embed["footer"]["text"])
        total += sum(len(field["name"]) + len(field["value"]) for field in embed["fields"])
        assert total <= 6000


def test_embed_shape(manager_for: Callable[..., NotificationManager], discord: LoopbackReceiver) -> None:
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    event = notify(manager, level="warning")

    [request] = discord.wait_for(1)
    assert request.path == HOOK_PATH
    assert request.query["wait"] == ["true"]
    payload = request.json()
    assert_within_discord_limits(payload)
    assert payload["allowed_mentions"] == {"parse": []}
    [embed] = payload["embeds"]
    assert embed["title"] == "⚠️ Epoch 3 done"
    assert embed["description"] == "validation loss improved"
    assert embed["color"] == LEVEL_COLORS[event.level]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Model"] == "resnet18" and fields["Epoch"] == "3"
    assert fields["val_loss"] == "0.25" and fields["val_acc"] == "0.93"
    assert wait_delivery(manager, event, lambda d: d.state == "delivered").attempts == 1


def test_huge_text_and_100_metrics_fit_the_limits(
    manager_for: Callable[..., NotificationManager], discord: LoopbackReceiver
) -> None:
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    metrics = {f"m{index:03d}_" + "n" * 300: index for index in range(100)}
    notify(manager, title="T" * 1000, message="x" * 50_000, metrics=metrics, model="M" * 5000)

    payload = discord.wait_for(1)[0].json()
    assert_within_discord_limits(payload)
    [embed] = payload["embeds"]
    assert embed["title"].endswith(TRUNCATION_MARK)
    assert embed["description"].endswith(TRUNCATION_MARK)
    assert len(embed["fields"]) == 25
    assert embed["fields"][-1]["name"].endswith("more metrics")


def test_mentions_ping_nobody(
    manager_for: Callable[..., NotificationManager], discord: LoopbackReceiver
) -> None:
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    notify(manager, title="@everyone look", message="<@123456789> @here", model="@everyone")

    payload = discord.wait_for(1)[0].json()
    # Discord parses mentions only from allowed_mentions' list: empty means none ping.
    assert payload["allowed_mentions"] == {"parse": []}
    assert "content" not in payload or "@everyone" not in payload["content"]


def test_chart_is_sent_as_multipart_and_shown_in_the_embed(
    manager_for: Callable[..., NotificationManager], discord: LoopbackReceiver
) -> None:
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    chart = Attachment("loss curve.png", "image/png", PNG)
    event = notify(manager, attachments=[chart])

    [request] = discord.wait_for(1)
    assert request.query["wait"] == ["true"]
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    parts = form_parts(request)
    payload = json.loads(parts["payload_json"][2])
    assert_within_discord_limits(payload)
    assert payload["embeds"][0]["image"] == {"url": "attachment://loss_curve.png"}
    assert payload["attachments"] == [{"id": 0, "filename": "loss_curve.png"}]
    assert payload["allowed_mentions"] == {"parse": []}
    assert parts["files[0]"] == ("loss_curve.png", "image/png", PNG)
    assert wait_delivery(manager, event, lambda d: d.state == "delivered").attempts == 1


def test_a_file_over_the_upload_limit_is_left_out_and_the_embed_sent_again(
    manager_for: Callable[..., NotificationManager], discord: LoopbackReceiver
) -> None:
    # Discord's answer to an upload over the limit: 413 with its JSON error 40005.
    discord.reply(Reply(413, {"message": "Request entity too large", "code": 40005}))
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    event = notify(manager, attachments=[Attachment("loss_curve.png", "image/png", PNG)])

    with_file, without = discord.wait_for(2)
    assert with_file.headers["Content-Type"].startswith("multipart/form-data")
    assert without.headers["Content-Type"] == "application/json"
    assert "image" not in without.json()["embeds"][0]
    delivery = wait_delivery(manager, event, lambda d: d.state == "delivered")
    assert delivery.attempts == 1 and "without its attachment" in (delivery.last_error or "")
    assert "40005" in (delivery.last_error or "") or "too large" in (delivery.last_error or "")


def test_429_prefers_the_body_retry_after(
    manager_for: Callable[..., NotificationManager], discord: LoopbackReceiver
) -> None:
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    discord.reply(
        Reply(
            429,
            {"message": "You are being rate limited.", "retry_after": 30.5, "global": False},
            headers={"Retry-After": "60"},
        )
    )
    event = notify(manager)

    row = wait_delivery(manager, event, lambda d: d.attempts == 1 and d.state == "pending")
    assert row.next_attempt is not None
    # The body's 30.5 s (not the header's 60, not the 0.05 s backoff).
    assert 25 < row.next_attempt - time.time() <= 30.5
    assert len(discord.wait_for(1)) == 1

    # A flush honours the pause too: 30.5 s is beyond its deadline, so nothing more is sent.
    report = manager.flush(timeout=0.5)
    assert report.delivered == 0 and report.pending == 1
    assert len(discord.requests) == 1


def test_429_without_a_body_uses_the_header(discord: LoopbackReceiver) -> None:
    notifier = DiscordNotifier(webhook_url=discord.url(HOOK_PATH))
    discord.reply(Reply(429, "<html>error 1015</html>", headers={"Retry-After": "12"}))
    result = notifier.send(NotificationEvent("custom", "info", "hello"))
    assert result.outcome is Outcome.RETRY and result.retry_after == 12.0


def test_5xx_is_retried(manager_for: Callable[..., NotificationManager], discord: LoopbackReceiver) -> None:
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    discord.reply(Reply(502, "bad gateway"))
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.state == "delivered")
    assert row.attempts == 2 and len(discord.wait_for(2)) == 2


@pytest.mark.parametrize(
    ("status", "body", "disables"),
    [
        (400, {"code": 50035, "message": "Invalid Form Body"}, False),
        (401, {"code": 50027, "message": "Invalid Webhook Token"}, True),
        (404, {"code": 10015, "message": "Unknown Webhook"}, True),
    ],
)
def test_permanent_answers_are_not_retried(
    manager_for: Callable[..., NotificationManager],
    discord: LoopbackReceiver,
    status: int,
    body: dict[str, Any],
    disables: bool,
) -> None:
    manager = manager_for(DiscordNotifier(webhook_url=discord.url(HOOK_PATH)))
    discord.reply(Reply(status, body))
    first = notify(manager)
    row = wait_delivery(manager, first, lambda d: d.state == "dead")
    assert row.attempts == 1
    assert f"HTTP {status}" in (row.last_error or "") and body["message"] in (row.last_error or "")

    second = notify(manager, title="next")
    later = wait_delivery(manager, second, lambda d: d.state in ("dead", "delivered"))
    if disables:
        # Never hammer a revoked hook: Discord bans IPs that collect 401/403/429s.
        assert later.state == "dead" and later.attempts == 0
        assert len(discord.wait_for(1)) == 1
    else:
        assert later.state == "delivered" and len(discord.wait_for(2)) == 2


def test_check_gets_the_webhook_without_posting(discord: LoopbackReceiver) -> None:
    discord.reply(Reply(200, {"id": "112233445566778899", "name": "training-bot", "token": TOKEN}))
    result = DiscordNotifier(webhook_url=discord.url(HOOK_PATH)).check()
    assert result.ok and "training-bot" in result.detail and TOKEN not in result.detail
    assert [request.method for request in discord.wait_for(1)] == ["GET"]

    discord.reply(Reply(404, {"code": 10015, "message": "Unknown Webhook"}))
    gone = DiscordNotifier(webhook_url=discord.url(HOOK_PATH)).check()
    assert gone.outcome is Outcome.PERMANENT and gone.disable_channel


def test_secret_never_leaks(
    manager_for: Callable[..., NotificationManager],
    discord: LoopbackReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = DiscordNotifier(webhook_url=discord.url(HOOK_PATH))
    manager = manager_for(notifier)
    # An answer that echoes the path, token included.
    discord.reply(Reply(401, {"message": f"Invalid Webhook Token for {HOOK_PATH}", "code": 50027}))
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.state == "dead")
    assert "Invalid Webhook Token" in (row.last_error or "")

    shown = (caplog.text, row.last_error or "", repr(notifier), notifier.describe(), str(notifier.status()))
    assert_not_shown(shown, TOKEN)
    manager.close(timeout=0)
    assert_not_stored(tmp_path / "state", TOKEN)


def test_from_env(discord: LoopbackReceiver) -> None:
    assert DiscordNotifier.from_env(Env({}, env_file=False)) is None
    notifier = DiscordNotifier.from_env(Env({"DISCORD_WEBHOOK_URL": discord.url(HOOK_PATH)}, env_file=False))
    assert notifier is not None
    assert notifier.describe() == f"http://127.0.0.1:{discord.port}/***"


def test_thread_id_in_the_url_is_kept(discord: LoopbackReceiver) -> None:
    notifier = DiscordNotifier(webhook_url=discord.url(HOOK_PATH + "?thread_id=42"))
    assert notifier.send(NotificationEvent("custom", "info", "hello")).ok
    assert discord.wait_for(1)[0].query == {"thread_id": ["42"], "wait": ["true"]}
