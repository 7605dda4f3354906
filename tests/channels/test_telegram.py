"""TelegramNotifier end to end: manager → outbox → sender → channel → a loopback Bot API.

:class:`FakeBotApi` answers as the Bot API documents: ``{"ok": true, "result": ...}``;
errors as ``{"ok": false, "error_code", "description", "parameters"}``; 401 for a wrong
token, 400 "chat not found", ``migrate_to_chat_id`` for a group that became a supergroup,
429 with ``parameters.retry_after``; and it parses the HTML the way Telegram does, refusing
unknown or unbalanced tags and text past 4096 (caption 1024) characters after parsing.
"""

from __future__ import annotations

import email.parser
import email.policy
import html.parser
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.config import Env
from afs_callbacks.events import Attachment, NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import TRUNCATION_MARK
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import assert_not_shown, assert_not_stored, notify_with, wait_delivery

TOKEN = "123456789:AAHsecretTOKENabcdefghijklmnopqrstu"
CHAT = "-1001234567890"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64
_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "span", "tg-spoiler"}


class _TelegramHtml(html.parser.HTMLParser):
    """Telegram's HTML mode: a few tags, balanced; the rest is text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAGS:
            self.errors.append(f"unsupported start tag {tag!r}")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(f"unexpected end tag {tag!r}")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_telegram_html(text: str) -> str:
    """The visible text of ``text``, or AssertionError where Telegram would refuse it."""
    parser = _TelegramHtml()
    parser.feed(text)
    parser.close()
    assert not parser.errors and not parser.open, (parser.errors, parser.open)
    return "".join(parser.text)


class FakeBotApi:
    """Answers like the Bot API for one bot and a set of chats."""

    def __init__(self, chats: set[str], migrations: dict[str, str] | None = None) -> None:
        self.chats = chats
        self.migrations = migrations or {}
        self.sent: list[dict[str, Any]] = []

    def __call__(self, request: ReceivedRequest) -> Reply:
        prefix = f"/bot{TOKEN}/"
        if not request.path.startswith(prefix):
            return self._error(401, "Unauthorized")
        method = request.path[len(prefix) :]
        fields = _fields(request)
        if method == "getMe":
            return Reply(
                200, {"ok": True, "result": {"id": 123456789, "is_bot": True, "username": "afs_bot"}}
            )
        chat = str(fields.get("chat_id"))
        if chat in self.migrations:
            return self._error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": int(self.migrations[chat])},
            )
        if chat not in self.chats:
            return self._error(400, "Bad Request: chat not found")
        if method == "getChat":
            return Reply(200, {"ok": True, "result": {"id": int(chat), "type": "supergroup"}})
        key, limit = ("text", 4096) if method == "sendMessage" else ("caption", 1024)
        try:
            visible = parse_telegram_html(str(fields[key]))
        except AssertionError:
            return self._error(400, "Bad Request: can't parse entities")
        if len(visible) > limit:
            return self._error(
                400, f"Bad Request: message {'caption ' if key == 'caption' else ''}is too long"
            )
        self.sent.append({"method": method, **fields})
        return Reply(200, {"ok": True, "result": {"message_id": len(self.sent), "chat": {"id": int(chat)}}})

    @staticmethod
    def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> Reply:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return Reply(status, body)


def _fields(request: ReceivedRequest) -> dict[str, Any]:
    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith("application/json"):
        fields: dict[str, Any] = request.json()
        return fields
    if content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
        parsed: dict[str, Any] = {}
        for part in message.iter_parts():
            name = str(part.get_param("name", header="content-disposition"))
            data = part.get_payload(decode=True)
            parsed[name] = (part.get_filename(), data) if part.get_filename() else data.decode()
        return parsed
    return {}


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager_for = support.manager_for

notify = notify_with(
    title="Training failed: vit-small",
    message="RuntimeError: CUDA out of memory",
    event_type="training_failed",
    model="vit-small",
    run_id="r3",
    metrics={"loss": 2.5},
)


@pytest.fixture
def bot_api(receiver: LoopbackReceiver) -> FakeBotApi:
    api = FakeBotApi({CHAT})
    receiver.responder = api
    return api


def telegram(receiver: LoopbackReceiver, chat: str = CHAT, token: str = TOKEN) -> TelegramNotifier:
    return TelegramNotifier(bot_token=token, chat_id=chat, api_url=receiver.url(""))


def test_message_shape(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver, bot_api: FakeBotApi
) -> None:
    manager = manager_for(telegram(receiver))
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.state == "delivered")
    assert row.attempts == 1

    [sent] = bot_api.sent
    assert sent["method"] == "sendMessage" and sent["chat_id"] == CHAT and sent["parse_mode"] == "HTML"
    assert sent["link_preview_options"] == {"is_disabled": True}
    assert sent["text"].startswith("❌ <b>Training failed: vit-small</b>")
    visible = parse_telegram_html(sent["text"])
    assert "Model: vit-small" in visible and "Run: r3" in visible
    assert "RuntimeError: CUDA out of memory" in visible and "loss: 2.5" in visible


def test_html_injection_is_escaped(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver, bot_api: FakeBotApi
) -> None:
    manager = manager_for(telegram(receiver))
    hostile = '<a href="tg://user?id=1">x</a> <script>&amp;</b>'
    event = notify(manager, title=hostile, message=hostile, model=hostile, metrics={hostile: 1.0})
    wait_delivery(manager, event, lambda d: d.state == "delivered")

    text = bot_api.sent[0]["text"]
    assert "<a " not in text and "<script>" not in text
    # What people see is exactly the text that was sent, markup and all.
    assert parse_telegram_html(text).count(hostile) == 4


def test_huge_message_and_100_metrics_stay_within_4096(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver, bot_api: FakeBotApi
) -> None:
    manager = manager_for(telegram(receiver))
    metrics = {f"metric_{index:03d}": index / 3 for index in range(100)}
    event = notify(manager, title="<T>" * 200, message="a&b<c>\n" * 3000, metrics=metrics)
    wait_delivery(manager, event, lambda d: d.state == "delivered")

    text = bot_api.sent[0]["text"]
    assert len(text) <= 4096
    visible = parse_telegram_html(text)
    assert visible.count(TRUNCATION_MARK) == 3  # title, message, metrics each cut visibly
    assert "metric_001: 0.3333" in visible


def test_astral_characters_count_twice(receiver: LoopbackReceiver) -> None:
    notifier = telegram(receiver)
    event = NotificationEvent("custom", "critical", "🔥" * 100, "🚨" * 5000)
    text = notifier.fitted(event, 4096)
    assert len(text.encode("utf-16-le")) // 2 <= 4096
    assert text.count("🚨") > 1900  # two units each: cut near the limit, not far below it


def test_chart_goes_as_a_photo_with_a_short_caption(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver, bot_api: FakeBotApi
) -> None:
    manager = manager_for(telegram(receiver))
    chart = Attachment("loss.png", "image/png", PNG)
    event = notify(manager, message="x" * 5000, attachments=[chart])
    wait_delivery(manager, event, lambda d: d.state == "delivered")

    [sent] = bot_api.sent
    assert sent["method"] == "sendPhoto" and sent["chat_id"] == CHAT and sent["parse_mode"] == "HTML"
    assert sent["photo"] == ("loss.png", PNG)
    assert len(sent["caption"]) <= 1024 and TRUNCATION_MARK in parse_telegram_html(sent["caption"])


def test_429_uses_parameters_retry_after(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver, bot_api: FakeBotApi
) -> None:
    manager = manager_for(telegram(receiver))
    receiver.reply(
        Reply(
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 33",
                "parameters": {"retry_after": 33},
            },
        )
    )
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.attempts == 1 and d.state == "pending")
    assert row.next_attempt is not None and 28 < row.next_attempt - time.time() <= 33
    assert "Too Many Requests" in (row.last_error or "")

    # A flush honours the pause too: 33 s is beyond its deadline, so nothing more is sent.
    assert manager.flush(timeout=0.5).pending == 1
    assert len(receiver.requests) == 1


def test_5xx_is_retried(
    manager_for: Callable[..., NotificationManager], receiver: LoopbackReceiver, bot_api: FakeBotApi
) -> None:
    manager = manager_for(telegram(receiver))
    receiver.reply(Reply(502, "<html>Bad Gateway</html>"))
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.state == "delivered")
    assert row.attempts == 2 and len(bot_api.sent) == 1


def test_group_migration_switches_to_the_new_chat(
    manager_for: Callable[..., NotificationManager],
    receiver: LoopbackReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeBotApi({CHAT}, migrations={"-4242": CHAT})
    receiver.responder = api
    notifier = telegram(receiver, chat="-4242")
    manager = manager_for(notifier)
    first = notify(manager)
    row = wait_delivery(manager, first, lambda d: d.state == "delivered")
    assert row.attempts == 2
    assert notifier.chat_id == CHAT
    assert [sent["chat_id"] for sent in api.sent] == [CHAT]

    second = notify(manager, title="second")
    assert wait_delivery(manager, second, lambda d: d.state == "delivered").attempts == 1
    migration_lines = [r for r in caplog.records if "supergroup" in r.getMessage()]
    assert len(migration_lines) == 1 and f"TELEGRAM_CHAT_ID={CHAT}" in migration_lines[0].getMessage()


@pytest.mark.parametrize(
    ("chat", "token", "expected"),
    [
        ("-999", TOKEN, "chat not found"),
        (CHAT, "987654321:AAHotherTOKENabcdefghijklmnopqrstu", "Unauthorized"),
    ],
)
def test_dead_destinations_disable_the_channel(
    manager_for: Callable[..., NotificationManager],
    receiver: LoopbackReceiver,
    bot_api: FakeBotApi,
    chat: str,
    token: str,
    expected: str,
) -> None:
    manager = manager_for(telegram(receiver, chat=chat, token=token))
    first = notify(manager)
    row = wait_delivery(manager, first, lambda d: d.state == "dead")
    assert row.attempts == 1 and expected in (row.last_error or "")

    second = notify(manager, title="second")
    later = wait_delivery(manager, second, lambda d: d.state == "dead")
    assert later.attempts == 0 and len(receiver.wait_for(1)) == 1


def test_a_bad_message_is_permanent_but_keeps_the_channel(receiver: LoopbackReceiver) -> None:
    receiver.reply(
        Reply(400, {"ok": False, "error_code": 400, "description": "Bad Request: can't parse entities"})
    )
    result = telegram(receiver).send(NotificationEvent("custom", "info", "hello"))
    assert result.outcome is Outcome.PERMANENT and not result.disable_channel
    assert "can't parse entities" in result.detail


def test_check_probes_without_posting(receiver: LoopbackReceiver, bot_api: FakeBotApi) -> None:
    result = telegram(receiver).check()
    assert result.ok and CHAT in result.detail
    assert [r.path.rsplit("/", 1)[-1] for r in receiver.wait_for(2)] == ["getMe", "getChat"]
    assert bot_api.sent == []

    lost = telegram(receiver, chat="-999").check()
    assert lost.outcome is Outcome.PERMANENT and "chat not found" in lost.detail


def test_token_never_leaks(
    manager_for: Callable[..., NotificationManager],
    receiver: LoopbackReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # An answer that echoes the request path, token included.
    receiver.responder = lambda request: Reply(
        401, {"ok": False, "error_code": 401, "description": f"Unauthorized: {request.path}"}
    )
    notifier = telegram(receiver)
    manager = manager_for(notifier)
    event = notify(manager)
    row = wait_delivery(manager, event, lambda d: d.state == "dead")
    assert "Unauthorized: /bot***/sendMessage" in (row.last_error or "")

    secret_part = TOKEN.split(":")[1]
    shown = (caplog.text, row.last_error or "", repr(notifier), notifier.describe(), str(notifier.status()))
    assert_not_shown(shown, secret_part)
    assert notifier.describe() == f"http://127.0.0.1:{receiver.port}/bot123456789:*** chat {CHAT}"
    manager.close(timeout=0)
    assert_not_stored(tmp_path / "state", secret_part)


def test_from_env(receiver: LoopbackReceiver) -> None:
    assert TelegramNotifier.from_env(Env({}, env_file=False)) is None
    env = Env(
        {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT, "TELEGRAM_API_URL": receiver.url("/")},
        env_file=False,
    )
    notifier = TelegramNotifier.from_env(env)
    assert notifier is not None and notifier.chat_id == CHAT
    assert notifier.api_url == receiver.url("")


@pytest.mark.parametrize(
    ("variables", "variable"),
    [
        ({"TELEGRAM_CHAT_ID": CHAT}, "TELEGRAM_BOT_TOKEN"),
        ({"TELEGRAM_BOT_TOKEN": TOKEN}, "TELEGRAM_CHAT_ID"),
        ({"TELEGRAM_BOT_TOKEN": "AAHsecretTOKEN-no-id", "TELEGRAM_CHAT_ID": CHAT}, "TELEGRAM_BOT_TOKEN"),
        ({"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "my group"}, "TELEGRAM_CHAT_ID"),
        (
            {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT, "TELEGRAM_API_URL": "http://api.example"},
            "TELEGRAM_API_URL",
        ),
    ],
)
def test_bad_settings_name_the_variable_without_echoing_the_token(
    variables: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        TelegramNotifier.from_env(Env(variables, env_file=False))
    assert raised.value.variable == variable
    assert "secretTOKEN" not in str(raised.value)
