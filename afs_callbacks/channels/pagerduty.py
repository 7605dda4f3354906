"""PagerDuty channel: Events API v2 incidents that open on failures and close on recovery.

Only ERROR and CRITICAL events page someone. Each opens (or adds to) one incident per run
and condition: the ``dedup_key`` is ``afs:<run_id>:<event_type>``, so the tenth NaN of a
run lands on the incident the first one opened. When the run completes, every condition's
key of that run is resolved, but only when its outcome says it ended well
(:attr:`~afs_callbacks.outcome.Outcome.resolves_alerts`, read from the end event, never
decided here): a run that stopped on a NaN, or completed with warnings, keeps its incidents
open, and its end pages on its own key when its level reaches the trigger level. A recovery
(a resumed run, a passed re-evaluation, an event marked ``resolved=True``) resolves its own
condition.

Which keys to resolve must be known in any process (``afs-notify flush`` delivering a dead
run's backlog, a wrapper script reporting completion), so the set is deterministic: the
conditions that page by default, plus any other type this process has paged for. Resolving
a key that has no open incident is a no-op at PagerDuty.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from afs_callbacks.channels._http import HttpChannel, parse_retry_after
from afs_callbacks.channels.base import DeliveryResult, routed_level
from afs_callbacks.channels.hosts import check_self_hosted
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import DEFAULT_LEVELS, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import truncate
from afs_callbacks.outcome import Outcome
from afs_callbacks.redaction import mask, mask_url, register_secret

if TYPE_CHECKING:
    import requests

DEFAULT_API_URL = "https://events.pagerduty.com/v2/enqueue"
#: PagerDuty answers 429 without a wait hint; its limit is per minute, so wait long.
RATE_LIMIT_BACKOFF = 30.0
MAX_SUMMARY_CHARS = 1024
MAX_DEDUP_KEY_CHARS = 255
#: The Events API refuses payloads over 512 KB; stay well under it.
MAX_DETAILS_BYTES = 256_000

SEVERITY = {
    NotificationLevel.CRITICAL: "critical",
    NotificationLevel.ERROR: "error",
    NotificationLevel.WARNING: "warning",
    NotificationLevel.SUCCESS: "info",
    NotificationLevel.INFO: "info",
}

#: Conditions that page by default: resolved for every completed run, in any process.
INCIDENT_TYPES = frozenset(kind for kind, level in DEFAULT_LEVELS.items() if level >= NotificationLevel.ERROR)
#: Keys a clean end resolves besides ``INCIDENT_TYPES``: an earlier end of the same run id
#: that did not resolve (a NaN stop) paged on its own type's key.
END_KEYS = frozenset({EventType.TRAINING_COMPLETED})

#: Events that end conditions of their run: ``None`` means all of them.
RECOVERIES: Mapping[EventType, frozenset[EventType] | None] = {
    EventType.TRAINING_COMPLETED: None,
    EventType.TRAINING_RESUMED: frozenset({EventType.TRAINING_STALLED, EventType.TRAINING_INTERRUPTED}),
    EventType.EVALUATION_COMPLETED: frozenset({EventType.EVALUATION_FAILED}),
    EventType.LOSS_IMPROVED: frozenset({EventType.LOSS_DEGRADED}),
}

_ROUTING_KEY = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_MAX_REMEMBERED_RUNS = 1000


def ended_conditions(event: NotificationEvent) -> frozenset[EventType] | None:
    """The conditions of ``event``'s run that it ends: ``None`` for all of them (the run
    completed), an empty set for none. An event whose context has ``resolved=True`` ends
    its own type's condition (a monitor saying GPU memory is back to normal).

    A run's end ends them all only when its outcome resolves alerts (``completed``,
    ``stopped_early``, ...): a ``stopped_on_problem`` or ``completed_with_warnings`` end
    ends none. Shared with the Alertmanager channel, which resolves alerts on the same events.
    """
    if event.context.get("resolved") is True:
        return frozenset({event.event_type})
    outcome = Outcome.of_event(event)
    if outcome is not None and not outcome.resolves_alerts:
        return frozenset()
    return RECOVERIES.get(event.event_type, frozenset())


def dedup_key(run_id: str, event_type: EventType) -> str:
    """``afs:<run_id>:<event_type>``; a run id too long for PagerDuty's 255 is hashed."""
    key = f"afs:{run_id}:{event_type.value}"
    if len(key) <= MAX_DEDUP_KEY_CHARS:
        return key
    digest = hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:32]
    return f"afs:sha256-{digest}:{event_type.value}"


class PagerDutyNotifier(HttpChannel):
    """Trigger PagerDuty incidents for failures and resolve them when the run recovers.

    Events below ``trigger_level`` that resolve nothing are accepted and not sent (they
    count as delivered: there is nothing PagerDuty should do with them). Route the channel
    with its default minimum level, or completions never arrive to resolve incidents.

    Args:
        routing_key: the Events API v2 integration (routing) key; a secret.
        api_url: the enqueue endpoint (default ``https://events.pagerduty.com/v2/enqueue``;
            ``https://events.eu.pagerduty.com/v2/enqueue`` for EU accounts).
        source: ``payload.source`` (default: the event's host).
        trigger_level: the lowest level that opens an incident.
        timeout: seconds for connecting and for reading the answer (each).
        allow_http: accept a plain-http ``api_url`` to a non-loopback host.
        rate_limit_backoff: the least wait after a 429, in seconds.

    Raises:
        ConfigurationError: the routing key does not look like one.

    Example::

        PagerDutyNotifier(os.environ["PAGERDUTY_ROUTING_KEY"], source="gpu-node-7")
    """

    name: ClassVar[str] = "pagerduty"
    # Each event is an alert that fires or resolves on its own, in the order they happened:
    # a NaN folded into the run's end would never fire.
    tells_stories: ClassVar[bool] = False
    variables: ClassVar[tuple[str, ...]] = ("PAGERDUTY_ROUTING_KEY", "PAGERDUTY_API_URL", "PAGERDUTY_SOURCE")
    variable_aliases: ClassVar[dict[str, str]] = {"PAGERDUTY_KEY": "PAGERDUTY_ROUTING_KEY"}
    own_prefixes: ClassVar[tuple[str, ...]] = ("PAGERDUTY_",)
    listing_order: ClassVar[int] = 100
    hosts: ClassVar[tuple[str, ...]] = ("events.pagerduty.com", "events.eu.pagerduty.com")
    min_interval: ClassVar[float] = 0.5  # 120 events per minute per routing key
    permanent_statuses: ClassVar[frozenset[int]] = frozenset({400, 401, 403, 404, 413})
    disabling_statuses: ClassVar[frozenset[int]] = frozenset({401, 403, 404})

    def __init__(
        self,
        routing_key: str,
        *,
        api_url: str = DEFAULT_API_URL,
        source: str | None = None,
        trigger_level: NotificationLevel = NotificationLevel.ERROR,
        timeout: float = 10.0,
        rate_limit_backoff: float = RATE_LIMIT_BACKOFF,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        if not _ROUTING_KEY.match(routing_key):
            raise ConfigurationError(
                "PAGERDUTY_ROUTING_KEY", "must be the integration key (letters and digits, usually 32)"
            )
        register_secret(routing_key)
        self._routing_key = routing_key
        self.api_url = validate_url(api_url, "PAGERDUTY_API_URL", allow_http=allow_http, secret=False)
        self.source = source
        self.trigger_level = trigger_level
        self.rate_limit_backoff = rate_limit_backoff
        # Types this process paged for beyond INCIDENT_TYPES, per run (bounded).
        self._paged: dict[str, set[EventType]] = {}

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Trigger, resolve, or (below the trigger level) accept without sending."""
        ended = ended_conditions(event)
        if ended is None or ended:
            return self._resolve(event, ended)
        level = routed_level(event)  # an end pages at its outcome's level
        if level < self.trigger_level:
            return DeliveryResult.delivered(f"{level.value}: below the trigger level, not sent")
        result = self.deliver(self.api_url, json=self.trigger_body(event))
        if result.ok and event.run_id and event.event_type not in INCIDENT_TYPES:
            self._remember(event.run_id, event.event_type)
        return result

    def trigger_body(self, event: NotificationEvent) -> dict[str, Any]:
        """The ``trigger`` request for ``event``."""
        run_id = event.run_id
        # Without a run nothing will resolve it: one incident per event (its id makes
        # a retried delivery idempotent).
        key = dedup_key(run_id, event.event_type) if run_id else f"afs:event:{event.id}"
        summary = f"[{run_id}] {event.title}" if run_id else event.title
        # The summary is what the phone's push shows: a failure names its error there.
        error = " ".join(str(event.context.get("error") or "").split())
        if error and error not in summary:
            summary = f"{summary} — {error}"
        payload: dict[str, Any] = {
            "summary": truncate(summary, MAX_SUMMARY_CHARS),
            "source": self.source or str(event.context.get("host") or "afs-callbacks"),
            "severity": SEVERITY[routed_level(event)],
            "timestamp": event.timestamp.isoformat(),
            "class": event.event_type.value,
            "custom_details": _details(event),
        }
        if event.model:
            payload["component"] = event.model
        if run_id:
            payload["group"] = run_id
        return {
            "routing_key": self._routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "client": "afs-callbacks",
            "payload": payload,
        }

    def resolve_keys(self, run_id: str, ended: Iterable[EventType] | None) -> list[str]:
        """The dedup keys a recovery of ``run_id`` resolves (``None``: the run completed)."""
        kinds = INCIDENT_TYPES | END_KEYS | self._paged.get(run_id, set()) if ended is None else set(ended)
        return [dedup_key(run_id, kind) for kind in sorted(kinds, key=lambda k: k.value)]

    def _resolve(self, event: NotificationEvent, ended: frozenset[EventType] | None) -> DeliveryResult:
        run_id = event.run_id
        if not run_id:
            return DeliveryResult.delivered("no run id: no incident to resolve")
        keys = self.resolve_keys(run_id, ended)
        for key in keys:
            body = {"routing_key": self._routing_key, "event_action": "resolve", "dedup_key": key}
            result = self.deliver(self.api_url, json=body)
            if not result.ok:
                # The whole event is retried; resolving an already resolved key is harmless.
                return result
        if ended is None:
            self._paged.pop(run_id, None)
        return DeliveryResult.delivered(f"resolved {len(keys)} incident key(s)")

    def _remember(self, run_id: str, kind: EventType) -> None:
        if run_id not in self._paged and len(self._paged) >= _MAX_REMEMBERED_RUNS:
            self._paged.pop(next(iter(self._paged)))
        self._paged.setdefault(run_id, set()).add(kind)

    def retry_hint(self, response: requests.Response) -> float | None:
        """A 429 has no ``Retry-After``: wait at least ``rate_limit_backoff``."""
        hint = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code == 429:
            return max(hint or 0.0, self.rate_limit_backoff)
        return hint

    def describe(self) -> str:
        """The API host and the key's last characters only."""
        return f"pagerduty {mask_url(self.api_url)} key {mask(self._routing_key)}"

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> PagerDutyNotifier | None:
        """``PAGERDUTY_ROUTING_KEY`` (+ ``PAGERDUTY_API_URL``, ``PAGERDUTY_SOURCE``); None
        when the key is unset.

        Raises:
            ConfigurationError: a malformed key or URL (never echoed).
        """
        settings = channel_settings(env, settings)
        key = env.text("PAGERDUTY_ROUTING_KEY")
        if key is None:
            return None
        api_url = env.url("PAGERDUTY_API_URL", secret=False, allow_http=settings.allow_http)
        if api_url is not None:
            check_self_hosted(api_url, "PAGERDUTY_API_URL")
        return cls(
            key,
            api_url=api_url or DEFAULT_API_URL,
            source=env.text("PAGERDUTY_SOURCE"),
            timeout=settings.send_timeout,
            allow_http=settings.allow_http,
        )


def _details(event: NotificationEvent) -> dict[str, Any]:
    """``custom_details``: message, metrics and context as JSON values, within size."""
    context = event.to_dict()["context"]  # NaN/Inf and objects already made JSON-safe
    details: dict[str, Any] = {**context, "message": truncate(event.message, 16_000), "event_id": event.id}
    if len(json.dumps(details)) > MAX_DETAILS_BYTES:
        details = {
            "message": details["message"],
            "event_id": event.id,
            "note": "context too large to include; see the afs-notify history",
        }
    return details
