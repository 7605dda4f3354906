"""Teams channel, end to end: manager -> outbox -> sender -> TeamsNotifier -> a loopback
server answering like a Workflows webhook (202 Accepted)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from afs_callbacks import EventType, NotificationLevel
from afs_callbacks.channels.teams import LEVEL_CARD_COLORS, TeamsNotifier, escape_markdown
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import TRUNCATION_MARK
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, Reply
from tests.channels import support
from tests.channels.support import OUTBOX_FILES, assert_not_shown, assert_not_stored, flushed

SIG = "S1gnatureS3cretValue0123456789abcdef"
PATH = "/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke"


def hook_url(receiver: LoopbackReceiver) -> str:
    return receiver.url(f"{PATH}?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}")


@pytest.fixture
def accepted(receiver: LoopbackReceiver) -> LoopbackReceiver:
    receiver.default = Reply(202, b"")  # what Workflows answers once the flow took it
    return receiver


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager = support.manager


def card_of(request_body: bytes) -> dict:
    message = json.loads(request_body)
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    return card


def test_event_becomes_an_adaptive_card(manager: NotificationManager, accepted: LoopbackReceiver) -> None:
    manager.register_handler("teams", TeamsNotifier(hook_url(accepted)))
    manager.notify(
        "NaN loss: bert-tiny",
        "loss became NaN at step 120",
        EventType.NAN_DETECTED,
        model="bert-tiny",
        run_id="run-7",
        step=120,
        metrics={"loss": float("nan"), "lr": 0.001},
    )
    assert flushed(manager) == ["delivered"]

    (request,) = accepted.wait_for(1)
    assert request.path == PATH and request.query["sig"] == [SIG]
    assert request.headers["Content-Type"].startswith("application/json")
    card = card_of(request.body)
    title, message, facts, metrics_header, metrics, footer = card["body"]
    assert title["type"] == "TextBlock" and "NaN loss: bert-tiny" in title["text"]
    assert title["color"] == LEVEL_CARD_COLORS[NotificationLevel.ERROR] == "Attention"
    assert message["type"] == "RichTextBlock"
    assert message["inlines"] == [{"type": "TextRun", "text": "loss became NaN at step 120"}]
    shown = {fact["title"]: fact["value"] for fact in facts["facts"]}
    assert shown["Model"] == "bert-tiny" and shown["Run"] == "run-7" and shown["Step"] == "120"
    assert metrics_header["text"] == "Metrics"
    assert {fact["title"]: fact["value"] for fact in metrics["facts"]} == {"loss": "NaN", "lr": "0.001"}
    assert "nan_detected" in footer["text"] and footer["isSubtle"] is True


@pytest.mark.parametrize(
    ("level", "color"),
    [("info", "Accent"), ("success", "Good"), ("warning", "Warning"), ("critical", "Attention")],
)
def test_title_colour_follows_level(level: str, color: str, accepted: LoopbackReceiver) -> None:
    from afs_callbacks.events import NotificationEvent

    channel = TeamsNotifier(hook_url(accepted))
    result = channel.send(NotificationEvent(EventType.CUSTOM, level, "t"))
    assert result.ok
    assert card_of(accepted.wait_for(1)[0].body)["body"][0]["color"] == color


def test_run_text_cannot_make_links_or_markup(
    manager: NotificationManager, accepted: LoopbackReceiver
) -> None:
    manager.register_handler("teams", TeamsNotifier(hook_url(accepted)))
    sneaky = "[open the report](https://evil.example/x) **now**"
    manager.notify(
        f"Training failed: {sneaky}",
        'Traceback:\n  File "train.py", line 3\n- not a list\n**kwargs',
        EventType.TRAINING_FAILED,
        model=sneaky,
        run_id="run_2024_01",
    )
    assert flushed(manager) == ["delivered"]
    card = card_of(accepted.wait_for(1)[0].body)
    title = card["body"][0]["text"]
    assert "](" not in title.replace("\\]", "") and "\\[open the report\\]" in title
    assert "\\*\\*now\\*\\*" in title
    # The message is a TextRun, which Teams never reads as Markdown: kept verbatim.
    assert card["body"][1]["inlines"][0]["text"].endswith("- not a list\n**kwargs")
    facts = {fact["title"]: fact["value"] for fact in card["body"][2]["facts"]}
    assert facts["Model"].startswith("\\[open the report\\]")
    assert facts["Run"] == "run_2024_01"  # word-inner underscores make no emphasis


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("[a](http://x)", "\\[a\\](http://x)"),
        ("_italic_ and snake_case", "\\_italic\\_ and snake_case"),
        ("- item\n1. first\n# heading", "\\- item\n1\\. first\n\\# heading"),
        ("`code` ~strike~ back\\slash", "\\`code\\` \\~strike\\~ back\\\\slash"),
        ("plain text 3.5 - 2", "plain text 3.5 - 2"),
    ],
)
def test_escape_markdown(text: str, escaped: str) -> None:
    assert escape_markdown(text) == escaped


def test_huge_message_is_cut_under_the_limit(
    manager: NotificationManager, accepted: LoopbackReceiver
) -> None:
    manager.register_handler("teams", TeamsNotifier(hook_url(accepted)))
    metrics = {f"metric_{i}": i / 7 for i in range(300)}
    manager.notify("Run crashed — 学習失敗 🚨", 'x"\n' * 50_000, EventType.TRAINING_FAILED, metrics=metrics)
    assert flushed(manager) == ["delivered"]
    body = accepted.wait_for(1)[0].body
    assert len(body) <= 20_000
    card = card_of(body)
    assert "学習失敗 🚨" in card["body"][0]["text"]  # sent as UTF-8, not \u escapes
    assert card["body"][1]["inlines"][0]["text"].endswith(TRUNCATION_MARK)
    shown = card["body"][-2]["facts"]
    assert shown[-1]["value"].endswith("more metrics")


def test_429_and_5xx_are_retried(manager: NotificationManager, accepted: LoopbackReceiver) -> None:
    accepted.reply(Reply(429, b"throttled", {"Retry-After": "0"}), Reply(502, b"bad gateway"))
    manager.register_handler("teams", TeamsNotifier(hook_url(accepted)))
    event = manager.notify("t", "m", EventType.TRAINING_COMPLETED)
    assert event is not None
    accepted.wait_for(3)
    manager.flush(5)
    (entry,) = manager.outbox.history(channel="teams")
    (delivery,) = entry.deliveries
    assert delivery.state == "delivered" and delivery.attempts == 3


def test_bad_request_is_dead_and_a_deleted_flow_disables_the_channel(
    manager: NotificationManager, accepted: LoopbackReceiver
) -> None:
    accepted.reply(Reply(400, b"card invalid"), Reply(404, b"flow not found"))
    manager.register_handler("teams", TeamsNotifier(hook_url(accepted)))
    for title in ("first", "second", "third"):
        manager.notify(title, event_type=EventType.CUSTOM)
        manager.flush(5)
    accepted.wait_for(2)
    assert len(accepted.requests) == 2  # the third was never sent: the flow is gone
    states = {entry.event.title: entry.deliveries[0] for entry in manager.outbox.history()}
    assert {delivery.state for delivery in states.values()} == {"dead"}
    assert "HTTP 400" in (states["first"].last_error or "")
    assert "channel disabled" in (states["third"].last_error or "")


def test_webhook_url_never_leaks(
    manager: NotificationManager, accepted: LoopbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = hook_url(accepted)
    accepted.reply(Reply(500, f"flow failed for {url}".encode()))
    channel = TeamsNotifier(url)
    manager.register_handler("teams", channel)
    manager.notify("t", "m", EventType.CUSTOM)
    manager.flush(5)
    manager.flush(5)
    history = manager.outbox.history()
    assert history[0].deliveries[0].state == "delivered"
    manager.close(timeout=1)
    shown = (caplog.text, repr(channel), channel.describe(), str(manager.status()))
    assert_not_shown(shown, SIG, url)
    assert_not_stored(manager.state_dir, SIG, url, pattern=OUTBOX_FILES)
    assert channel.describe() == f"teams http://127.0.0.1:{accepted.port}/***"


def test_from_env() -> None:
    assert TeamsNotifier.from_env(Env({}, env_file=False)) is None
    url = f"https://prod-01.westus.logic.azure.com{PATH}?sig={SIG}"
    channel = TeamsNotifier.from_env(Env({"TEAMS_WEBHOOK_URL": url}, env_file=False))
    assert isinstance(channel, TeamsNotifier)
    with pytest.raises(ConfigurationError) as caught:
        TeamsNotifier.from_env(
            Env({"TEAMS_WEBHOOK_URL": f"http://example.org{PATH}?sig={SIG}"}, env_file=False)
        )
    assert caught.value.variable == "TEAMS_WEBHOOK_URL" and SIG not in str(caught.value)


def test_manager_from_env_registers_teams(accepted: LoopbackReceiver, tmp_path: Path) -> None:
    manager = NotificationManager.from_env(
        {
            "TEAMS_WEBHOOK_URL": hook_url(accepted),
            "AFS_STATE_DIR": str(tmp_path / "s"),
            "AFS_CONSOLE": "never",
        },
        channels=["teams"],
    )
    try:
        manager.notify("hello", event_type=EventType.TEST)
        assert flushed(manager) == ["delivered"]
    finally:
        manager.close(timeout=1)
    assert card_of(accepted.wait_for(1)[0].body)["body"][0]["text"].endswith("hello")
