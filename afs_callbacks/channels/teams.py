"""Microsoft Teams channel: an Adaptive Card posted to a Workflows (Power Automate) webhook.

The Workflows URL carries its credential in the query (``sig=``), so the whole URL is a
secret. Teams answers 202 once the flow has *accepted* the message; a failure inside the
flow (a bad card, a deleted channel) happens later and is not reported back to us.

Adaptive Card ``TextBlock`` and ``FactSet`` text is read as a Markdown subset (bold,
italic, lists, ``[links](url)``). Text from a run (a model name, an exception message) must
not turn into a disguised link or swallow characters, so the message body goes in a
``RichTextBlock``/``TextRun``, which the schema renders without Markdown, and the short
texts that have to be ``TextBlock``/``Fact`` have their Markdown characters escaped.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from afs_callbacks.channels._http import HttpChannel
from afs_callbacks.channels.base import DeliveryResult
from afs_callbacks.channels.hosts import add_warning, clear_warning
from afs_callbacks.config import Env, Settings, channel_settings, is_loopback, validate_url
from afs_callbacks.events import NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import (
    context_fields,
    format_value,
    marked_title,
    shorten,
    truncate,
    utf8_length,
)
from afs_callbacks.redaction import mask_url, register_secret

#: Where Workflows (Power Automate / Logic Apps) webhooks live.
TEAMS_HOST_SUFFIXES = (".logic.azure.com", ".powerplatform.com", ".powerautomate.com")
#: Teams refuses messages over about 28 KB; stay well below it, card JSON included.
MAX_PAYLOAD_BYTES = 20_000
#: Adaptive Card colour names (Teams themes them for light and dark mode).
LEVEL_CARD_COLORS = {
    NotificationLevel.INFO: "Accent",
    NotificationLevel.SUCCESS: "Good",
    NotificationLevel.WARNING: "Warning",
    NotificationLevel.ERROR: "Attention",
    NotificationLevel.CRITICAL: "Attention",
}

_TITLE_CHARS = 300
_FACT_CHARS = 500
_MAX_METRICS = 40
_MIN_MESSAGE_BYTES = 200

# Characters that start Markdown anywhere in a line: emphasis, links, code, escapes.
_INLINE_MARKUP = re.compile(r"([\\`*\[\]~])")
# `_` makes emphasis only at a word boundary; `run_2024_01` stays readable unescaped.
_EDGE_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# List markers and headings at the start of a line.
_LINE_MARKUP = re.compile(r"(?m)^(\s*)(?:([-+#>])|(\d+)([.)]))(?=\s|$)")


def escape_markdown(text: str) -> str:
    """Escape ``text`` so Adaptive Card Markdown shows it literally (CommonMark escapes).

    Brackets, asterisks, backticks and word-edge underscores get a backslash, and so do
    list and heading markers at the start of a line; ``[x](https://evil)`` stays text.
    """
    text = _INLINE_MARKUP.sub(r"\\\1", text)
    text = _EDGE_UNDERSCORE.sub(r"\\_", text)
    return _LINE_MARKUP.sub(_escape_line_start, text)


def _escape_line_start(match: re.Match[str]) -> str:
    indent, marker, number, dot = match.groups()
    # Only punctuation can be backslash-escaped: `1\.` (not `\1.`) stops a numbered list.
    return f"{indent}\\{marker}" if marker else f"{indent}{number}\\{dot}"


class TeamsNotifier(HttpChannel):
    """Post each event as an Adaptive Card (1.4) to a Teams Workflows webhook.

    Args:
        webhook_url: the Workflows "When a Teams webhook request is received" URL,
            ``sig=`` included (a secret: it is never logged or shown).
        timeout: seconds for connecting and for reading the answer (each).
        max_bytes: the largest body sent; longer messages are cut to fit.
        allow_http: accept a plain-http URL to a non-loopback host (``AFS_ALLOW_HTTP``).

    Raises:
        ConfigurationError: (from :meth:`from_env`) the URL is not https.

    Example::

        TeamsNotifier("https://prod-00.westus.logic.azure.com/workflows/...&sig=...")
    """

    name: ClassVar[str] = "teams"
    variables: ClassVar[tuple[str, ...]] = ("TEAMS_WEBHOOK_URL",)
    variable_aliases: ClassVar[dict[str, str]] = {"TEAMS_WEBHOOK": "TEAMS_WEBHOOK_URL"}
    listing_order: ClassVar[int] = 70
    min_interval: ClassVar[float] = 0.5

    def __init__(
        self,
        webhook_url: str,
        *,
        timeout: float = 10.0,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        register_secret(webhook_url)
        self._url = validate_url(webhook_url, "webhook_url", allow_http=allow_http)
        self.max_bytes = max_bytes

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Post the card; 2xx (Teams answers 202) means the flow accepted it."""
        body = self.encode(event)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        return self.deliver(self._url, data=body, headers=headers)

    def encode(self, event: NotificationEvent) -> bytes:
        """The request body for ``event``, at most :attr:`max_bytes` (message cut first)."""
        message = event.message
        budget = len(message.encode("utf-8"))
        metrics = _MAX_METRICS
        while True:
            body = _dump(self.payload(event, message=message, max_metrics=metrics))
            over = len(body) - self.max_bytes
            if over <= 0:
                return body
            if budget > _MIN_MESSAGE_BYTES:
                # JSON escaping only lengthens text, so cutting `over` raw bytes (plus room
                # for the mark) removes at least `over` bytes of JSON. Cut from the whole
                # message: a failure's error line stays, the middle of its frames goes.
                budget = max(budget - over - 64, _MIN_MESSAGE_BYTES)
                message = shorten(event.message, budget, measure=utf8_length)
            elif metrics > 0:
                metrics //= 2
            else:
                return _dump(self.payload(event, message="(message too large to show)", max_metrics=0))

    def payload(
        self, event: NotificationEvent, *, message: str | None = None, max_metrics: int = _MAX_METRICS
    ) -> dict[str, Any]:
        """The Teams message: one Adaptive Card attachment built from ``event``."""
        title = truncate(marked_title(event.level, event.title), _TITLE_CHARS)
        body: list[dict[str, Any]] = [
            {
                "type": "TextBlock",
                "text": escape_markdown(title),
                "size": "Medium",
                "weight": "Bolder",
                "color": LEVEL_CARD_COLORS[event.level],
                "wrap": True,
            }
        ]
        text = event.message if message is None else message
        if text:
            # TextRun text is never read as Markdown: tracebacks and paths stay verbatim.
            body.append({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text}]})
        facts = [_fact(label, value) for label, value in context_fields(event)]
        if facts:
            body.append({"type": "FactSet", "facts": facts})
        metrics = list(event.metrics.items())
        if metrics and max_metrics > 0:
            shown = [_fact(str(name), format_value(value)) for name, value in metrics[:max_metrics]]
            if len(metrics) > max_metrics:
                shown.append(_fact("…", f"{len(metrics) - max_metrics} more metrics"))
            body.append({"type": "TextBlock", "text": "Metrics", "weight": "Bolder", "spacing": "Medium"})
            body.append({"type": "FactSet", "facts": shown})
        body.append(
            {
                "type": "TextBlock",
                "text": escape_markdown(
                    f"{event.event_type.value} · {event.timestamp:%Y-%m-%d %H:%M:%S} UTC"
                ),
                "isSubtle": True,
                "size": "Small",
                "wrap": True,
            }
        )
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "msteams": {"width": "Full"},
            "body": body,
        }
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": card,
                }
            ],
        }

    def describe(self) -> str:
        """The webhook's host only; the path and ``sig=`` are secret."""
        return f"teams {mask_url(self._url)}"

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> TeamsNotifier | None:
        """``TEAMS_WEBHOOK_URL``; None when unset.

        Raises:
            ConfigurationError: the URL is not an https URL, or an Azure/Power Platform
                URL without the Workflows path or ``sig=`` (shown masked).
        """
        settings = channel_settings(env, settings)
        url = env.url("TEAMS_WEBHOOK_URL", allow_http=settings.allow_http)
        if url is None:
            return None
        check_workflow_url(url, "TEAMS_WEBHOOK_URL")
        return cls(url, timeout=settings.send_timeout, allow_http=settings.allow_http)


def check_workflow_url(url: str, variable: str) -> None:
    """A Teams Workflows webhook: ``https://<...>.logic.azure.com/workflows/<id>/triggers/
    manual/paths/invoke?...&sig=<secret>`` (or the newer ``*.powerplatform.com`` form).

    Raises:
        ConfigurationError: an Azure/Power Platform host without the invoke path or ``sig=``.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    clear_warning(variable)
    if host.endswith(".webhook.office.com"):
        add_warning(
            variable,
            "an Office 365 connector URL: Microsoft retired these; create a Workflows webhook instead",
        )
        return
    if not host.endswith(TEAMS_HOST_SUFFIXES):
        if not is_loopback(host):
            add_warning(variable, f"{host!r} is not a Power Automate / Logic Apps host; fine for a relay")
        return
    expected = "expected the Workflows URL .../workflows/<id>/triggers/manual/paths/invoke?...&sig=<secret>"
    if "/workflows/" not in parts.path or not parts.path.rstrip("/").endswith("/invoke"):
        raise ConfigurationError(variable, f"is not a Teams Workflows URL: {expected}")
    if not parse_qs(parts.query).get("sig"):
        raise ConfigurationError(variable, f"has no sig= (its credential): {expected}")


def _fact(title: str, value: str) -> dict[str, str]:
    return {
        "title": escape_markdown(truncate(title, 100)),
        "value": escape_markdown(truncate(value, _FACT_CHARS)),
    }


def _dump(payload: dict[str, Any]) -> bytes:
    # Not ensure_ascii: \uXXXX escapes would make non-Latin text 6 bytes a character.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
