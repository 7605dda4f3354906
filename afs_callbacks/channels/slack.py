"""Slack channel: a Block Kit message through an incoming webhook.

Slack answers ``200 ok``; failures come as a status and a plain-text code in the body
(``invalid_payload``, ``no_service``, ``channel_is_archived``). A 429 carries
``Retry-After``. 403, 404 and 410 mean the hook is revoked, deleted or its channel
archived: the channel is disabled rather than failing every later message.

Everything that comes from the run (model names, exception text, metric names) goes
through :func:`escape_mrkdwn`, so ``<!channel>``, ``<@U123>`` or a ``<url|label>`` link in
a model name or an error message is shown as text and pings nobody.

Incoming webhooks cannot edit what they posted. With a bot token (``xoxb-``, scope
``chat:write``) and a channel, the channel speaks the Web API instead: ``chat.postMessage``
for every message and each run's live card, ``chat.update`` (by the kept ``ts``) to edit it.
Unlike a webhook, the Web API answers HTTP 200 for most failures, with ``{"ok": false,
"error": "<code>"}``; the code decides: a deleted message is gone (the card is posted
anew), a lost channel or a bad token disables the channel, ``ratelimited`` and server
trouble are retried. A 429 carries ``Retry-After`` in seconds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from afs_callbacks.channels._http import HttpChannel, json_object
from afs_callbacks.channels.base import DeliveryResult, Outcome
from afs_callbacks.channels.card_view import card_view, render_text
from afs_callbacks.channels.hosts import check_host
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import (
    context_fields,
    format_value,
    marked_title,
    plain_text,
    shorten,
    truncate,
    truncate_escaped,
)
from afs_callbacks.redaction import DELIMITER, MASK, SecretPattern, mask_url, redact, register_secret
from afs_callbacks.runstate import commands_from

if TYPE_CHECKING:
    import requests

    from afs_callbacks.runstate import RunState

#: Where incoming webhooks live.
SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
DEFAULT_API_URL = "https://slack.com/api"
#: The message to edit no longer exists.
GONE_ERRORS = frozenset({"message_not_found"})
#: Every later call would fail the same way: stop using the channel.
DISABLING_ERRORS = frozenset(
    {
        "account_inactive",
        "channel_not_found",
        "invalid_auth",
        "is_archived",
        "missing_scope",
        "no_permission",
        "not_authed",
        "not_in_channel",
        "org_login_required",
        "team_access_not_granted",
        "token_expired",
        "token_revoked",
    }
)
#: Slack's own trouble: try again later.
RETRY_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
#: Slack's Retry-After is whole seconds; without one, a rate limit still waits this long.
RATE_LIMIT_WAIT = 1.0

_WEBHOOK_PATH = re.compile(r"^/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+/?$")


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
            of Slack apps always post to the channel chosen when they were created. With
            ``bot_token``: the channel the bot posts to (required; an id like ``C0123``
            or a name).
        bot_token: a bot token (``xoxb-...``): post through the Web API, which can edit
            messages, so runs get a live card. A secret. Used instead of the webhook.
        api_url: the Web API's base URL (a test server).
        timeout: seconds for connecting and for reading Slack's answer (each).
        allow_http: accept a plain-http URL to a non-loopback host (a local relay).

    Raises:
        ConfigurationError: the URL is not an http(s) URL (shown masked), or neither a
            webhook nor a bot token with a channel is given.

    Example::

        manager.register_handler("slack", SlackNotifier(webhook_url=os.environ["SLACK_WEBHOOK_URL"]))
    """

    name: ClassVar[str] = "slack"
    variables: ClassVar[tuple[str, ...]] = (
        "SLACK_WEBHOOK_URL",
        "SLACK_CHANNEL",
        "SLACK_BOT_TOKEN",
        "SLACK_API_URL",
    )
    variable_aliases: ClassVar[dict[str, str]] = {
        "SLACK_WEBHOOK": "SLACK_WEBHOOK_URL",
        "SLACK_URL": "SLACK_WEBHOOK_URL",
    }
    listing_order: ClassVar[int] = 30
    hosts: ClassVar[tuple[str, ...]] = SLACK_HOSTS
    secret_patterns: ClassVar[tuple[SecretPattern, ...]] = (
        # An incoming webhook's path: /services/T000/B000/XXXX (also the bare path, which
        # is all that requests' "Max retries exceeded with url: ..." shows).
        SecretPattern(
            "services", re.compile(r"(hooks\.slack\.com(?:/|\\/)services(?:/|\\/))[^\s\"'<>]+"), r"\1" + MASK
        ),
        SecretPattern(
            "services",
            re.compile(
                rf"({DELIMITER}services{DELIMITER})T[A-Z0-9]+{DELIMITER}B[A-Z0-9]+{DELIMITER}[A-Za-z0-9]+"
            ),
            r"\1" + MASK,
        ),
    )
    #: Slack allows about one message per second per webhook.
    min_interval: ClassVar[float] = 1.0
    #: Incoming webhooks cannot upload files.
    supports_images: ClassVar[bool] = False

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
        webhook_url: str | None = None,
        channel: str | None = None,
        *,
        bot_token: str | None = None,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        register_secret(webhook_url)
        register_secret(bot_token, *_token_parts(bot_token))
        self.channel = channel.strip() if channel and channel.strip() else None
        if bot_token is None and webhook_url is None:
            raise ConfigurationError("webhook_url", "or bot_token (with channel) is needed")
        if bot_token is not None and self.channel is None:
            raise ConfigurationError("channel", "is needed with bot_token (the channel the bot posts to)")
        self.webhook_url = (
            validate_url(webhook_url, "webhook_url", allow_http=allow_http)
            if webhook_url is not None
            else None
        )
        self.api_url = validate_url(api_url.rstrip("/"), "api_url", allow_http=allow_http, secret=False)
        self._bot_token = bot_token
        # Per instance: only a bot token can edit, so only bot mode keeps live cards. The
        # class keeps the default (False), which is what a webhook-only Slack is.
        vars(self)["supports_cards"] = bot_token is not None

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Post the event; 2xx delivered, 429/5xx retried, 400/403/404/410 permanent.
        With a bot token: chat.postMessage, its ``{"ok": false}`` answers classified."""
        try:
            payload = self.payload(event)
        except Exception as error:  # a formatting bug must not become an endless retry
            return DeliveryResult.permanent(f"could not build the Slack message: {redact(error)}")
        if self._bot_token is not None:
            return self._api("chat.postMessage", payload)[0]
        assert self.webhook_url is not None
        return self.deliver(self.webhook_url, json=payload)

    def post_card(self, state: RunState) -> DeliveryResult:
        """chat.postMessage; the card's id is the answer's channel id and ``ts``."""
        if self._bot_token is None:
            return super().post_card(state)
        result, body = self._api("chat.postMessage", {"channel": self.channel, **card_message(state)})
        ts = body.get("ts")
        if not result.ok or not ts:
            return result if not result.ok else DeliveryResult.permanent("chat.postMessage gave no ts")
        channel = str(body.get("channel") or self.channel)
        return DeliveryResult(Outcome.DELIVERED, result.detail, message_id=card_id(channel, str(ts)))

    def edit_card(self, message_id: str, state: RunState) -> DeliveryResult:
        """chat.update of the card; ``message_not_found`` is gone (posted anew)."""
        if self._bot_token is None:
            return super().edit_card(message_id, state)
        assert self.channel is not None
        channel, ts = split_card_id(message_id, self.channel)
        return self._api("chat.update", {"channel": channel, "ts": ts, **card_message(state)})[0]

    @property
    def bot_token(self) -> str | None:
        """The bot token (a secret), when the channel posts through the Web API."""
        return self._bot_token

    def api(self, method: str, payload: dict[str, Any]) -> tuple[DeliveryResult, dict[str, Any]]:
        """Call a Web API method with the bot token (run control posts its questions so);
        the classified answer and its JSON."""
        return self._api(method, payload)

    def _api(self, method: str, payload: dict[str, Any]) -> tuple[DeliveryResult, dict[str, Any]]:
        """POST a Web API method with the bot token; the classified answer and its JSON."""
        headers = {
            "Authorization": f"Bearer {self._bot_token}",
            "Content-Type": "application/json; charset=utf-8",
        }
        response = self.post(f"{self.api_url}/{method}", json=payload, headers=headers)
        if isinstance(response, DeliveryResult):
            return response, {}
        return classify_api_answer(method, response, self.retry_hint(response))

    def payload(self, event: NotificationEvent) -> dict[str, Any]:
        """The JSON body for ``event``, within Slack's documented limits."""
        title = event.title.strip() or event.event_type.value.replace("_", " ")
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                # plain_text: Slack renders no markup or mentions in it, so no escaping.
                "text": {
                    "type": "plain_text",
                    "text": truncate(marked_title(event.level, title), self.HEADER_LIMIT),
                },
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": self._context_line(event)}],
            },
        ]
        if event.message.strip():
            # A failure's error line leads; only the middle of its frames gives way.
            text = shorten(event.message.strip(), self.SECTION_LIMIT, escape=escape_mrkdwn)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        blocks += self._field_sections(context_fields(event))
        blocks += self._metric_blocks(event.metrics)
        payload: dict[str, Any] = {
            "text": shorten(plain_text(event), self.TEXT_LIMIT, escape=escape_mrkdwn),
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
        """The webhook's host, its path masked, and the channel override if any; in bot
        mode the API host, the token masked and the channel."""
        if self._bot_token is not None:
            return f"{mask_url(self.api_url)} bot {MASK} {self.channel}"
        target = mask_url(self.webhook_url or "")
        return f"{target} {self.channel}" if self.channel else target

    def check(self) -> DeliveryResult:
        """Bot mode: ``auth.test`` (the token works; posts nothing). A webhook cannot be
        tested without posting to it."""
        if self._bot_token is not None:
            result, body = self._api("auth.test", {})
            if result.ok:
                return DeliveryResult.delivered(f"the bot token works (team {body.get('team', '?')})")
            return result
        return DeliveryResult.permanent(
            "Slack webhooks cannot be probed without posting;"
            " `afs-notify test --channel slack` sends a real message"
        )

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> SlackNotifier | None:
        """Build from ``SLACK_WEBHOOK_URL`` and ``SLACK_CHANNEL``, or from ``SLACK_BOT_TOKEN``
        with ``SLACK_CHANNEL`` (and ``SLACK_API_URL``), the bot mode that keeps live cards;
        None when unset.

        Raises:
            ConfigurationError: the URL is malformed, plain http to a remote host, or
                missing while ``SLACK_CHANNEL`` is set; a bot token without a channel.
        """
        settings = channel_settings(env, settings)
        url = env.url("SLACK_WEBHOOK_URL", allow_http=settings.allow_http)
        if url is not None:
            check_webhook_url(url, "SLACK_WEBHOOK_URL")
        token = env.text("SLACK_BOT_TOKEN")
        register_secret(token, *_token_parts(token))
        if token is not None and not env.text("SLACK_CHANNEL"):
            raise ConfigurationError("SLACK_CHANNEL", "is needed when SLACK_BOT_TOKEN is set")
        if url is None and token is None:
            if env.text("SLACK_CHANNEL"):
                raise ConfigurationError("SLACK_WEBHOOK_URL", "is needed when SLACK_CHANNEL is set")
            return None
        return cls(
            webhook_url=url,
            channel=env.text("SLACK_CHANNEL"),
            bot_token=token,
            api_url=env.url("SLACK_API_URL", secret=False, allow_http=settings.allow_http) or DEFAULT_API_URL,
            timeout=settings.send_timeout,
            allow_http=settings.allow_http,
        )


def check_webhook_url(url: str, variable: str) -> None:
    """A Slack incoming webhook: ``https://hooks.slack.com/services/T…/B…/<secret>``.

    Raises:
        ConfigurationError: a Slack host with another path, or a misspelt host.
    """
    if not check_host(url, variable, SLACK_HOSTS, "Slack"):
        return
    path = urlsplit(url).path
    if _WEBHOOK_PATH.match(path):
        return
    if path.startswith("/services/"):
        found = f"found {len([part for part in path[len('/services/') :].split('/') if part])}"
    else:
        found = "found no /services/"
    raise ConfigurationError(
        variable,
        "is not a Slack incoming-webhook URL: expected https://hooks.slack.com/services/ followed by "
        f"3 parts, T…/B…/<secret> ({found})",
    )


def card_message(state: RunState, *, now: float | None = None) -> dict[str, Any]:
    """A run card's ``text`` (the notification fallback) and ``blocks`` for
    chat.postMessage/chat.update, within Block Kit's limits (header 150, section 3000,
    field 2000, 10 fields a section)."""
    view = card_view(state, now=now)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": truncate(view.headline, 150)}}
    ]
    if view.progress:
        blocks.append(_mrkdwn_section(f"`{escape_mrkdwn(view.progress)}`"))
    fields = [
        {
            "type": "mrkdwn",
            "text": f"*{escape_mrkdwn(label)}*\n{truncate_escaped(value, 1800, escape_mrkdwn)}",
        }
        for label, value in view.fields
    ]
    for start in range(0, len(fields), 10):
        blocks.append({"type": "section", "fields": fields[start : start + 10]})
    if view.outcome:
        blocks.append(_mrkdwn_section(truncate_escaped(view.outcome, 3000, escape_mrkdwn)))
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": view.footer}]})
    actions = card_actions(state)
    if actions is not None:
        blocks.append(actions)
    fallback = truncate_escaped(render_text(state, limit=3000, now=now), 3000, escape_mrkdwn)
    return {"text": fallback, "blocks": blocks[:50]}


#: ``action_id`` of the control buttons (read by ``afs_callbacks.control.slack``): the
#: card's carry the run id as their ``value``, the confirmation's the command's id.
ACTION_STOP = "afs_stop"
ACTION_CHECKPOINT = "afs_checkpoint"
ACTION_STATUS = "afs_status"
ACTION_CONFIRM = "afs_confirm"
ACTION_CANCEL = "afs_cancel"


def card_actions(state: RunState) -> dict[str, Any] | None:
    """Stop / Checkpoint / Status buttons for a live card whose run takes commands through
    Slack (``AFS_CONTROL``; clicks arrive over Socket Mode); None otherwise."""
    if state.final or "slack" not in commands_from(state):
        return None
    run_id = state.run_id[:2000]
    return {
        "type": "actions",
        "block_id": "afs_control",
        "elements": [
            _button("✋ Stop", ACTION_STOP, run_id, style="danger"),
            _button("💾 Checkpoint", ACTION_CHECKPOINT, run_id),
            _button("ℹ️ Status", ACTION_STATUS, run_id),
        ],
    }


def confirm_blocks(question: str, command_id: str) -> list[dict[str, Any]]:
    """The question a stop asks first, with Yes / Cancel (the command's id as value)."""
    return [
        _mrkdwn_section(truncate_escaped(question, 2900, escape_mrkdwn)),
        {
            "type": "actions",
            "block_id": "afs_confirm",
            "elements": [
                _button("✋ Yes, stop it", ACTION_CONFIRM, command_id, style="danger"),
                _button("Cancel", ACTION_CANCEL, command_id),
            ],
        },
    ]


def _button(text: str, action_id: str, value: str, *, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text, "emoji": True},
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    return button


def _mrkdwn_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def classify_api_answer(
    method: str, response: requests.Response, hint: float | None
) -> tuple[DeliveryResult, dict[str, Any]]:
    """The outcome of a Web API call and its JSON answer (empty when there is none)."""
    body = json_object(response)
    status = response.status_code
    if status == 429:
        return DeliveryResult.retry(f"{method}: HTTP 429", max(hint or 0.0, RATE_LIMIT_WAIT)), body
    if status >= 500 or status == 408:
        return DeliveryResult.retry(f"{method}: HTTP {status}", hint), body
    if status != 200 or not body:
        disable = status in (401, 403, 404, 410)
        return DeliveryResult.permanent(f"{method}: HTTP {status}", disable_channel=disable), body
    if body.get("ok") is True:
        return DeliveryResult.delivered(f"{method}: ok"), body
    error = redact(str(body.get("error") or "unknown_error"))[:100]
    detail = f"{method}: {error}"
    if error in GONE_ERRORS:
        return DeliveryResult(Outcome.PERMANENT, detail, gone=True), body
    if error == "ratelimited":
        return DeliveryResult.retry(detail, max(hint or 0.0, RATE_LIMIT_WAIT)), body
    if error in RETRY_ERRORS:
        return DeliveryResult.retry(detail, hint), body
    return DeliveryResult.permanent(detail, disable_channel=error in DISABLING_ERRORS), body


def card_id(channel: str, ts: str) -> str:
    """A card's message id: chat.update needs the channel's id (not its name) and the ts."""
    return f"{channel}/{ts}"


def split_card_id(message_id: str, default_channel: str) -> tuple[str, str]:
    """``(channel, ts)`` from :func:`card_id`'s form (a bare ts uses ``default_channel``)."""
    channel, _, ts = message_id.rpartition("/")
    return (channel or default_channel), ts


def _token_parts(token: str | None) -> tuple[str, ...]:
    """What of a bot token is secret on its own: its last part (``xoxb-<team>-<bot>-<secret>``;
    the ids before it name the workspace and the bot, the last part grants access)."""
    secret = token.rpartition("-")[2] if token else ""
    # Slack's is 24 random characters; a short word there (a test's "xoxb-...-value") would
    # mask that word in every text afterwards.
    return (secret,) if len(secret) >= 12 and secret != token else ()
