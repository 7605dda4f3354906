"""Slack channel: a Block Kit message through an incoming webhook.

Slack answers ``200 ok``; failures come as a status and a plain-text code in the body
(``invalid_payload``, ``no_service``, ``channel_is_archived``). A 429 carries
``Retry-After``. 403, 404 and 410 mean the hook is revoked, deleted or its channel
archived: the channel is disabled rather than failing every later message.

Everything that comes from the run (model names, exception text, metric names) goes
through :func:`escape_mrkdwn`, so ``<!channel>``, ``<@U123>`` or a ``<url|label>`` link in
a model name or an error message is shown as text and pings nobody.
"""

from __future__ import annotations

from typing import Any, ClassVar

from afs_callbacks.channels._http import HttpChannel
from afs_callbacks.channels.base import DeliveryResult
from afs_callbacks.config import Env, validate_url
from afs_callbacks.events import NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import (
    LEVEL_EMOJI,
    context_fields,
    format_value,
    plain_text,
    truncate,
    truncate_escaped,
)
from afs_callbacks.redaction import mask_url, redact, register_secret


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters.

    Slack documents exactly ``&``, ``<`` and ``>``; with them escaped no mention,
    channel-wide ping or link can be formed from the text.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackNotifier(HttpChannel):
    """Post events to a Slack channel through an incoming webhook.

    The message is a header with the level's emoji and the title, the message text, the
    run's details and its metrics as fields, and a plain-text fallback for notifications.

    Args:
        webhook_url: the incoming webhook URL (``https://hooks.slack.com/services/...``);
            a secret: it is masked in every output.
        channel: a channel override (``#alerts``); only legacy webhooks honour it, webhooks
            of Slack apps always post to the channel chosen when they were created.
        timeout: seconds for connecting and for reading Slack's answer (each).
        allow_http: accept a plain-http URL to a non-loopback host (a local relay).

    Raises:
        ConfigurationError: the URL is not an http(s) URL (shown masked).

    Example::

        manager.register_handler("slack", SlackNotifier(webhook_url=os.environ["SLACK_WEBHOOK_URL"]))
    """

    name: ClassVar[str] = "slack"
    #: Slack allows about one message per second per webhook.
    min_interval: ClassVar[float] = 1.0
    #: Incoming webhooks cannot upload files.
    supports_images: ClassVar[bool] = False
    env_prefix: ClassVar[str] = "SLACK"

    #: Block Kit limits (characters): header text, section text, one section field.
    HEADER_LIMIT: ClassVar[int] = 150
    SECTION_LIMIT: ClassVar[int] = 3000
    FIELD_LIMIT: ClassVar[int] = 2000
    FIELDS_PER_SECTION: ClassVar[int] = 10
    MAX_BLOCKS: ClassVar[int] = 50
    #: Metrics shown as fields; the rest are listed in one section of text.
    METRIC_FIELDS: ClassVar[int] = 20
    #: The fallback ``text`` (Slack cuts at 40,000; a notification shows far less).
    TEXT_LIMIT: ClassVar[int] = 3000

    def __init__(
        self,
        webhook_url: str,
        channel: str | None = None,
        *,
        timeout: float = 10.0,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        register_secret(webhook_url)
        self.webhook_url = validate_url(webhook_url, "webhook_url", allow_http=allow_http)
        self.channel = channel.strip() if channel and channel.strip() else None

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Post the event; 2xx delivered, 429/5xx retried, 400/403/404/410 permanent."""
        try:
            payload = self.payload(event)
        except Exception as error:  # a formatting bug must not become an endless retry
            return DeliveryResult.permanent(f"could not build the Slack message: {redact(error)}")
        return self.deliver(self.webhook_url, json=payload)

    def payload(self, event: NotificationEvent) -> dict[str, Any]:
        """The JSON body for ``event``, within Slack's documented limits."""
        emoji = LEVEL_EMOJI[event.level]
        title = event.title.strip() or event.event_type.value.replace("_", " ")
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                # plain_text: Slack renders no markup or mentions in it, so no escaping.
                "text": {"type": "plain_text", "text": truncate(f"{emoji} {title}", self.HEADER_LIMIT)},
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": self._context_line(event)}],
            },
        ]
        if event.message.strip():
            blocks.append(self._section(event.message))
        blocks += self._field_sections(context_fields(event))
        blocks += self._metric_blocks(event.metrics)
        payload: dict[str, Any] = {
            "text": truncate_escaped(plain_text(event), self.TEXT_LIMIT, escape_mrkdwn),
            "blocks": blocks[: self.MAX_BLOCKS],
        }
        if self.channel:
            payload["channel"] = self.channel
        return payload

    def _context_line(self, event: NotificationEvent) -> str:
        when = event.timestamp.strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"*{event.level.value.upper()}* · {event.event_type.value} · {when}"

    def _section(self, text: str) -> dict[str, Any]:
        return {
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate_escaped(text, self.SECTION_LIMIT, escape_mrkdwn)},
        }

    def _field_sections(self, fields: list[tuple[str, str]]) -> list[dict[str, Any]]:
        sections = []
        for start in range(0, len(fields), self.FIELDS_PER_SECTION):
            chunk = fields[start : start + self.FIELDS_PER_SECTION]
            sections.append(
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": self._field_text(label, value)} for label, value in chunk
                    ],
                }
            )
        return sections

    def _field_text(self, label: str, value: str) -> str:
        name = truncate_escaped(label, 200, escape_mrkdwn)
        budget = self.FIELD_LIMIT - len(name) - 3  # "*" + "*" + newline
        return f"*{name}*\n{truncate_escaped(value, budget, escape_mrkdwn)}"

    def _metric_blocks(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        if not metrics:
            return []
        items = [(str(name), format_value(value)) for name, value in metrics.items()]
        shown, rest = items[: self.METRIC_FIELDS], items[self.METRIC_FIELDS :]
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Metrics*"}}]
        blocks += self._field_sections(shown)
        if rest:
            listing = ", ".join(f"{name}={value}" for name, value in rest)
            blocks.append(self._section(f"{len(rest)} more: {listing}"))
        return blocks

    def describe(self) -> str:
        """The webhook's host, its path masked, and the channel override if any."""
        target = mask_url(self.webhook_url)
        return f"{target} {self.channel}" if self.channel else target

    def check(self) -> DeliveryResult:
        """Slack has no way to test an incoming webhook without posting to it."""
        return DeliveryResult.permanent(
            "Slack webhooks cannot be probed without posting;"
            " `afs-notify test --channel slack` sends a real message"
        )

    @classmethod
    def from_env(cls, env: Env) -> SlackNotifier | None:
        """Build from ``SLACK_WEBHOOK_URL`` (required) and ``SLACK_CHANNEL``; None when unset.

        Raises:
            ConfigurationError: the URL is malformed, plain http to a remote host, or
                missing while ``SLACK_CHANNEL`` is set.
        """
        url = env.url("SLACK_WEBHOOK_URL")
        if url is None:
            if env.text("SLACK_CHANNEL"):
                raise ConfigurationError("SLACK_WEBHOOK_URL", "is needed when SLACK_CHANNEL is set")
            return None
        return cls(
            webhook_url=url,
            channel=env.text("SLACK_CHANNEL"),
            timeout=env.number("AFS_SEND_TIMEOUT", 10.0, minimum=0.1) or 10.0,
            allow_http=env.flag("AFS_ALLOW_HTTP"),
        )
