"""ntfy channel: push notifications to phones and desktops through an ntfy server.

Messages go through ntfy's JSON publish API (``POST`` to the server root with ``topic``,
``title``, ``message``, ``priority``, ``tags``) rather than the header API: a title is
free text from the run (a model name in Japanese, an emoji), and HTTP headers only carry
Latin-1 unless it is RFC 2047-encoded. JSON carries any text as is.

ntfy turns a message over 4096 bytes into a file attachment, and older servers (1.x, early
2.x) read no more than 4096 bytes of a JSON request, so the whole request is kept within
4096 bytes (the message is cut, with a visible mark). Without a token the topic name is the
only thing guarding a topic (anyone who knows it can read and post), so it is then kept out
of logs and output like a token.

Live cards are opt-in (``NTFY_LIVE=true``): ntfy 2.16 and later replace a notification
published with the same ``sequence_id``; older servers ignore the field and show every
update as a new notification (still answering 200), which only the user can see.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from afs_callbacks.channels._http import HttpChannel, parse_retry_after
from afs_callbacks.channels.base import DeliveryResult, Outcome
from afs_callbacks.channels.card_view import card_view, render_text
from afs_callbacks.channels.hosts import check_self_hosted
from afs_callbacks.config import Env, Settings, channel_settings
from afs_callbacks.events import NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import (
    context_fields,
    format_metrics,
    shorten,
    truncate,
    truncate_bytes,
    utf8_length,
)
from afs_callbacks.redaction import MASK, SecretPattern, mask_url, redact, register_secret

if TYPE_CHECKING:
    import requests

    from afs_callbacks.runstate import RunState

DEFAULT_SERVER = "https://ntfy.sh"
#: ntfy's default ``message-size-limit``; the whole JSON request stays within it.
MAX_REQUEST_BYTES = 4096
#: ntfy answers 429 without ``Retry-After``; its limiter refills one request per 5 s.
RATE_LIMIT_BACKOFF = 5.0

#: Priority 1 (min) .. 5 (max); 2 is silent on phones, 4 and 5 vibrate and pop up.
LEVEL_PRIORITY = {
    NotificationLevel.INFO: 2,
    NotificationLevel.SUCCESS: 3,
    NotificationLevel.WARNING: 3,
    NotificationLevel.ERROR: 4,
    NotificationLevel.CRITICAL: 5,
}
#: ntfy shows tags that are emoji short codes as the emoji in front of the title.
LEVEL_TAGS = {
    NotificationLevel.INFO: "information_source",
    NotificationLevel.SUCCESS: "white_check_mark",
    NotificationLevel.WARNING: "warning",
    NotificationLevel.ERROR: "x",
    NotificationLevel.CRITICAL: "rotating_light",
}

_TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")  # ntfy's own topic rule
_TITLE_CHARS = 250
_MIN_MESSAGE_BYTES = 64
#: A card's priority: 2 (low) shows without sound or vibration; starts and ends push apart.
CARD_PRIORITY = 2


class NtfyNotifier(HttpChannel):
    """Publish each event to an ntfy topic.

    Args:
        topic: the topic name (1-64 letters, digits, ``-``, ``_``).
        server: the server's base URL (default https://ntfy.sh; a path prefix is kept).
        token: an access token (``tk_...``), sent as ``Authorization: Bearer``.
        timeout: seconds for connecting and for reading the answer (each).
        rate_limit_backoff: the least wait after a 429, in seconds.
        live: keep each run's live card, replaced in place by sequence id (ntfy 2.16+).

    Raises:
        ConfigurationError: the topic is not a valid ntfy topic name.

    Example::

        NtfyNotifier("my-training-alerts-4f9c", token="tk_...")
    """

    name: ClassVar[str] = "ntfy"
    variables: ClassVar[tuple[str, ...]] = ("NTFY_TOPIC", "NTFY_URL", "NTFY_TOKEN", "NTFY_LIVE")
    own_prefixes: ClassVar[tuple[str, ...]] = ("NTFY_",)
    listing_order: ClassVar[int] = 80
    hosts: ClassVar[tuple[str, ...]] = ("ntfy.sh",)
    #: Access tokens.
    secret_patterns: ClassVar[tuple[SecretPattern, ...]] = (
        SecretPattern("tk_", re.compile(r"\btk_[A-Za-z0-9]{16,}"), MASK),
    )
    min_interval: ClassVar[float] = 0.5
    permanent_statuses: ClassVar[frozenset[int]] = frozenset({400, 401, 403, 404, 413})
    disabling_statuses: ClassVar[frozenset[int]] = frozenset({401, 403, 404})

    def __init__(
        self,
        topic: str,
        *,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        timeout: float = 10.0,
        rate_limit_backoff: float = RATE_LIMIT_BACKOFF,
        live: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        self.live = live
        # Per instance and opt-in: only servers from 2.16 replace by sequence id.
        vars(self)["supports_cards"] = live
        if not _TOPIC.match(topic):
            # Not echoed: on ntfy.sh the topic name is the only thing guarding it.
            raise ConfigurationError("NTFY_TOPIC", "must be 1-64 letters, digits, '-' or '_'")
        # With a token the topic can be a plain word (masking it everywhere would garble
        # logs); without one the name is the credential.
        register_secret(token if token else topic)
        self.topic = topic
        self.server = server.rstrip("/") + "/"
        self._token = token
        self.rate_limit_backoff = rate_limit_backoff

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Publish; 429 waits at least ``rate_limit_backoff``, 401/403/404 stop the channel."""
        return self.deliver(self.server, data=self.encode(event), headers=self._headers())

    def post_card(self, state: RunState) -> DeliveryResult:
        """Publish the card with a sequence id of its own; that id is the card's id."""
        return self.edit_card(card_sequence_id(state.run_id), state)

    def edit_card(self, message_id: str, state: RunState) -> DeliveryResult:
        """Publish the card again under its sequence id: the server replaces it in place."""
        if not self.live:
            return super().edit_card(message_id, state)
        # The id travels as the JSON field and as the header form ntfy also documents.
        headers = {**self._headers(), "X-Sequence-ID": message_id}
        result = self.deliver(self.server, data=self.encode_card(message_id, state), headers=headers)
        if not result.ok:
            return result
        return DeliveryResult(Outcome.DELIVERED, result.detail, message_id=message_id)

    def encode_card(self, sequence_id: str, state: RunState) -> bytes:
        """The JSON publish request of a card, at most 4096 bytes."""
        title, _, body = render_text(state, limit=3000).partition("\n")
        payload: dict[str, Any] = {
            "topic": self.topic,
            "title": truncate(card_view(state).headline, _TITLE_CHARS) or title,
            "message": body or title,
            "priority": CARD_PRIORITY,
            "sequence_id": sequence_id,
            "markdown": False,
        }
        data = _dump(payload)
        over = len(data) - MAX_REQUEST_BYTES
        if over > 0:
            size = len(payload["message"].encode("utf-8"))
            payload["message"] = truncate_bytes(payload["message"], max(size - over - 16, _MIN_MESSAGE_BYTES))
            data = _dump(payload)
        return data

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def encode(self, event: NotificationEvent) -> bytes:
        """The JSON request for ``event``, at most 4096 bytes (the message is cut to fit)."""
        whole = message = self.body_text(event)
        budget = len(whole.encode("utf-8"))
        while True:
            data = _dump(self.payload(event, message))
            over = len(data) - MAX_REQUEST_BYTES
            if over <= 0 or budget <= _MIN_MESSAGE_BYTES:
                return data
            # JSON escaping never shortens text: cutting `over` raw bytes removes enough.
            # Always cut from the whole text: a failure's error line stays, the middle of
            # its frames gives way.
            budget = max(budget - over - 16, _MIN_MESSAGE_BYTES)
            message = shorten(whole, budget, measure=utf8_length)

    def payload(self, event: NotificationEvent, message: str) -> dict[str, Any]:
        """The JSON publish request (``markdown`` off: run text is shown as typed)."""
        return {
            "topic": self.topic,
            "title": truncate(event.title, _TITLE_CHARS) or event.event_type.value,
            "message": message,
            "priority": LEVEL_PRIORITY[event.level],
            "tags": [LEVEL_TAGS[event.level], event.event_type.value],
            "markdown": False,
        }

    @staticmethod
    def body_text(event: NotificationEvent) -> str:
        """The notification body: the message, then the run's fields and metrics."""
        lines = [event.message] if event.message else []
        lines += [f"{label}: {value}" for label, value in context_fields(event)]
        if event.metrics:
            lines.append("Metrics: " + format_metrics(event.metrics))
        return "\n".join(lines) or event.title

    def retry_hint(self, response: requests.Response) -> float | None:
        """ntfy's 429 carries no ``Retry-After``: wait at least ``rate_limit_backoff``."""
        hint = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code == 429:
            return max(hint or 0.0, self.rate_limit_backoff)
        return hint

    def check(self) -> DeliveryResult:
        """Ask the server's health endpoint (``GET /v1/health``); nothing is published."""
        import requests

        try:
            response = self.session.get(self.server + "v1/health", timeout=(self.timeout, self.timeout))
        except requests.RequestException as error:
            return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
        if response.status_code == 200:
            try:
                healthy = bool(response.json().get("healthy"))
            except (ValueError, AttributeError):
                healthy = False
            if healthy:
                return DeliveryResult.delivered("server healthy")
            return DeliveryResult.retry("server answered but does not report itself healthy")
        return self.classify(response)

    def describe(self) -> str:
        """The server's host; the topic and token are secret."""
        auth = ", token ***" if self._token else ""
        return f"ntfy {mask_url(self.server)}{auth}"

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> NtfyNotifier | None:
        """``NTFY_TOPIC`` (and ``NTFY_URL``, ``NTFY_TOKEN``, ``NTFY_LIVE`` for live cards);
        None when neither topic nor URL is set. ``NTFY_URL`` may name the topic itself: ``https://ntfy.sh/my-topic``.

        Raises:
            ConfigurationError: a bad URL, a bad topic, or a token with no topic.
        """
        settings = channel_settings(env, settings)
        register_secret(_password(env.text("NTFY_URL")))  # user:password@ is sent as basic auth
        url = env.url("NTFY_URL", allow_http=settings.allow_http)
        if url is not None:
            check_self_hosted(url, "NTFY_URL")
        topic = env.text("NTFY_TOPIC")
        token = env.text("NTFY_TOKEN")
        if url is None and topic is None:
            if token is not None:
                raise ConfigurationError("NTFY_TOPIC", "must be set when NTFY_TOKEN is")
            return None
        server = url or DEFAULT_SERVER
        if topic is None:
            server, topic = _split_topic_url(server)
        return cls(
            topic,
            server=server,
            token=token,
            timeout=settings.send_timeout,
            live=env.flag("NTFY_LIVE"),
        )


def card_sequence_id(run_id: str) -> str:
    """A run's card sequence id: stable per run (a resumed run replaces the same card) and
    made of letters, digits and ``-`` only, whatever the run id holds."""
    return "afs-card-" + hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:24]


def _password(url: str | None) -> str | None:
    try:
        return urlsplit(url or "").password
    except ValueError:
        return None  # env.url says what is wrong with it


def _split_topic_url(url: str) -> tuple[str, str]:
    """``https://host/prefix/topic`` -> (``https://host/prefix``, ``topic``)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    base, _, topic = path.rpartition("/")
    if not topic:
        raise ConfigurationError(
            "NTFY_TOPIC", "is not set and NTFY_URL names no topic (use https://ntfy.sh/<topic>)"
        )
    return urlunsplit((parts.scheme, parts.netloc, base, "", "")), topic


def _dump(payload: dict[str, Any]) -> bytes:
    # Not ensure_ascii: \uXXXX escapes would spend the 4096 bytes six at a time.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
