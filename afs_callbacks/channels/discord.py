"""Discord channel: an embed coloured by level, posted to a channel webhook.

Posts go to ``<webhook>?wait=true``: without ``wait`` Discord answers 204 before saving
the message, and a message it then drops looks delivered. A chart travels as multipart
(``payload_json`` + ``files[0]``) and shows as the embed's image. ``allowed_mentions``
is empty, so ``@everyone`` or ``<@id>`` in a model name or an error pings nobody.

Discord bans an IP for a while after 10,000 answers of 401, 403 or 429 within ten
minutes, so a revoked hook (401/403/404) disables the channel at the first answer and a
429's wait (the body's ``retry_after`` first, else ``Retry-After``) pauses it whole.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

from afs_callbacks.channels._http import HttpChannel, json_object, parse_retry_after, short_body
from afs_callbacks.channels.base import DeliveryResult, Outcome
from afs_callbacks.channels.card_view import card_view, escape_markdown
from afs_callbacks.channels.hosts import check_host
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import Attachment, NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import (
    LEVEL_COLORS,
    context_fields,
    format_metrics,
    format_value,
    marked_title,
    shorten,
    truncate,
)
from afs_callbacks.redaction import DELIMITER, MASK, SecretPattern, mask_url, redact, register_secret

if TYPE_CHECKING:
    import requests

    from afs_callbacks.runstate import RunState

#: Where webhooks live (the canary and PTB clients' hosts too).
DISCORD_HOSTS = tuple(
    f"{prefix}{domain}" for domain in ("discord.com", "discordapp.com") for prefix in ("", "ptb.", "canary.")
)
# Discord resolves ``attachment://name`` only for plain file names.
#: Discord's JSON error code for an upload over the size limit ("Request entity too large").
ENTITY_TOO_LARGE = 40005
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")
_WEBHOOK_PATH = re.compile(r"^/api(?:/v\d+)?/webhooks/(?P<id>[^/]*)/(?P<token>[^/]*)/?$")
_WEBHOOK_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,}$")


class DiscordNotifier(HttpChannel):
    """Post events to a Discord channel through a webhook, as one embed.

    Args:
        webhook_url: ``https://discord.com/api/webhooks/{id}/{token}``; a secret: masked
            in every output. A ``?thread_id=`` query is kept.
        timeout: seconds for connecting and for reading Discord's answer (each).
        allow_http: accept a plain-http URL to a non-loopback host (a local relay).

    Raises:
        ConfigurationError: the URL is not an http(s) URL (shown masked).
    """

    name: ClassVar[str] = "discord"
    variables: ClassVar[tuple[str, ...]] = ("DISCORD_WEBHOOK_URL",)
    variable_aliases: ClassVar[dict[str, str]] = {
        "DISCORD_WEBHOOK": "DISCORD_WEBHOOK_URL",
        "DISCORD_URL": "DISCORD_WEBHOOK_URL",
    }
    listing_order: ClassVar[int] = 40
    hosts: ClassVar[tuple[str, ...]] = DISCORD_HOSTS
    #: A webhook's id and token: /api/webhooks/{id}/{token}.
    secret_patterns: ClassVar[tuple[SecretPattern, ...]] = (
        SecretPattern(
            "webhooks",
            re.compile(rf"({DELIMITER}api{DELIMITER}webhooks{DELIMITER})[^\s\"'<>]+"),
            r"\1" + MASK,
        ),
    )
    #: A webhook takes about 5 requests per 2 s and a channel 30 messages a minute.
    min_interval: ClassVar[float] = 1.0
    supports_images: ClassVar[bool] = True
    #: Discord answers 403 for a webhook whose channel it can no longer post to.
    disabling_statuses: ClassVar[frozenset[int]] = frozenset({401, 403, 404})
    #: A webhook edits its own messages: each run gets one live card.
    supports_cards: ClassVar[bool] = True
    #: Discord's JSON error code for a message that no longer exists (deleted).
    UNKNOWN_MESSAGE: ClassVar[int] = 10008

    #: Documented limits (characters unless named otherwise).
    CONTENT_LIMIT: ClassVar[int] = 2000
    TITLE_LIMIT: ClassVar[int] = 256
    DESCRIPTION_LIMIT: ClassVar[int] = 4096
    MAX_FIELDS: ClassVar[int] = 25
    FIELD_NAME_LIMIT: ClassVar[int] = 256
    FIELD_VALUE_LIMIT: ClassVar[int] = 1024
    FOOTER_LIMIT: ClassVar[int] = 2048
    EMBED_TOTAL_LIMIT: ClassVar[int] = 6000
    FILE_BYTES_LIMIT: ClassVar[int] = 10 * 1024 * 1024

    def __init__(self, webhook_url: str, *, timeout: float = 10.0, allow_http: bool = False) -> None:
        super().__init__(timeout=timeout)
        register_secret(webhook_url)
        self.webhook_url = validate_url(webhook_url, "webhook_url", allow_http=allow_http)

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Post the embed (with the chart, if any); wait for Discord to store it."""
        try:
            payload = self.payload(event)
            image = self._image(event)
        except Exception as error:  # a formatting bug must not become an endless retry
            return DeliveryResult.permanent(f"could not build the Discord message: {redact(error)}")
        params = {"wait": "true"}
        if image is None:
            return self.deliver(self.webhook_url, json=payload, params=params)
        filename = _safe_filename(image.filename)
        payload["embeds"][0]["image"] = {"url": f"attachment://{filename}"}
        payload["attachments"] = [{"id": 0, "filename": filename}]
        response = self.post(
            self.webhook_url,
            data={"payload_json": json.dumps(payload)},
            files={"files[0]": (filename, image.data, image.content_type)},
            params=params,
        )
        if isinstance(response, DeliveryResult):
            return response
        if response.status_code == 413 or json_object(response).get("code") == ENTITY_TOO_LARGE:
            # The file is over what this server takes (a guild's upload limit): the sender
            # sends the embed again without it.
            return DeliveryResult.refused_attachment(f"HTTP {response.status_code}: {short_body(response)}")
        return self.classify(response)

    def payload(self, event: NotificationEvent) -> dict[str, Any]:
        """The JSON body for ``event`` (without the image), within Discord's limits."""
        title = event.title.strip() or event.event_type.value.replace("_", " ")
        embed: dict[str, Any] = {
            "title": truncate(marked_title(event.level, title), self.TITLE_LIMIT),
            "color": LEVEL_COLORS[event.level],
            "timestamp": event.timestamp.isoformat(),
            "footer": {"text": f"afs-callbacks · {event.level.value} · {event.event_type.value}"},
            "fields": self._fields(event),
        }
        # A little slack under 6,000: Discord may count an emoji as two characters.
        total_limit = self.EMBED_TOTAL_LIMIT - 32
        while embed["fields"] and _embed_length(embed) > total_limit:
            embed["fields"].pop()  # only with absurd values: the field caps normally suffice
        description_budget = max(total_limit - _embed_length(embed), 0)
        # A failure's error line leads; only the middle of its frames gives way.
        description = shorten(event.message.strip(), min(self.DESCRIPTION_LIMIT, description_budget))
        if description:  # Discord rejects an empty description
            embed["description"] = description
        return {"embeds": [embed], "allowed_mentions": {"parse": []}}

    def _fields(self, event: NotificationEvent) -> list[dict[str, Any]]:
        # Caps well under Discord's per-field limits keep even 25 full fields inside the
        # 6,000 characters of an embed, with room left for the description.
        fields = [self._field(label, value, value_limit=200) for label, value in context_fields(event)]
        metrics = [(str(name), format_value(value)) for name, value in event.metrics.items()]
        room = self.MAX_FIELDS - len(fields)  # context fields are at most 12: room >= 13
        shown = metrics if len(metrics) <= room else metrics[: room - 1]
        fields += [self._field(name, value, name_limit=64, value_limit=64) for name, value in shown]
        if len(shown) < len(metrics):
            # The last slot lists the metrics that did not get a field of their own.
            rest = dict(metrics[len(shown) :])
            fields.append(self._field(f"{len(rest)} more metrics", format_metrics(rest), inline=False))
        return fields

    def _field(
        self, name: str, value: str, *, name_limit: int = 256, value_limit: int = 1024, inline: bool = True
    ) -> dict[str, Any]:
        return {
            # Discord rejects empty names and values.
            "name": truncate(name, min(name_limit, self.FIELD_NAME_LIMIT)) or "-",
            "value": truncate(value, min(value_limit, self.FIELD_VALUE_LIMIT)) or "-",
            "inline": inline,
        }

    def _image(self, event: NotificationEvent) -> Attachment | None:
        for attachment in event.attachments:
            if attachment.content_type.startswith("image/") and len(attachment.data) <= self.FILE_BYTES_LIMIT:
                return attachment
        return None

    def retry_hint(self, response: requests.Response) -> float | None:
        """The body's ``retry_after`` (float seconds, more precise), else ``Retry-After``."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            value = body.get("retry_after")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return float(value)
        return parse_retry_after(response.headers.get("Retry-After"))

    def post_card(self, state: RunState) -> DeliveryResult:
        """Post the run's card with ``?wait=true``; the answer's message ``id`` is kept."""
        response = self.post(self.webhook_url, json=self._card_payload(state), params={"wait": "true"})
        if isinstance(response, DeliveryResult):
            return response
        result = self.classify(response)
        if not result.ok:
            return result
        message_id = json_object(response).get("id")
        if not message_id:
            return DeliveryResult.permanent("Discord answered without a message id")
        return DeliveryResult(Outcome.DELIVERED, result.detail, message_id=str(message_id))

    def edit_card(self, message_id: str, state: RunState) -> DeliveryResult:
        """``PATCH /webhooks/{id}/{token}/messages/{message_id}``; Unknown Message is gone."""
        import requests

        try:
            response = self.session.patch(
                self._message_url(message_id),
                json=self._card_payload(state),
                timeout=(self.timeout, self.timeout),
                allow_redirects=False,
            )
        except requests.RequestException as error:
            return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
        if response.status_code == 404 and json_object(response).get("code") == self.UNKNOWN_MESSAGE:
            return DeliveryResult(Outcome.PERMANENT, f"HTTP 404: {short_body(response)}", gone=True)
        return self.classify(response)

    def _card_payload(self, state: RunState) -> dict[str, Any]:
        return {"embeds": [card_embed(state)], "allowed_mentions": {"parse": []}}

    def _message_url(self, message_id: str) -> str:
        """The webhook's message URL, keeping its query (a ``thread_id`` applies to edits too)."""
        parts = urlsplit(self.webhook_url)
        path = f"{parts.path.rstrip('/')}/messages/{quote(message_id, safe='')}"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    def describe(self) -> str:
        """The webhook's host with its id and token masked."""
        return mask_url(self.webhook_url)

    def check(self) -> DeliveryResult:
        """GET the webhook (Discord returns its name without posting anything)."""
        import requests

        try:
            response = self.session.get(self.webhook_url, timeout=(self.timeout, self.timeout))
        except requests.RequestException as error:
            return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
        if response.status_code == 200:
            try:
                # The answer also holds the token: only the name is used.
                name = str(response.json().get("name", ""))
            except (ValueError, AttributeError):
                name = ""
            return DeliveryResult.delivered(f"webhook {name!r} is usable" if name else "webhook is usable")
        return self.classify(response)

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> DiscordNotifier | None:
        """Build from ``DISCORD_WEBHOOK_URL``; None when unset.

        Raises:
            ConfigurationError: the URL is malformed or plain http to a remote host.
        """
        settings = channel_settings(env, settings)
        url = env.url("DISCORD_WEBHOOK_URL", allow_http=settings.allow_http)
        if url is None:
            return None
        check_webhook_url(url, "DISCORD_WEBHOOK_URL")
        return cls(
            webhook_url=url,
            timeout=settings.send_timeout,
            allow_http=settings.allow_http,
        )


def check_webhook_url(url: str, variable: str) -> None:
    """A Discord webhook: ``https://discord.com/api/webhooks/<numeric id>/<token>``.

    Raises:
        ConfigurationError: a Discord host with another path, a non-numeric id, a
            malformed token, or a misspelt host.
    """
    if not check_host(url, variable, DISCORD_HOSTS, "Discord"):
        return
    expected = "expected https://discord.com/api/webhooks/<numeric id>/<token>"
    match = _WEBHOOK_PATH.match(urlsplit(url).path)
    if match is None:
        raise ConfigurationError(variable, f"is not a Discord webhook URL: {expected}")
    if not match.group("id").isdigit():
        raise ConfigurationError(variable, f"the webhook id must be a number ({expected})")
    if not _WEBHOOK_TOKEN.match(match.group("token")):
        raise ConfigurationError(variable, f"the webhook token is missing or malformed ({expected})")


def card_embed(state: RunState, *, now: float | None = None) -> dict[str, Any]:
    """A run card as one embed (title 256, description 4096, 25 fields of 1024, 6000 in all)."""
    view = card_view(state, now=now)
    description = [f"`{view.progress}`"] if view.progress else []
    if view.outcome:
        description.append(escape_markdown(truncate(view.outcome, 1500)))
    embed: dict[str, Any] = {
        "title": truncate(view.headline, 256),
        "color": view.color,
        "fields": [
            {
                "name": truncate(label, 256),
                "value": escape_markdown(truncate(value, 1000)) or "-",
                "inline": True,
            }
            for label, value in view.fields[:25]
        ],
        "footer": {"text": f"afs-callbacks · {view.footer}"},
    }
    if description:
        embed["description"] = "\n".join(description)
    return embed


def _embed_length(embed: dict[str, Any]) -> int:
    """Characters Discord counts towards an embed's 6,000: title, description, fields, footer."""
    total = len(embed.get("title", "")) + len(embed.get("description", ""))
    total += len(embed.get("footer", {}).get("text", ""))
    total += sum(len(field["name"]) + len(field["value"]) for field in embed.get("fields", []))
    return total


def _safe_filename(filename: str) -> str:
    cleaned = _UNSAFE_FILENAME.sub("_", filename.rsplit("/", 1)[-1]) or "chart.png"
    return cleaned[:100]
