"""ntfy channel, end to end: manager -> outbox -> sender -> NtfyNotifier -> a loopback server
answering the way ntfy's JSON publish endpoint does (checks and error bodies from its source)."""

from __future__ import annotations

import json
import logging
import re

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.ntfy import MAX_REQUEST_BYTES, RATE_LIMIT_BACKOFF, NtfyNotifier
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import TRUNCATION_MARK
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import OUTBOX_FILES, assert_not_shown, assert_not_stored, flushed

TOPIC = "afs-runs-7Hq2xPz9"
TOKEN = "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2"


def ntfy_like(request: ReceivedRequest) -> Reply:
    """ntfy's answers: JSON publish at the root, 4096-byte request cap (as older servers
    read it), topic rule, token check, health endpoint."""
    if request.method == "GET" and request.path == "/v1/health":
        return Reply(200, {"healthy": True})
    if request.path != "/":
        return Reply(404, {"code": 40401, "http": 404, "error": "page not found"})
    if len(request.body) > MAX_REQUEST_BYTES:
        return Reply(400, {"code": 40017, "http": 400, "error": "invalid request: body must be message JSON"})
    message = json.loads(request.body)
    if not re.fullmatch(r"[-_A-Za-z0-9]{1,64}", message.get("topic", "")):
        return Reply(400, {"code": 40009, "http": 400, "error": "invalid request: topic invalid"})
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return Reply(403, {"code": 40301, "http": 403, "error": "forbidden"})
    return Reply(200, {"id": "abc", "event": "message", **message})


@pytest.fixture
def server(receiver: LoopbackReceiver) -> LoopbackReceiver:
    receiver.responder = ntfy_like
    return receiver


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager = support.manager


def channel(server: LoopbackReceiver, **options: object) -> NtfyNotifier:
    return NtfyNotifier(TOPIC, server=server.url("/"), token=TOKEN, **options)  # type: ignore[arg-type]


def test_publishes_json_with_title_priority_and_tags(
    manager: NotificationManager, server: LoopbackReceiver
) -> None:
    manager.register_handler("ntfy", channel(server))
    manager.notify(
        "Training failed: モデル-α 🚀",
        "CUDA error: device-side assert",
        EventType.TRAINING_FAILED,
        model="モデル-α",
        run_id="r1",
        metrics={"loss": 2.5},
    )
    assert flushed(manager) == ["delivered"]
    (request,) = server.wait_for(1)
    sent = request.json()
    assert sent["topic"] == TOPIC
    assert sent["title"] == "Training failed: モデル-α 🚀"  # any text: no header encoding involved
    assert sent["priority"] == 4
    assert sent["tags"] == ["x", "training_failed"]
    assert sent["markdown"] is False
    lines = sent["message"].splitlines()
    assert lines[:3] == ["CUDA error: device-side assert", "Model: モデル-α", "Run: r1"]
    assert lines[3].startswith("Host: ") and lines[-1] == "Metrics: loss=2.5"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("level", "priority", "tag"),
    [
        (NotificationLevel.INFO, 2, "information_source"),
        (NotificationLevel.SUCCESS, 3, "white_check_mark"),
        (NotificationLevel.WARNING, 3, "warning"),
        (NotificationLevel.ERROR, 4, "x"),
        (NotificationLevel.CRITICAL, 5, "rotating_light"),
    ],
)
def test_priority_and_tag_per_level(level: NotificationLevel, priority: int, tag: str) -> None:
    sent = channel_payload(NotificationEvent(EventType.GPU_MEMORY, level, "t", "m"))
    assert sent["priority"] == priority and sent["tags"] == [tag, "gpu_memory"]


def channel_payload(event: NotificationEvent) -> dict:
    return json.loads(NtfyNotifier(TOPIC).encode(event))


def test_long_messages_are_cut_so_the_request_fits(
    manager: NotificationManager, server: LoopbackReceiver
) -> None:
    manager.register_handler("ntfy", channel(server))
    manager.notify("big", "日本語のログ\n" * 2000, EventType.CUSTOM)
    manager.notify("quotes", '"\\' * 5000, EventType.CUSTOM)
    assert flushed(manager) == ["delivered"] * 2
    for request in server.wait_for(2):
        assert len(request.body) <= MAX_REQUEST_BYTES
        assert request.json()["message"].endswith(TRUNCATION_MARK)


def test_rate_limit_waits_at_least_five_seconds(server: LoopbackReceiver) -> None:
    server.reply(Reply(429, {"code": 42901, "http": 429, "error": "limit reached: too many requests"}))
    result = channel(server).send(NotificationEvent(EventType.CUSTOM, "info", "t"))
    assert result.outcome is Outcome.RETRY
    assert result.retry_after == RATE_LIMIT_BACKOFF == 5.0


def test_429_and_5xx_are_retried_through_the_outbox(
    manager: NotificationManager, server: LoopbackReceiver
) -> None:
    server.reply(Reply(429, {"code": 42901, "http": 429, "error": "limit reached"}), Reply(503, b"down"))
    manager.register_handler("ntfy", channel(server, rate_limit_backoff=0.01))
    manager.notify("t", "m", EventType.CUSTOM)
    server.wait_for(3)
    manager.flush(5)
    (delivery,) = manager.outbox.history(channel="ntfy")[0].deliveries
    assert delivery.state == "delivered" and delivery.attempts == 3


def test_bad_token_is_permanent_and_disables(manager: NotificationManager, server: LoopbackReceiver) -> None:
    manager.register_handler("ntfy", NtfyNotifier(TOPIC, server=server.url("/"), token="tk_wrongwrongwrong"))
    for title in ("one", "two"):
        manager.notify(title, event_type=EventType.CUSTOM)
        manager.flush(5)
    server.wait_for(1)
    assert len(server.requests) == 1
    deliveries = [entry.deliveries[0] for entry in manager.outbox.history()]
    assert [d.state for d in deliveries] == ["dead", "dead"]
    assert any("HTTP 403" in (d.last_error or "") for d in deliveries)


def test_bad_request_is_permanent_without_disabling(server: LoopbackReceiver) -> None:
    server.reply(Reply(400, {"code": 40007, "http": 400, "error": "invalid request: priority invalid"}))
    result = channel(server).send(NotificationEvent(EventType.CUSTOM, "info", "t"))
    assert result.outcome is Outcome.PERMANENT and not result.disable_channel
    assert "priority invalid" in result.detail


def test_check_asks_the_health_endpoint(server: LoopbackReceiver) -> None:
    assert channel(server).check().ok
    assert server.wait_for(1)[0].path == "/v1/health"


def test_server_with_path_prefix(server: LoopbackReceiver) -> None:
    server.responder = lambda request: Reply(200, {}) if request.path == "/ntfy/" else Reply(404)
    result = NtfyNotifier(TOPIC, server=server.url("/ntfy")).send(
        NotificationEvent(EventType.TEST, "info", "t")
    )
    assert result.ok


def test_from_env_variants(server: LoopbackReceiver) -> None:
    def build(**values: str) -> NtfyNotifier | None:
        return NtfyNotifier.from_env(Env(values, env_file=False))

    assert build() is None
    plain = build(NTFY_TOPIC=TOPIC)
    assert plain is not None and plain.server == "https://ntfy.sh/" and plain.topic == TOPIC
    combined = build(NTFY_URL=f"https://ntfy.example.org/prefix/{TOPIC}")
    assert combined is not None and combined.server == "https://ntfy.example.org/prefix/"
    assert combined.topic == TOPIC
    separate = build(NTFY_URL=server.url("/"), NTFY_TOPIC=TOPIC, NTFY_TOKEN=TOKEN)
    assert separate is not None and separate.send(NotificationEvent(EventType.TEST, "info", "t")).ok
    with pytest.raises(ConfigurationError, match="NTFY_TOPIC"):
        build(NTFY_URL="https://ntfy.example.org/")
    with pytest.raises(ConfigurationError, match="NTFY_TOPIC"):
        build(NTFY_TOKEN=TOKEN)
    with pytest.raises(ConfigurationError) as caught:
        build(NTFY_TOPIC="has/slash" + TOPIC)
    assert TOPIC not in str(caught.value)


def test_token_and_topic_never_leak(
    manager: NotificationManager, server: LoopbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokenless = NtfyNotifier(TOPIC, server=server.url("/"))  # the topic is the credential
    with_token = channel(server)
    server.reply(Reply(500, f"upstream error posting {TOPIC} with Bearer {TOKEN}".encode()))
    manager.register_handler("ntfy", with_token)
    manager.notify("t", "m", EventType.CUSTOM)
    manager.flush(5)
    manager.flush(5)
    assert manager.outbox.history()[0].deliveries[0].state == "delivered"
    manager.close(timeout=1)
    shown = (caplog.text, repr(with_token), repr(tokenless), str(manager.status()))
    assert_not_shown(shown, TOKEN, TOPIC)
    assert_not_stored(manager.state_dir, TOKEN, TOPIC, pattern=OUTBOX_FILES)
