"""Slack's Web API answers, for :class:`~afs_callbacks.channels.slack.SlackNotifier`'s
bot-token mode (``chat.postMessage``, ``chat.update``, ``auth.test``).

Unlike an incoming webhook, the Web API answers HTTP 200 for most failures, with
``{"ok": false, "error": "<code>"}``; the code decides: a deleted message is gone (the
card is posted anew), a lost channel or a bad token disables the channel, ``ratelimited``
and server trouble are retried. A 429 carries ``Retry-After`` in seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from afs_callbacks.channels.base import DeliveryResult, Outcome
from afs_callbacks.redaction import redact

if TYPE_CHECKING:
    import requests

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


def classify(
    method: str, response: requests.Response, hint: float | None
) -> tuple[DeliveryResult, dict[str, Any]]:
    """The outcome of a Web API call and its JSON answer (empty when there is none)."""
    body = _json(response)
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


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
