"""Prometheus Alertmanager channel: training problems as alerts, the fleet's dedup point.

Each WARNING-or-worse event is posted to ``/api/v2/alerts`` as an alert whose labels name
the run and the condition (``alertname="TrainingNaN"``, ``run_id``, ``model``,
``severity``, ``event_type``, a ``key`` where it names a thing such as a GPU, plus the
user's own). Alertmanager treats an identical label set as the same alert, so the labels
hold only what stays the same for the run: the same NaN reported by rank 3, by a resumed
attempt or from another host is one alert (where it happened goes in the annotations).
A host's own condition (no run) keeps ``host`` as a label: it is what tells it apart.

Alertmanager's client guidance, followed here:

* **Every peer gets every alert.** ``ALERTMANAGER_URL`` may list an HA cluster's peers,
  comma-separated; each is posted to (never load-balanced): the cluster deduplicates the
  notifications. A message is delivered when at least one peer accepted it; a peer that
  missed it gets it at the next re-post.
* **Firing alerts are re-sent while active.** Ongoing conditions (NaN, stalled, GPU
  memory high) are posted with ``endsAt`` = now + ``resolve_timeout`` and re-posted every
  ``resend_interval`` by a daemon thread while this process lives: if it dies, the alert
  ends on its own minutes later instead of firing forever. The alerts of a run that ended
  on a problem have nobody left to re-post them once the process exits, so they get a
  fixed ``endsAt`` of ``failed_ttl`` (a day) and are re-sent with it while the process
  lives.
* **Resolved means endsAt = now**, posted to every peer (a peer that missed it gets it
  again for :data:`RESOLVED_RESEND` seconds).

How a run ended decides what happens to its alerts, read from the end event's outcome
(:class:`~afs_callbacks.outcome.Outcome`, never decided here): only a clean success
(``resolves_alerts``) resolves them. Any other end (a NaN stop, a failure, a kill, a run
that completed with warnings) keeps them firing for ``failed_ttl`` and fires its own
alert (``TrainingStoppedOnProblem``, ``TrainingFailed``, ``TrainingKilled``...) when at
or above the alert level. The alerts to resolve or keep are asked of Alertmanager itself
(``GET /api/v2/alerts`` filtered by run), so any process can end what another one fired.

An alert is never resolved before it has fired for ``min_firing`` seconds (default 60,
longer than Alertmanager's default ``group_wait`` of 30 s): a run that goes NaN and ends a
second later would otherwise resolve its alert before Alertmanager's first notification,
and no receiver would ever hear of it. The resolving event is held in the outbox until
then (:meth:`DeliveryResult.later`: the channel's other messages go on; the alert keeps
being re-posted meanwhile). A post cannot shorten a firing alert's ``endsAt`` instead:
Alertmanager keeps the later one of two unresolved posts. If the process exits first, the
alert ends on its own within ``resolve_timeout``, and the held event resolves whatever is
left when a later process sends it. The sender sends a run's events in the order they
happened (the NaN alert before the run's end, a retried alert before anything after it:
:mod:`afs_callbacks.delivery.priority`), so the end never resolves an alert Alertmanager
has not received.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from afs_callbacks._log import get_logger
from afs_callbacks.channels._http import USER_AGENT, HttpChannel
from afs_callbacks.channels.base import DeliveryResult
from afs_callbacks.channels.base import Outcome as Delivery
from afs_callbacks.channels.hosts import check_self_hosted
from afs_callbacks.channels.pagerduty import ended_conditions
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import context_fields, format_metrics, truncate
from afs_callbacks.outcome import Outcome as RunOutcome
from afs_callbacks.redaction import mask_url, redact, register_secret

if TYPE_CHECKING:
    import requests

log = get_logger(__name__)

SEVERITY = {
    NotificationLevel.CRITICAL: "critical",
    NotificationLevel.ERROR: "error",
    NotificationLevel.WARNING: "warning",
    NotificationLevel.SUCCESS: "info",
    NotificationLevel.INFO: "info",
}

#: ``alertname`` where the event type's CamelCase would read badly.
ALERT_NAMES: Mapping[EventType, str] = {
    EventType.NAN_DETECTED: "TrainingNaN",
    EventType.OUT_OF_MEMORY: "TrainingOutOfMemory",
    EventType.ERROR_OCCURRED: "TrainingError",
    EventType.GPU_MEMORY: "GPUMemoryHigh",
    EventType.GPU_UTILIZATION: "GPUUtilization",
    EventType.GPU_TEMPERATURE: "GPUTemperatureHigh",
    EventType.HOST_MEMORY: "HostMemoryHigh",
    EventType.DISK_SPACE: "DiskSpaceLow",
}

#: ``alertname`` of a run's end that does not resolve its alerts, by outcome (a plain
#: failure keeps its event type's name: ``TrainingFailed``, ``TrainingOutOfMemory``).
OUTCOME_ALERT_NAMES: Mapping[RunOutcome, str] = {
    RunOutcome.COMPLETED_WITH_WARNINGS: "TrainingCompletedWithWarnings",
    RunOutcome.STOPPED_ON_PROBLEM: "TrainingStoppedOnProblem",
    RunOutcome.STOPPED_BY_RULE: "TrainingStoppedByRule",
    RunOutcome.INTERRUPTED: "TrainingInterrupted",
    RunOutcome.PREEMPTED: "TrainingPreempted",
    RunOutcome.KILLED: "TrainingKilled",
}

#: Types whose ``key`` the tracker makes per occurrence (an epoch, a step) to tell
#: repeats apart: as a label it would make each epoch's degradation its own alert.
OCCURRENCE_KEYED = frozenset(
    {
        EventType.EPOCH_COMPLETED,
        EventType.BATCH_PROCESSED,
        EventType.CHECKPOINT_SAVED,
        EventType.EVALUATION_COMPLETED,
        EventType.EVALUATION_FAILED,
        EventType.LOSS_IMPROVED,
        EventType.LOSS_DEGRADED,
    }
)

#: Seconds a resolution is posted again to a peer that missed it (Prometheus: 15 min).
RESOLVED_RESEND = 900.0
MAX_SUMMARY = 1024
MAX_DESCRIPTION = 8192

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LabelKey = tuple[tuple[str, str], ...]
_MAX_ENDED_RUNS = 1000


@dataclass
class _Held:
    """An alert this process keeps posting.

    ``ends_at`` None: ongoing, each post says now + ``resolve_timeout``; else the fixed
    ``endsAt`` (a run's end that keeps it firing; now, for a resolution). ``peers``: the
    peers still to tell (None: every peer, at every re-post).
    """

    alert: dict[str, Any]
    ends_at: datetime | None = None
    peers: frozenset[str] | None = None

    def firing(self, now: datetime) -> bool:
        return self.ends_at is None or self.ends_at > now


class AlertmanagerNotifier(HttpChannel):
    """Post events as Alertmanager alerts to every peer; keep them firing; resolve them on
    a clean end or recovery.

    Args:
        url: Alertmanager's base URL, e.g. ``http://127.0.0.1:9093``, or several (a list,
            or one string separated by commas): an HA cluster's peers, each posted to.
            Credentials in a URL are sent as basic auth and kept secret.
        labels: extra labels on every alert (``{"team": "ml"}``); the channel's own labels
            win on a clash.
        min_level: the lowest level posted as an alert; ends and recoveries are always
            handled, to resolve or keep alerts.
        resend_interval: seconds between re-posts of firing alerts.
        resolve_timeout: ``endsAt`` of an ongoing alert, in seconds from each post; must be
            longer than ``resend_interval``.
        failed_ttl: ``endsAt`` of the alerts of a run that ended on a problem, in seconds.
        min_firing: seconds an alert fires at least before an event resolves it.
        generator_url: ``generatorURL`` of every alert (a dashboard); an event's ``url``
            context field wins.
        timeout: seconds for connecting and for reading the answer (each).
        allow_http: accept a plain-http URL to a non-loopback host.

    Raises:
        ConfigurationError: no URL or a bad one, a bad label name, or
            ``resolve_timeout <= resend_interval``.

    Example::

        AlertmanagerNotifier("http://am-0:9093,http://am-1:9093", labels={"team": "ml"})
    """

    name: ClassVar[str] = "alertmanager"
    # Each event is an alert that fires or resolves on its own, in the order they happened:
    # a NaN folded into the run's end would never fire.
    tells_stories: ClassVar[bool] = False
    variables: ClassVar[tuple[str, ...]] = (
        "ALERTMANAGER_URL",
        "ALERTMANAGER_LABELS",
        "ALERTMANAGER_ALERT_LEVEL",
        "ALERTMANAGER_RESEND_INTERVAL",
        "ALERTMANAGER_RESOLVE_TIMEOUT",
        "ALERTMANAGER_FAILED_TTL",
        "ALERTMANAGER_MIN_FIRING",
        "ALERTMANAGER_GENERATOR_URL",
    )
    own_prefixes: ClassVar[tuple[str, ...]] = ("ALERTMANAGER_",)
    listing_order: ClassVar[int] = 110
    permanent_statuses: ClassVar[frozenset[int]] = frozenset({400, 401, 403, 404, 413, 422})
    disabling_statuses: ClassVar[frozenset[int]] = frozenset({401, 403, 404})

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        min_level: NotificationLevel = NotificationLevel.WARNING,
        resend_interval: float = 60.0,
        resolve_timeout: float = 300.0,
        failed_ttl: float = 86_400.0,
        min_firing: float = 60.0,
        generator_url: str | None = None,
        timeout: float = 10.0,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        for name in labels or {}:
            if not _LABEL_NAME.match(name):
                raise ConfigurationError("ALERTMANAGER_LABELS", f"{name!r} is not a valid label name")
        if resolve_timeout <= resend_interval:
            raise ConfigurationError(
                "ALERTMANAGER_RESOLVE_TIMEOUT",
                f"must be longer than ALERTMANAGER_RESEND_INTERVAL ({resend_interval:g} s), "
                f"got {resolve_timeout:g} s",
            )
        urls = split_urls(url)
        if not urls:
            raise ConfigurationError("ALERTMANAGER_URL", "no Alertmanager URL given")
        peers = []
        for item in urls:
            password = _password(item)
            if password:
                register_secret(password, item)
            # The sender uses the URL its check parsed (one parse: no host confusion).
            peers.append(validate_url(item, "ALERTMANAGER_URL", allow_http=allow_http).rstrip("/"))
        #: Each peer's base URL, in the order given.
        self.peers: tuple[str, ...] = tuple(dict.fromkeys(peers))
        self.labels = dict(labels or {})
        self.min_level = min_level
        self.resend_interval = resend_interval
        self.resolve_timeout = resolve_timeout
        self.failed_ttl = failed_ttl
        self.min_firing = max(0.0, min_firing)
        self.generator_url = generator_url
        self._reset_runtime()

    @property
    def base_url(self) -> str:
        """The first peer's base URL."""
        return self.peers[0]

    @property
    def alerts_url(self) -> str:
        """The first peer's ``/api/v2/alerts``."""
        return self.peers[0] + "/api/v2/alerts"

    def _reset_runtime(self) -> None:
        # Per-process state: threads and locks do not survive fork() or pickling.
        self._held: dict[_LabelKey, _Held] = {}
        self._ended_runs: OrderedDict[str, datetime] = OrderedDict()  # run id -> its alerts' end
        # When each alert this process posted first reached Alertmanager (for min_firing).
        self._fired_at: dict[_LabelKey, datetime] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # Sending ------------------------------------------------------------------------

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Fire, keep or resolve alerts for ``event`` (below ``min_level``: accept it
        without posting)."""
        if self._pid != os.getpid():
            self._reset_runtime()
        outcome = RunOutcome.of_event(event)
        if outcome is not None:
            if outcome.resolves_alerts:
                return self._resolve(event, None)
            return self._end(event, outcome)
        if event.event_type in (EventType.TRAINING_STARTED, EventType.TRAINING_RESUMED) and event.run_id:
            with self._lock:
                self._ended_runs.pop(event.run_id, None)  # a new attempt: its alerts are ongoing again
        ended = ended_conditions(event)
        if ended:
            return self._resolve(event, ended)
        if event.level < self.min_level:
            return DeliveryResult.delivered(f"{event.level.value}: below the alert level, not sent")
        with self._lock:
            fixed = self._ended_runs.get(event.run_id or "")
        alert = self.alert(event, ends_at=fixed or _now() + timedelta(seconds=self.resolve_timeout))
        key = _label_key(alert["labels"])
        with self._lock:
            previous = self._held.get(key)
            if previous is not None and previous.firing(_now()):
                alert["startsAt"] = previous.alert["startsAt"]
        result, _ = self._post_all([alert])
        if result.ok:
            with self._lock:
                self._held[key] = _Held(alert, fixed)
                self._fired_at.setdefault(key, _now())
            self._start_refresher()
        return result

    def alert(self, event: NotificationEvent, *, ends_at: datetime) -> dict[str, Any]:
        """The alert for ``event``, firing until ``ends_at``."""
        return build_alert(event, self.labels, self.generator_url, ends_at=ends_at)

    # A run's end that does not resolve: keep its alerts firing, fire its own --------------

    def _end(self, event: NotificationEvent, outcome: RunOutcome) -> DeliveryResult:
        now = _now()
        ends = now + timedelta(seconds=self.failed_ttl)
        matchers = self._run_matchers(event)
        with self._lock:
            alerts = {
                key: held.alert
                for key, held in self._held.items()
                if held.firing(now) and _matches(held.alert["labels"], matchers, None)
            }
            remote = self._firing_alerts(matchers, None)
            if not isinstance(remote, DeliveryResult):  # unreachable: the end goes anyway
                for listed in remote:
                    alerts.setdefault(_label_key(listed["labels"]), _postable(listed))
            if event.level >= self.min_level:
                own = self.alert(event, ends_at=ends)
                own["annotations"]["outcome"] = outcome.label
                alerts[_label_key(own["labels"])] = own
            if event.run_id:
                self._ended_runs[event.run_id] = ends
                while len(self._ended_runs) > _MAX_ENDED_RUNS:
                    self._ended_runs.popitem(last=False)
            if not alerts:
                return DeliveryResult.delivered(f"{outcome.label}: no alert firing, below the alert level")
            kept = {key: {**alert, "endsAt": _timestamp(ends)} for key, alert in alerts.items()}
            result, _ = self._post_all(list(kept.values()))
            if result.ok:
                for key, alert in kept.items():
                    self._held[key] = _Held(alert, ends)
        if result.ok:
            self._start_refresher()
            return DeliveryResult.delivered(f"{outcome.label}: {len(kept)} alert(s) firing; {result.detail}")
        return result

    # Resolving ----------------------------------------------------------------------

    def _resolve(self, event: NotificationEvent, ended: frozenset[EventType] | None) -> DeliveryResult:
        matchers = self._run_matchers(event)
        condition = _condition(event)
        if event.context.get("resolved") is True and condition:
            matchers["key"] = condition  # "GPU 0 is fine again" leaves GPU 1's alert firing
        now = _now()
        with self._lock:  # no re-post may fire again what is being resolved
            local = {
                key: held.alert
                for key, held in self._held.items()
                if held.firing(now) and _matches(held.alert["labels"], matchers, ended)
            }
            remote = self._firing_alerts(matchers, ended)
            if isinstance(remote, DeliveryResult):
                return remote
            at = _timestamp(now)
            resolved = {key: {**alert, "endsAt": at} for key, alert in local.items()}
            for listed in remote:
                resolved[_label_key(listed["labels"])] = {**_postable(listed), "endsAt": at}
            if not resolved:
                return DeliveryResult.delivered("no firing alert to resolve")
            wait = max(self._firing_left(key, alert, now) for key, alert in resolved.items())
            if wait > 0:  # the alerts stay held (and re-posted) meanwhile
                return DeliveryResult.later(
                    f"held: {len(resolved)} alert(s) of the run fire at least {self.min_firing:g} s"
                    f" before they are resolved ({wait:.1f} s left)",
                    wait,
                )
            result, missed = self._post_all(list(resolved.values()))
            if not result.ok:
                return result
            for key, alert in resolved.items():
                self._fired_at.pop(key, None)
                if missed:  # told again until that peer takes it (or RESOLVED_RESEND passes)
                    self._held[key] = _Held(alert, now, frozenset(missed))
                else:
                    self._held.pop(key, None)
        if missed:
            self._start_refresher()
        return DeliveryResult.delivered(f"resolved {len(resolved)} alert(s); {result.detail}")

    def _firing_left(self, key: _LabelKey, alert: Mapping[str, Any], now: datetime) -> float:
        """Seconds ``alert`` must still fire before it may be resolved (``min_firing`` since
        it reached Alertmanager: this process's first post, else its listed ``startsAt``)."""
        fired = self._fired_at.get(key) or _parse_time(alert.get("startsAt")) or now
        return (fired + timedelta(seconds=self.min_firing) - now).total_seconds()

    def _run_matchers(self, event: NotificationEvent) -> dict[str, str]:
        """Labels that pick the alerts of ``event``'s run (or, without a run, its host's)."""
        matchers = dict(self.labels)
        if event.run_id:
            matchers["run_id"] = event.run_id
        else:
            matchers.update(run_id="", host=str(event.context.get("host") or ""), model=event.model or "")
        return matchers

    def _firing_alerts(
        self, matchers: Mapping[str, str], ended: frozenset[EventType] | None
    ) -> list[dict[str, Any]] | DeliveryResult:
        """The alerts the peers hold for ``matchers`` (any process may have fired them):
        those of every peer that answered; a failure only when none did."""
        import requests

        filters = [f'{name}="{_quote(value)}"' for name, value in sorted(matchers.items())]
        if ended is None:
            filters.append('event_type=~".+"')  # only alerts this library made
        else:
            filters.append(f'event_type=~"{"|".join(sorted(kind.value for kind in ended))}"')
        found: dict[_LabelKey, dict[str, Any]] = {}
        failure: DeliveryResult | None = None
        answered = False
        for peer in self.peers:
            try:
                response = self.session.get(
                    peer + "/api/v2/alerts",
                    params=[("filter", item) for item in filters],
                    timeout=(self.timeout, self.timeout),
                )
            except requests.RequestException as error:
                failure = failure or DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
                continue
            if response.status_code >= 300:
                failure = failure or self.classify(response)
                continue
            try:
                alerts = response.json()
            except ValueError:
                failure = failure or DeliveryResult.retry("Alertmanager's alert list is not JSON")
                continue
            answered = True
            for alert in alerts if isinstance(alerts, list) else []:
                if isinstance(alert, dict) and isinstance(alert.get("labels"), dict):
                    found.setdefault(_label_key(alert["labels"]), alert)
        if not answered and failure is not None:
            return failure
        return list(found.values())

    # Posting to every peer ------------------------------------------------------------

    def _post_all(
        self, alerts: list[dict[str, Any]], peers: Iterable[str] | None = None, session: Any = None
    ) -> tuple[DeliveryResult, list[str]]:
        """POST ``alerts`` to each peer; delivered when one took them. Returns the result
        and the peers that did not."""
        import requests

        results: dict[str, DeliveryResult] = {}
        for peer in self.peers if peers is None else peers:
            url = peer + "/api/v2/alerts"
            if session is None:
                results[peer] = self.deliver(url, json=alerts)
                continue
            try:
                response = session.post(url, json=alerts, timeout=(self.timeout, self.timeout))
            except requests.RequestException as error:
                results[peer] = DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
                continue
            results[peer] = self.classify(response)
        missed = [peer for peer, result in results.items() if not result.ok]
        if len(results) == 1:
            return next(iter(results.values())), missed
        failures = "; ".join(f"{_shown(peer)}: {results[peer].detail}" for peer in missed)
        if len(missed) < len(results):
            took = len(results) - len(missed)
            detail = f"{took} of {len(results)} peers took it" + (f" ({failures})" if failures else "")
            return DeliveryResult.delivered(detail), missed
        retries = [result for result in results.values() if result.outcome is Delivery.RETRY]
        if retries:
            waits = [result.retry_after for result in retries if result.retry_after is not None]
            return DeliveryResult.retry(failures, min(waits) if waits else None), missed
        disable = all(result.disable_channel for result in results.values())
        return DeliveryResult.permanent(failures, disable_channel=disable), missed

    # Re-posting ---------------------------------------------------------------------

    def _start_refresher(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._refresh_loop, name="afs-alertmanager-refresh", daemon=True
            )
            self._thread.start()

    def _refresh_loop(self) -> None:
        import requests

        # Its own session: requests sessions are not meant to be shared across threads.
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        try:
            while not self._stop.wait(self.resend_interval):
                with self._lock:
                    if self._held:
                        self._refresh(session)
        finally:
            session.close()

    def _refresh(self, session: requests.Session) -> None:
        """Post every held alert again: firing ones to every peer, a resolution to the
        peers that missed it. Failures are logged; the next round tries again."""
        now = _now()
        ongoing_end = _timestamp(now + timedelta(seconds=self.resolve_timeout))
        groups: dict[frozenset[str] | None, list[tuple[_LabelKey, dict[str, Any]]]] = {}
        for key, held in list(self._held.items()):
            ends = held.ends_at
            if (
                ends is not None
                and ends <= now
                and (held.peers is None or (now - ends).total_seconds() > RESOLVED_RESEND)
            ):
                # Ended at its own endsAt, or a resolution every peer had time to get. Posting
                # it again could end what another process fired anew with the same labels.
                del self._held[key]
                continue
            alert = {
                **held.alert,
                "endsAt": ongoing_end if held.ends_at is None else _timestamp(held.ends_at),
            }
            peers = None if held.firing(now) else held.peers
            groups.setdefault(peers, []).append((key, alert))
        for peers, items in groups.items():
            result, missed = self._post_all([alert for _, alert in items], peers, session)
            if not result.ok or missed:
                log.info("afs-callbacks: re-posting %d alert(s): %s", len(items), result.detail)
            if peers is not None:  # resolutions: forget them where every peer has them now
                for key, _ in items:
                    told = self._held.get(key)
                    if told is not None and told.peers is not None:
                        left = told.peers & frozenset(missed)
                        if left:
                            told.peers = left
                        else:
                            del self._held[key]

    @property
    def firing(self) -> list[dict[str, str]]:
        """Label sets this process keeps firing (re-posts), for status and tests."""
        now = _now()
        with self._lock:
            return [dict(held.alert["labels"]) for held in self._held.values() if held.firing(now)]

    def close(self) -> None:
        """Stop re-posting (alerts then end at their ``endsAt``) and close the session."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in ("_held", "_ended_runs", "_fired_at", "_lock", "_stop", "_thread", "_pid"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def check(self) -> DeliveryResult:
        """``GET /-/ready`` on every peer: each is up and has loaded its configuration."""
        import requests

        problems = []
        for peer in self.peers:
            try:
                response = self.session.get(peer + "/-/ready", timeout=(self.timeout, self.timeout))
            except requests.RequestException as error:
                problems.append((peer, DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")))
                continue
            result = self.classify(response)
            if not result.ok:
                problems.append((peer, result))
        if not problems:
            return DeliveryResult.delivered(f"{len(self.peers)} peer(s) ready")
        if len(self.peers) == 1:
            return problems[0][1]
        detail = "; ".join(f"{_shown(peer)}: {result.detail}" for peer, result in problems)
        return DeliveryResult.retry(f"{len(problems)} of {len(self.peers)} peers not ready: {detail}")

    def describe(self) -> str:
        """The peers' base URLs (credentials masked)."""
        return "alertmanager " + ", ".join(_shown(peer) for peer in self.peers)

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> AlertmanagerNotifier | None:
        """``ALERTMANAGER_URL`` (one URL, or an HA cluster's peers separated by commas) and
        its options; None when the URL is unset.

        Raises:
            ConfigurationError: a bad URL, label list, level or interval.
        """
        settings = channel_settings(env, settings)
        urls = split_urls(env.text("ALERTMANAGER_URL"))
        for url in urls:
            register_secret(_password(url))  # user:password@ is basic auth
        if not urls:
            return None
        for url in urls:
            check_self_hosted(
                validate_url(url, "ALERTMANAGER_URL", allow_http=settings.allow_http), "ALERTMANAGER_URL"
            )
        return cls(
            urls,
            labels=parse_labels(env.text("ALERTMANAGER_LABELS")),
            min_level=env.level("ALERTMANAGER_ALERT_LEVEL", NotificationLevel.WARNING)
            or NotificationLevel.WARNING,
            resend_interval=env.number("ALERTMANAGER_RESEND_INTERVAL", 60.0, minimum=1.0) or 60.0,
            resolve_timeout=env.number("ALERTMANAGER_RESOLVE_TIMEOUT", 300.0, minimum=2.0) or 300.0,
            failed_ttl=env.number("ALERTMANAGER_FAILED_TTL", 86_400.0, minimum=60.0) or 86_400.0,
            min_firing=env.number("ALERTMANAGER_MIN_FIRING", 60.0, minimum=0.0) or 0.0,
            generator_url=env.url("ALERTMANAGER_GENERATOR_URL", secret=False, allow_http=settings.allow_http),
            timeout=settings.send_timeout,
            allow_http=settings.allow_http,
        )


def split_urls(value: str | Sequence[str] | None) -> list[str]:
    """``"http://a:9093, http://b:9093"`` (or a list of them) -> the URLs, blanks dropped.
    A comma inside a password is written ``%2C``."""
    if value is None:
        return []
    items = (
        value.split(",") if isinstance(value, str) else [part for item in value for part in item.split(",")]
    )
    return [item.strip() for item in items if item.strip()]


def _password(url: str | None) -> str | None:
    try:
        return urlsplit(url or "").password
    except ValueError:
        return None  # validate_url says what is wrong with it


def _shown(peer: str) -> str:
    """A peer's base URL as logs and details show it (credentials masked)."""
    return mask_url(peer) if _password(peer) else peer


# The payload (pure functions: an event to an /api/v2/alerts item, label sets compared) ---


def alert_name(event_type: EventType, outcome: RunOutcome | None = None) -> str:
    """``nan_detected`` -> ``TrainingNaN``, ``training_stalled`` -> ``TrainingStalled``; a
    run's end by its outcome (``stopped_on_problem`` -> ``TrainingStoppedOnProblem``)."""
    if outcome is not None and outcome in OUTCOME_ALERT_NAMES:
        return OUTCOME_ALERT_NAMES[outcome]
    if event_type in ALERT_NAMES:
        return ALERT_NAMES[event_type]
    name = "".join(part.capitalize() for part in event_type.value.split("_"))
    return name if name.startswith(("Training", "Evaluation")) else "Training" + name


def parse_labels(text: str | None, variable: str = "ALERTMANAGER_LABELS") -> dict[str, str]:
    """``"team=ml, env=prod"`` -> ``{"team": "ml", "env": "prod"}``.

    Raises:
        ConfigurationError: an item is not ``name=value`` or the name is not a valid label.
    """
    labels: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _LABEL_NAME.match(name) or not value:
            raise ConfigurationError(variable, f"expected name=value pairs separated by commas, got {item!r}")
        labels[name] = value
    return labels


def build_alert(
    event: NotificationEvent,
    extra_labels: Mapping[str, str],
    generator_url: str | None,
    *,
    ends_at: datetime,
) -> dict[str, Any]:
    """The alert for ``event``, firing until ``ends_at``.

    Labels are what identifies the condition and stays the same across ranks, resumes and
    hosts; ``extra_labels`` are the user's own (the channel's labels win on a clash);
    ``generator_url`` is used when the event has no ``url`` context field.
    """
    labels = dict(extra_labels)
    run_id = event.context.get("run_id")
    has_run = run_id is not None and str(run_id) != ""
    # Without a run, the host is what tells one machine's disk alert from another's.
    for key in ("run_id", "model") if has_run else ("model", "host"):
        value = event.context.get(key)
        if value is not None and str(value) != "":
            labels[key] = str(value)
    condition = _condition(event)
    if condition and event.event_type not in OCCURRENCE_KEYED:
        labels["key"] = condition  # which GPU, which disk: separate alerts
    labels.update(
        alertname=alert_name(event.event_type, RunOutcome.of_event(event)),
        event_type=event.event_type.value,
        severity=SEVERITY[event.level],
    )
    annotations = {
        "summary": truncate(event.title, MAX_SUMMARY),
        "description": describe(event),
    }
    error = error_line(event)
    if error:
        annotations["error"] = truncate(error, MAX_SUMMARY)
    host = event.context.get("host")
    if has_run and host:
        annotations["host"] = str(host)
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _timestamp(event.timestamp),
        "endsAt": _timestamp(ends_at),
    }
    link = event.context.get("url") or generator_url
    if isinstance(link, str) and link.startswith(("http://", "https://")):
        alert["generatorURL"] = link
    return alert


def describe(event: NotificationEvent) -> str:
    """``annotations.description``: the error line first (a receiver's template may show
    only the top), then the message, the run's details and metrics, within
    :data:`MAX_DESCRIPTION` characters (what is cut is the end)."""
    lines = []
    error = error_line(event)
    message = event.message or ""
    if error and not message.startswith(error):
        lines.append(error)
    if message:
        lines.append(message)
    lines += [f"{label}: {value}" for label, value in context_fields(event)]
    if event.metrics:
        lines.append("Metrics: " + format_metrics(event.metrics))
    return truncate("\n".join(lines) or event.title, MAX_DESCRIPTION)


def error_line(event: NotificationEvent) -> str:
    """``"RuntimeError: CUDA error"`` from a failure's ``error_type`` and ``error``, or ``""``."""
    error = str(event.context.get("error") or "").strip()
    kind = str(event.context.get("error_type") or "").strip()
    if not error:
        return kind
    return error if not kind or error.startswith(kind) else f"{kind}: {error}"


def _now() -> datetime:
    """The current UTC time."""
    return datetime.now(timezone.utc)


def _timestamp(moment: datetime) -> str:
    """``moment`` as Alertmanager's RFC 3339 UTC text, to the millisecond."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: object) -> datetime | None:
    """An RFC 3339 time Alertmanager lists (``...Z``, any sub-second digits), or None."""
    if not isinstance(text, str) or not text:
        return None
    head, dot, rest = text.replace("Z", "+00:00").partition(".")
    if dot:  # fromisoformat takes at most 6 digits of a second; Alertmanager writes up to 9
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[:digits][:6].ljust(6, "0") + rest[digits:]
        head = f"{head}.{rest}"
    try:
        moment = datetime.fromisoformat(head)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _label_key(labels: Mapping[str, str]) -> _LabelKey:
    """A hashable, order-free identity of a label set (Alertmanager's alert identity)."""
    return tuple(sorted(labels.items()))


def _matches(
    labels: Mapping[str, str], matchers: Mapping[str, str], ended: Iterable[EventType] | None
) -> bool:
    """Whether ``labels`` match every matcher and (when given) one of the ``ended`` types."""
    # An absent label equals "" in Alertmanager's matching; do the same here.
    if any(labels.get(name, "") != value for name, value in matchers.items()):
        return False
    return ended is None or labels.get("event_type") in {kind.value for kind in ended}


def _postable(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a listed alert that can be posted back."""
    keep = ("labels", "annotations", "startsAt", "generatorURL")
    return {key: alert[key] for key in keep if alert.get(key)}


def _quote(value: str) -> str:
    """``value`` escaped for a double-quoted Alertmanager filter matcher."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _condition(event: NotificationEvent) -> str:
    """The event's repeat key (which GPU, which disk), or ``""``: the field, else a ``key``
    a caller put in the context by hand (an event built before the field existed)."""
    value = event.key or event.context.get("key")
    return "" if value is None else str(value)
