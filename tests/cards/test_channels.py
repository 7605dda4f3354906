"""post_card / edit_card of each channel that can edit, against loopback stand-ins of the
services (tests/cards/services.py): ids kept, edits in place, deleted messages, "not
modified", rate limits, dead destinations, and the channels that cannot edit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.discord import DiscordNotifier
from afs_callbacks.channels.ntfy import NtfyNotifier, card_sequence_id
from afs_callbacks.channels.slack import SlackNotifier
from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.config import Env
from afs_callbacks.delivery.live_cards import CardDispatcher
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.runstate import COMPLETED, FAILED
from tests.cards.conftest import SLACK_TOKEN, state
from tests.cards.services import FakeDiscord, FakeNtfy, FakeSlack, FakeTelegram, telegram_rate_limit

# Discord ----------------------------------------------------------------------------------


def test_discord_posts_with_wait_and_edits_the_same_message(discord_service: FakeDiscord) -> None:
    discord = DiscordNotifier(discord_service.webhook_url)
    assert discord.supports_cards
    posted = discord.post_card(state(model="<@123> @everyone"))
    assert posted.ok and posted.message_id in discord_service.messages
    [post] = discord_service.requests
    assert post.query["wait"] == ["true"] and post.json()["allowed_mentions"] == {"parse": []}

    edited = discord.edit_card(posted.message_id or "", state(status=COMPLETED, epoch=10))
    assert edited.ok, edited.detail
    patch = discord_service.requests[-1]
    assert patch.method == "PATCH" and patch.path.endswith(f"/messages/{posted.message_id}")
    [embed] = discord_service.messages[posted.message_id or ""]["embeds"]
    assert embed["title"].startswith("✅") and embed["color"] == 0x22C55E


def test_discord_unknown_message_is_gone_but_an_unknown_webhook_disables(
    discord_service: FakeDiscord,
) -> None:
    discord = DiscordNotifier(discord_service.webhook_url)
    gone = discord.edit_card("1180000000000000999", state())
    assert gone.gone and gone.outcome is Outcome.PERMANENT and not gone.disable_channel
    dead = DiscordNotifier(discord_service.url("/api/webhooks/1/other-token")).edit_card("1", state())
    assert dead.disable_channel and not dead.gone


def test_discord_rate_limit_takes_the_body_retry_after(discord_service: FakeDiscord) -> None:
    discord_service.fail(
        429,
        {"message": "You are being rate limited.", "retry_after": 0.75, "global": False},
        {"Retry-After": "1"},
    )
    result = DiscordNotifier(discord_service.webhook_url).post_card(state())
    assert result.outcome is Outcome.RETRY and result.retry_after == 0.75


def test_discord_edit_keeps_the_thread(discord_service: FakeDiscord) -> None:
    discord = DiscordNotifier(discord_service.webhook_url + "?thread_id=42")
    posted = discord.post_card(state())
    discord.edit_card(posted.message_id or "", state(epoch=2))
    assert discord_service.requests[-1].query["thread_id"] == ["42"]


# Telegram ---------------------------------------------------------------------------------


def test_telegram_sends_then_edits_by_message_id(telegram: TelegramNotifier, bot_api: FakeTelegram) -> None:
    posted = telegram.post_card(state(model="<b>bold</b> & co"))
    assert posted.ok and posted.message_id == "100"
    sent = bot_api.calls("sendMessage")[0].json()
    assert sent["parse_mode"] == "HTML" and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in sent["text"]
    assert telegram.edit_card("100", state(epoch=5)).ok
    assert "epoch 5/10" in bot_api.messages[100]["text"]


def test_telegram_not_modified_is_delivered_and_not_found_is_gone(
    telegram: TelegramNotifier, bot_api: FakeTelegram
) -> None:
    telegram.post_card(state())
    same = telegram.edit_card("100", state())
    assert same.ok and bot_api.requests[-1].status == 400
    gone = telegram.edit_card("999", state())
    assert gone.gone and not gone.disable_channel


def test_telegram_rate_limit_and_lost_chat(telegram: TelegramNotifier, bot_api: FakeTelegram) -> None:
    bot_api.fail(*telegram_rate_limit(4))
    limited = telegram.post_card(state())
    assert limited.outcome is Outcome.RETRY and limited.retry_after == 4
    bot_api.fail(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"})
    lost = telegram.edit_card("100", state())
    assert lost.disable_channel and not lost.gone


# Slack ------------------------------------------------------------------------------------


def slack_bot(service: FakeSlack, channel: str = "#training", token: str = SLACK_TOKEN) -> SlackNotifier:
    return SlackNotifier(channel=channel, bot_token=token, api_url=service.url("/api"))


def test_slack_bot_posts_and_updates_by_channel_id_and_ts(slack_service: FakeSlack) -> None:
    slack = slack_bot(slack_service)
    assert slack.supports_cards
    posted = slack.post_card(state(model="<!channel> net"))
    assert posted.ok and posted.message_id == "C0TRAINING/1764600000.000001"
    post = slack_service.calls("chat.postMessage")[0]
    assert post.headers["Authorization"] == f"Bearer {SLACK_TOKEN}"
    assert post.json()["blocks"][0]["text"]["text"].startswith("🏃 <!channel> net")  # plain_text: no ping
    assert "&lt;!channel&gt;" in post.json()["text"]

    assert slack.edit_card(posted.message_id or "", state(status=FAILED, error_type="ValueError")).ok
    update = slack_service.calls("chat.update")[0].json()
    assert update["channel"] == "C0TRAINING" and update["ts"] == "1764600000.000001"
    assert "ValueError" in update["text"]


@pytest.mark.parametrize(
    ("answer", "outcome", "gone", "disabled"),
    [
        ({"ok": False, "error": "message_not_found"}, Outcome.PERMANENT, True, False),
        ({"ok": False, "error": "channel_not_found"}, Outcome.PERMANENT, False, True),
        ({"ok": False, "error": "not_in_channel"}, Outcome.PERMANENT, False, True),
        ({"ok": False, "error": "invalid_auth"}, Outcome.PERMANENT, False, True),
        ({"ok": False, "error": "msg_too_long"}, Outcome.PERMANENT, False, False),
        ({"ok": False, "error": "ratelimited"}, Outcome.RETRY, False, False),
        ({"ok": False, "error": "internal_error"}, Outcome.RETRY, False, False),
    ],
)
def test_slack_ok_false_answers_are_classified(
    slack_service: FakeSlack, answer: dict[str, object], outcome: Outcome, gone: bool, disabled: bool
) -> None:
    slack_service.fail(200, answer)
    result = slack_bot(slack_service).edit_card("C0TRAINING/1.2", state())
    assert (result.outcome, result.gone, result.disable_channel) == (outcome, gone, disabled)


def test_slack_429_waits_retry_after(slack_service: FakeSlack) -> None:
    slack_service.fail(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"})
    result = slack_bot(slack_service).post_card(state())
    assert result.outcome is Outcome.RETRY and result.retry_after == 30


def test_slack_bot_mode_serves_ordinary_messages_and_never_shows_the_token(
    slack_service: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    slack = slack_bot(slack_service)
    event = NotificationEvent(EventType.TRAINING_STARTED, NotificationLevel.INFO, "Training started", "go")
    assert slack.send(event).ok
    assert slack_service.calls("chat.postMessage")[0].json()["channel"] == "#training"
    assert slack.check().ok
    refused = slack_bot(slack_service, token="xoxb-wrong-token-value").send(event)
    assert refused.disable_channel and "invalid_auth" in refused.detail
    with caplog.at_level(logging.DEBUG):
        texts = [slack.describe(), repr(slack), refused.detail, caplog.text]
    assert all(SLACK_TOKEN not in text for text in texts)


def test_slack_webhook_only_keeps_todays_behaviour_without_cards(slack_service: FakeSlack) -> None:
    slack = SlackNotifier(slack_service.url("/services/T0/B0/secret"))
    assert not slack.supports_cards and not type(slack).supports_cards
    assert slack.post_card(state()).outcome is Outcome.PERMANENT
    assert slack_service.requests == []


def test_slack_from_env_bot_mode(slack_service: FakeSlack) -> None:
    env = Env(
        {
            "SLACK_BOT_TOKEN": SLACK_TOKEN,
            "SLACK_CHANNEL": "#training",
            "SLACK_API_URL": slack_service.url("/api"),
        },
        env_file=False,
    )
    slack = SlackNotifier.from_env(env)
    assert slack is not None and slack.supports_cards and slack.post_card(state()).ok
    with pytest.raises(ConfigurationError) as raised:
        SlackNotifier.from_env(Env({"SLACK_BOT_TOKEN": SLACK_TOKEN}, env_file=False))
    assert raised.value.variable == "SLACK_CHANNEL" and SLACK_TOKEN not in str(raised.value)


# ntfy -------------------------------------------------------------------------------------


def test_ntfy_live_replaces_the_notification_by_sequence_id() -> None:
    server = FakeNtfy(version=(2, 16))
    try:
        ntfy = NtfyNotifier("afs-card-topic", server=server.url("/"), live=True)
        assert ntfy.supports_cards
        posted = ntfy.post_card(state())
        assert posted.ok and posted.message_id == card_sequence_id("run-1")
        assert ntfy.edit_card(posted.message_id or "", state(status=COMPLETED)).ok
        [shown] = server.notifications  # one notification, replaced in place
        assert shown["title"].startswith("✅ resnet18") and shown["priority"] == 2
        assert shown["sequence_id"] == posted.message_id
        assert server.requests[-1].headers["X-Sequence-ID"] == posted.message_id
    finally:
        server.close()


def test_ntfy_before_2_16_shows_each_update_anew_which_is_why_cards_are_opt_in() -> None:
    server = FakeNtfy(version=(2, 15))
    try:
        ntfy = NtfyNotifier("afs-card-topic", server=server.url("/"), live=True)
        posted = ntfy.post_card(state())
        assert ntfy.edit_card(posted.message_id or "", state(epoch=2)).ok  # 200 all the same
        assert len(server.notifications) == 2
    finally:
        server.close()


def test_ntfy_cards_are_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    topic = "afs-card-topic"
    assert not NtfyNotifier(topic).supports_cards
    built = NtfyNotifier.from_env(Env({"NTFY_TOPIC": topic, "NTFY_LIVE": "true"}, env_file=False))
    assert built is not None and built.supports_cards


def test_ntfy_sequence_ids_are_stable_and_safe() -> None:
    odd = card_sequence_id("run/with spaces & ünïcode")
    assert odd == card_sequence_id("run/with spaces & ünïcode") != card_sequence_id("run-2")
    assert odd.replace("-", "").isalnum() and len(odd) <= 64


# The dispatcher over each service ---------------------------------------------------------


def test_one_card_per_service_through_the_dispatcher(
    tmp_path: Path, discord_service: FakeDiscord, slack_service: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for cls in (DiscordNotifier, SlackNotifier):
        monkeypatch.setattr(cls, "min_interval", 0.0)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    dispatcher = CardDispatcher(outbox, interval=0)
    dispatcher.add_channel("discord", DiscordNotifier(discord_service.webhook_url))
    dispatcher.add_channel("slack", slack_bot(slack_service))
    assert not dispatcher.add_channel("slack-webhook", SlackNotifier(slack_service.url("/hook")))
    for epoch in range(1, 4):
        dispatcher.update(state(epoch=epoch))
        assert dispatcher.flush(5)
    dispatcher.update(state(status=COMPLETED, epoch=10))
    assert dispatcher.flush(5)
    dispatcher.stop()
    assert len(discord_service.messages) == 1 and len(slack_service.messages) == 1
    assert outbox.card_id("run-1", "discord") in discord_service.messages
    assert "completed" in next(iter(slack_service.messages.values()))["text"]
    outbox.close()


def test_channels_that_cannot_edit_say_so(tmp_path: Path) -> None:
    from afs_callbacks.channels.webhook import WebhookNotifier

    webhook = WebhookNotifier("http://127.0.0.1:9/hook")
    assert not webhook.supports_cards
    assert webhook.post_card(state()).outcome is Outcome.PERMANENT
    assert TelegramNotifier.supports_cards and DiscordNotifier.supports_cards
