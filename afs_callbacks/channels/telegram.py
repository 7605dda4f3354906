"""Telegram channel: a bot's HTML message (or photo with a caption) to one chat.

The Bot API answers JSON ``{"ok": ..., "description": ..., "parameters": {...}}``:
``parameters.retry_after`` is the wait of a 429, and ``parameters.migrate_to_chat_id``
says a group became a supergroup under a new id (the channel switches to it, logs the new
id once and retries). 401 (token revoked), 403 (bot blocked or removed) and 400 "chat not
found" will fail every message: they disable the channel.

The bot token sits in the URL path (``/bot<token>/sendMessage``): it is registered as a
secret, and every text that could hold the URL is redacted.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any, ClassVar

from afs_callbacks._log import get_logger
from afs_callbacks.channels._http import HttpChannel, json_object
from afs_callbacks.channels.base import DeliveryResult, Outcome
from afs_callbacks.channels.card_view import card_view, render_markup
from afs_callbacks.channels.hosts import check_self_hosted
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import Attachment, NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import context_fields, format_value, shorten, title_mark, truncate_escaped
from afs_callbacks.redaction import DELIMITER, MASK, SecretPattern, redact, register_secret
from afs_callbacks.runstate import commands_from, run_token

if TYPE_CHECKING:
    import requests

    from afs_callbacks.runstate import RunState

log = get_logger(__name__)

DEFAULT_API_URL = "https://api.telegram.org"
_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]{20,}$")
_CHAT_ID = re.compile(r"^(-?\d+|@[A-Za-z0-9_]{4,})$")


def escape_html(text: str) -> str:
    """Escape ``&``, ``<`` and ``>``: all Telegram's HTML mode needs outside tags."""
    return html.escape(text, quote=False)


class TelegramNotifier(HttpChannel):
    """Send events to a Telegram chat through a bot.

    Args:
        bot_token: the token BotFather gave (``123456:ABC...``); a secret.
        chat_id: a chat id (``-100...`` for groups and channels) or ``@channelusername``.
        api_url: the Bot API server (a self-hosted one, or a test server).
        timeout: seconds for connecting and for reading the answer (each).
        allow_http: accept a plain-http API URL to a non-loopback host.

    Raises:
        ConfigurationError: a malformed token, chat id or URL (the token is never echoed).
    """

    name: ClassVar[str] = "telegram"
    variables: ClassVar[tuple[str, ...]] = ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API_URL")
    variable_aliases: ClassVar[dict[str, str]] = {"TELEGRAM_TOKEN": "TELEGRAM_BOT_TOKEN"}
    listing_order: ClassVar[int] = 60
    hosts: ClassVar[tuple[str, ...]] = ("api.telegram.org",)
    #: The token in a Bot API path: /bot<token>/method.
    secret_patterns: ClassVar[tuple[SecretPattern, ...]] = (
        SecretPattern("bot", re.compile(rf"({DELIMITER}bot)\d+(?::|%3[Aa])[A-Za-z0-9_-]+"), r"\1" + MASK),
    )
    #: Telegram allows about one message per second to a chat (20 a minute to a group).
    min_interval: ClassVar[float] = 1.0
    supports_images: ClassVar[bool] = True
    #: A bot edits its own messages (editMessageText): each run gets one live card.
    supports_cards: ClassVar[bool] = True

    TEXT_LIMIT: ClassVar[int] = 4096
    CAPTION_LIMIT: ClassVar[int] = 1024
    TITLE_LIMIT: ClassVar[int] = 256
    PHOTO_BYTES_LIMIT: ClassVar[int] = 10 * 1000 * 1000

    def __init__(
        self,
        bot_token: str,
        chat_id: str | int,
        *,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        register_secret(bot_token, *_token_parts(bot_token))
        if not _TOKEN.match(bot_token):
            raise ConfigurationError("bot_token", "does not look like a bot token (123456789:AA...)")
        self.chat_id = _check_chat_id(str(chat_id).strip(), "chat_id")
        self.api_url = validate_url(api_url.rstrip("/"), "api_url", allow_http=allow_http, secret=False)
        self._token = bot_token

    def _method_url(self, method: str) -> str:
        return f"{self.api_url}/bot{self._token}/{method}"

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """sendMessage, or sendPhoto when the event carries a chart."""
        try:
            photo = self._photo(event)
            text = self.fitted(event, self.CAPTION_LIMIT if photo else self.TEXT_LIMIT)
        except Exception as error:  # a formatting bug must not become an endless retry
            return DeliveryResult.permanent(f"could not build the Telegram message: {redact(error)}")
        fields: dict[str, Any] = {"chat_id": self.chat_id, "parse_mode": "HTML"}
        if photo is None:
            fields["text"] = text
            fields["link_preview_options"] = {"is_disabled": True}
            return self.deliver(self._method_url("sendMessage"), json=fields)
        fields["caption"] = text
        return self.deliver(
            self._method_url("sendPhoto"),
            data=fields,
            files={"photo": (photo.filename or "chart.png", photo.data, photo.content_type)},
        )

    def fitted(self, event: NotificationEvent, limit: int) -> str:
        """:meth:`render` within ``limit`` as Telegram counts: in UTF-16 code units, where
        an emoji outside the basic plane counts twice."""
        budget = limit
        for _ in range(32):  # a few rounds at most; the bound only guards the loop
            text = self.render(event, budget)
            overflow = _utf16_length(text) - limit
            if overflow <= 0:
                return text
            # A dropped character saves one or two units: halve the step, not to overshoot.
            budget -= max(overflow // 2, 1)
        return self.render(event, limit // 2)

    def render(self, event: NotificationEvent, limit: int) -> str:
        """The event as Telegram HTML of at most ``limit`` characters.

        Every piece of run text is escaped and cut before it is wrapped in tags, so a cut
        never leaves an open tag or half an entity. Telegram counts its limits after
        parsing entities; counting the markup too keeps well inside them.
        """
        title = event.title.strip() or event.event_type.value.replace("_", " ")
        mark = escape_html(title_mark(event.level, title))
        head = f"{mark}<b>{truncate_escaped(title, self.TITLE_LIMIT, escape_html)}</b>"
        details = [
            f"<b>{escape_html(label)}:</b> {truncate_escaped(value, 100, escape_html)}"
            for label, value in context_fields(event)
        ]
        while details and len(head) + len("\n".join(details)) + 2 > limit // 2:
            details.pop()  # a caption is short: the run's last details give way first
        fixed = len(head) + (len("\n".join(details)) + 2 if details else 0)
        message = event.message.strip()
        metrics = "\n".join(f"{name}: {format_value(value)}" for name, value in event.metrics.items())
        wrappers = (2 if message else 0) + (len("\n\n<pre></pre>") if metrics else 0)
        room = max(limit - fixed - wrappers, 0)
        message_room, metrics_room = _share(len(escape_html(message)), len(escape_html(metrics)), room)
        # The message right under the title: a failure's error line is the first thing
        # read, and only the middle of its frames gives way to the limit.
        text = head
        if message and message_room:
            text += "\n\n" + shorten(message, message_room, escape=escape_html)
        if details:
            text += "\n\n" + "\n".join(details)
        if metrics and metrics_room:
            text += f"\n\n<pre>{truncate_escaped(metrics, metrics_room, escape_html)}</pre>"
        return text

    def post_card(self, state: RunState) -> DeliveryResult:
        """sendMessage (silently: the run's start and end push separately); keeps
        ``result.message_id``."""
        fields = self._card_fields(state)
        fields["disable_notification"] = True
        response = self.post(self._method_url("sendMessage"), json=fields)
        if isinstance(response, DeliveryResult):
            return response
        result = self.classify(response)
        answer = json_object(response).get("result")
        message_id = answer.get("message_id") if isinstance(answer, dict) else None
        if not result.ok or message_id is None:
            return result if not result.ok else DeliveryResult.permanent("Telegram gave no message_id")
        return DeliveryResult(Outcome.DELIVERED, result.detail, message_id=str(message_id))

    def edit_card(self, message_id: str, state: RunState) -> DeliveryResult:
        """editMessageText; "message is not modified" is delivered, "message to edit not
        found" is gone (the card is posted anew)."""
        fields = self._card_fields(state)
        fields["message_id"] = int(message_id) if message_id.isdigit() else message_id
        response = self.post(self._method_url("editMessageText"), json=fields)
        if isinstance(response, DeliveryResult):
            return response
        description = str(json_object(response).get("description") or "").lower()
        if response.status_code == 400 and "message is not modified" in description:
            return DeliveryResult.delivered("not modified")
        if response.status_code == 400 and "message to edit not found" in description:
            return DeliveryResult(Outcome.PERMANENT, "message to edit not found", gone=True)
        return self.classify(response)

    def _card_fields(self, state: RunState) -> dict[str, Any]:
        text = card_html(state, limit=self.TEXT_LIMIT)
        if _utf16_length(text) > self.TEXT_LIMIT:  # emoji count twice in Telegram's units
            text = card_html(state, limit=self.TEXT_LIMIT // 2)
        fields: dict[str, Any] = {
            "chat_id": self.chat_id,
            "text": text,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
        }
        buttons = card_buttons(state)
        if buttons is not None:
            fields["reply_markup"] = buttons  # an edit without it removes the buttons
        return fields

    @property
    def bot_id(self) -> str:
        """The bot's public id (the token's part before the colon)."""
        return self._token.partition(":")[0]

    def method_url(self, method: str) -> str:
        """The URL of a Bot API method (holds the token: never log it unredacted)."""
        return self._method_url(method)

    def _photo(self, event: NotificationEvent) -> Attachment | None:
        for attachment in event.attachments:
            fits = len(attachment.data) <= self.PHOTO_BYTES_LIMIT
            if attachment.content_type.startswith("image/") and fits:
                return attachment
        return None

    def classify(self, response: requests.Response) -> DeliveryResult:
        """Read the Bot API's JSON answer: ok, retry_after, migrate_to_chat_id, errors."""
        body = json_object(response)
        status = response.status_code
        if 200 <= status < 300 and body.get("ok", True) is not False:
            return DeliveryResult.delivered(f"HTTP {status}")
        description = redact(str(body.get("description") or response.reason or ""))[:300]
        detail = f"HTTP {status}: {description}".rstrip(": ")
        parameters = body.get("parameters")
        if isinstance(parameters, dict) and parameters.get("migrate_to_chat_id") is not None:
            return self._migrate(str(parameters["migrate_to_chat_id"]), detail)
        if status in self.retry_statuses or status >= 500:
            return DeliveryResult.retry(detail, self.retry_hint(response))
        # "chat not found" fails every later message too, like a revoked token.
        gone = status in self.disabling_statuses or "chat not found" in description.lower()
        return DeliveryResult.permanent(detail, disable_channel=gone)

    def _migrate(self, new_chat: str, detail: str) -> DeliveryResult:
        if not _CHAT_ID.match(new_chat):
            return DeliveryResult.permanent(f"{detail} (unusable new chat id)")
        old, self.chat_id = self.chat_id, new_chat
        # A chat id is an address, not a credential: show it so the user can update it.
        log.warning(
            "afs-callbacks: telegram chat %s became supergroup %s; sending there from now on."
            " Set TELEGRAM_CHAT_ID=%s to keep it after this run.",
            old,
            new_chat,
            new_chat,
        )
        return DeliveryResult.retry(f"{detail} (chat moved; retrying with the new id)", 0.0)

    def retry_hint(self, response: requests.Response) -> float | None:
        """``parameters.retry_after`` from the body, else the ``Retry-After`` header."""
        parameters = json_object(response).get("parameters")
        if isinstance(parameters, dict):
            value = parameters.get("retry_after")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return float(value)
        return super().retry_hint(response)

    def describe(self) -> str:
        """The API server, the bot's id (public; its secret half masked) and the chat."""
        bot_id = self._token.partition(":")[0]
        return f"{self.api_url}/bot{bot_id}:{MASK} chat {self.chat_id}"

    def check(self) -> DeliveryResult:
        """``getMe`` (the token works) then ``getChat`` (the bot can see the chat); posts nothing."""
        me = self.deliver(self._method_url("getMe"), json={})
        if not me.ok:
            return me
        chat = self.deliver(self._method_url("getChat"), json={"chat_id": self.chat_id})
        if not chat.ok:
            return chat
        return DeliveryResult.delivered(f"the bot works and can see chat {self.chat_id}")

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> TelegramNotifier | None:
        """Build from ``TELEGRAM_BOT_TOKEN`` and ``TELEGRAM_CHAT_ID`` (both required) and
        ``TELEGRAM_API_URL``; None when neither is set.

        Raises:
            ConfigurationError: one of the two is missing, or a value is malformed.
        """
        settings = channel_settings(env, settings)
        token = env.text("TELEGRAM_BOT_TOKEN")
        chat_id = env.text("TELEGRAM_CHAT_ID")
        if token is None and chat_id is None:
            return None
        register_secret(token, *_token_parts(token))
        if token is None:
            raise ConfigurationError("TELEGRAM_BOT_TOKEN", "is needed when TELEGRAM_CHAT_ID is set")
        if chat_id is None:
            raise ConfigurationError("TELEGRAM_CHAT_ID", "is needed when TELEGRAM_BOT_TOKEN is set")
        if not _TOKEN.match(token):
            raise ConfigurationError("TELEGRAM_BOT_TOKEN", "does not look like a bot token (123456789:AA...)")
        _check_chat_id(chat_id, "TELEGRAM_CHAT_ID")
        api_url = env.url("TELEGRAM_API_URL", secret=False, allow_http=settings.allow_http) or DEFAULT_API_URL
        check_self_hosted(api_url, "TELEGRAM_API_URL")
        return cls(
            bot_token=token,
            chat_id=chat_id,
            api_url=api_url,
            timeout=settings.send_timeout,
            allow_http=settings.allow_http,
        )


def card_html(state: RunState, *, limit: int = 4096, now: float | None = None) -> str:
    """A run card as Telegram HTML (``parse_mode=HTML``) of at most ``limit`` characters."""
    return render_markup(
        card_view(state, now=now),
        limit,
        escape=escape_html,
        bold=lambda text: f"<b>{text}</b>",
        code=lambda text: f"<code>{escape_html(text)}</code>",
    )


#: ``callback_data`` of the control buttons: ``afs:<op>:<arg>`` (at most 64 bytes): ``s`` stop,
#: ``c`` checkpoint, ``i`` status (arg: the run's token), ``y`` confirm and ``n`` cancel a
#: stop (arg: the command's id). Read by ``afs_callbacks.control.telegram``.
CALLBACK_PREFIX = "afs"


def callback_data(op: str, arg: str) -> str:
    """The ``callback_data`` of a control button."""
    return f"{CALLBACK_PREFIX}:{op}:{arg}"[:64]


def card_buttons(state: RunState) -> dict[str, Any] | None:
    """Stop / Checkpoint / Status under a live card whose run takes commands through
    Telegram (``AFS_CONTROL``); None for an ended run or one that takes none."""
    if state.final or "telegram" not in commands_from(state):
        return None
    token = run_token(state.run_id)
    return {
        "inline_keyboard": [
            [
                {"text": "✋ Stop", "callback_data": callback_data("s", token)},
                {"text": "💾 Checkpoint", "callback_data": callback_data("c", token)},
                {"text": "ℹ️ Status", "callback_data": callback_data("i", token)},
            ]
        ]
    }


def confirm_buttons(command_id: str) -> dict[str, Any]:
    """Yes / Cancel under the question a stop asks first."""
    return {
        "inline_keyboard": [
            [
                {"text": "✋ Yes, stop it", "callback_data": callback_data("y", command_id)},
                {"text": "Cancel", "callback_data": callback_data("n", command_id)},
            ]
        ]
    }


def _check_chat_id(chat_id: str, variable: str) -> str:
    if not _CHAT_ID.match(chat_id):
        raise ConfigurationError(variable, f"must be a chat id (-100123...) or @channelname, got {chat_id!r}")
    return chat_id


def _share(message: int, metrics: int, room: int) -> tuple[int, int]:
    """Split ``room`` between the message and the metrics when both do not fit.

    The metrics get at least a third (more if the message is short); the message the rest.
    """
    if message + metrics <= room:
        return message, metrics
    metrics_room = min(metrics, max(room // 3, room - message))
    return room - metrics_room, metrics_room


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _token_parts(token: str | None) -> tuple[str, ...]:
    """What of a bot token is secret on its own: the half after ``123456789:`` (a 401's
    description may quote it without the bot's id)."""
    tail = token.partition(":")[2] if token else ""
    # Telegram's is 35 characters; a short word there would be masked in every text after.
    return (tail,) if len(tail) >= 12 else ()
