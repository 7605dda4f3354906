"""Prometheus Alertmanager channel: training problems as alerts, resolved when they end.

Each WARNING-or-worse event is posted to ``/api/v2/alerts`` as an alert whose labels name
the run and the condition (``alertname="TrainingNaN"``, ``run_id``, ``model``, ``host``,
``severity``, ``event_type``, the event's ``key`` when it has one, plus the user's own).
Alertmanager treats an identical label set as the same alert, so repeats refresh one alert
instead of making new ones.

An alert lives until its ``endsAt``. Ongoing conditions (NaN, stalled, GPU memory high)
are posted with ``endsAt`` = now + ``resolve_timeout`` and re-posted every
``resend_interval`` by a small daemon thread while this process lives, the way Prometheus
does it: if the process dies, the alert ends on its own a few minutes later instead of
firing forever. A failed or interrupted run has nobody left to re-post, so those alerts
get a long ``failed_ttl`` instead. When the run completes or recovers, its alerts are
resolved by posting them again with ``endsAt`` = now. The alerts to resolve are asked of
Alertmanager itself (``GET /api/v2/alerts`` filtered by run), so any process can resolve
what another one fired.

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
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from afs_callbacks._log import get_logger
from afs_callbacks.channels._http import USER_AGENT, HttpChannel
from afs_callbacks.channels.base import DeliveryResult
from afs_callbacks.channels.hosts import check_self_hosted
from afs_callbacks.channels.pagerduty import ended_conditions
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import context_fields, format_metrics, truncate
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

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_LabelKey = tuple[tuple[str, str], ...]

#: Conditions whose process is ending: nobody will re-post them, so they last ``failed_ttl``.
TERMINAL_TYPES = frozenset({EventType.TRAINING_FAILED, EventType.TRAINING_INTERRUPTED})


class AlertmanagerNotifier(HttpChannel):
    """Post events as Alertmanager alerts; keep ongoing ones firing, resolve them on recovery.

    Args:
        url: Alertmanager's base URL, e.g. ``http://127.0.0.1:9093`` (credentials in the
            URL are sent as basic auth and kept secret).
        labels: extra labels on every alert (``{"team": "ml"}``); the channel's own labels
            win on a clash.
        min_level: the lowest level posted as an alert; completions and recoveries are
            always handled, to resolve.
        resend_interval: seconds between re-posts of firing alerts.
        resolve_timeout: ``endsAt`` of an ongoing alert, in seconds from each post; must be
            longer than ``resend_interval``.
        failed_ttl: ``endsAt`` of a failed or interrupted run's alert, in seconds.
        generator_url: ``generatorURL`` of every alert (a dashboard); an event's ``url``
            context field wins.
        timeout: seconds for connecting and for reading the answer (each).
        allow_http: accept a plain-http URL to a non-loopback host.

    Raises:
        ConfigurationError: a bad label name, or ``resolve_timeout <= resend_interval``.

    Example::

        AlertmanagerNotifier("http://127.0.0.1:9093", labels={"team": "ml"})
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
        url: str,
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
        if _password(url):
            register_secret(_password(url), url)
        # The sender uses the URL its check parsed (one parse: no host confusion).
        url = validate_url(url, "ALERTMANAGER_URL", allow_http=allow_http)
        self.base_url = url.rstrip("/")
        self.alerts_url = self.base_url + "/api/v2/alerts"
        self.labels = dict(labels or {})
        self.min_level = min_level
        self.resend_interval = resend_interval
        self.resolve_timeout = resolve_timeout
        self.failed_ttl = failed_ttl
        self.min_firing = max(0.0, min_firing)
        self.generator_url = generator_url
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        # Per-process state: threads and locks do not survive fork() or pickling.
        self._firing: dict[_LabelKey, dict[str, Any]] = {}
        # When each alert this process posted first reached Alertmanager (for min_firing).
        self._fired_at: dict[_LabelKey, datetime] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # Sending ------------------------------------------------------------------------

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Fire, resolve, or (below ``min_level``) accept without posting."""
        if self._pid != os.getpid():
            self._reset_runtime()
        ended = ended_conditions(event)
        if ended is None or ended:
            return self._resolve(event, ended)
        if event.level < self.min_level:
            return DeliveryResult.delivered(f"{event.level.value}: below the alert level, not sent")
        terminal = event.event_type in TERMINAL_TYPES
        lifetime = self.failed_ttl if terminal else self.resolve_timeout
        alert = self.alert(event, ends_at=_now() + timedelta(seconds=lifetime))
        key = _label_key(alert["labels"])
        with self._lock:
            previous = self._firing.get(key)
            if previous is not None:
                alert["startsAt"] = previous["startsAt"]
        result = self.deliver(self.alerts_url, json=[alert])
        if result.ok:
            with self._lock:
                self._fired_at.setdefault(key, _now())
        if result.ok and not terminal:
            with self._lock:
                self._firing[key] = alert
            self._start_refresher()
        return result

    def alert(self, event: NotificationEvent, *, ends_at: datetime) -> dict[str, Any]:
        """The alert for ``event``, firing until ``ends_at``."""
        return build_alert(event, self.labels, self.generator_url, ends_at=ends_at)

    # Resolving ----------------------------------------------------------------------

    def _resolve(self, event: NotificationEvent, ended: frozenset[EventType] | None) -> DeliveryResult:
        matchers = dict(self.labels)
        if event.run_id:
            matchers["run_id"] = event.run_id
        else:
            # No run: the same host and model, among alerts that had no run either.
            matchers.update(run_id="", host=str(event.context.get("host") or ""), model=event.model or "")
        condition = _condition(event)
        if ended is not None and condition:
            matchers["key"] = condition  # "GPU 0 is fine again" leaves GPU 1's alert firing
        with self._lock:  # no re-post may fire again what is being resolved
            local = {
                labels: alert
                for labels, alert in self._firing.items()
                if _matches(alert["labels"], matchers, ended)
            }
            for labels in local:
                del self._firing[labels]
            remote = self._firing_alerts(matchers, ended)
            if isinstance(remote, DeliveryResult):
                self._firing.update(local)
                return remote
            now = _now()
            alerts = dict(local)
            for alert in remote:
                alerts[_label_key(alert["labels"])] = _postable(alert)
            if not alerts:
                return DeliveryResult.delivered("no firing alert to resolve")
            wait = max(self._firing_left(labels, alert, now) for labels, alert in alerts.items())
            if wait > 0:
                self._firing.update(local)  # re-posted meanwhile, as before
                return DeliveryResult.later(
                    f"held: {len(alerts)} alert(s) of the run fire at least {self.min_firing:g} s"
                    f" before they are resolved ({wait:.1f} s left)",
                    wait,
                )
            stamp = _timestamp(now)
            result = self.deliver(
                self.alerts_url, json=[{**alert, "endsAt": stamp} for alert in alerts.values()]
            )
            if not result.ok:
                self._firing.update(local)
                return result
            for labels in alerts:
                self._fired_at.pop(labels, None)
        return DeliveryResult.delivered(f"resolved {len(alerts)} alert(s)")

    def _firing_left(self, labels: _LabelKey, alert: Mapping[str, Any], now: datetime) -> float:
        """Seconds ``alert`` must still fire before it may be resolved (``min_firing`` since
        it reached Alertmanager: this process's first post, else its listed ``startsAt``)."""
        fired = self._fired_at.get(labels) or _parse_time(alert.get("startsAt")) or now
        return (fired + timedelta(seconds=self.min_firing) - now).total_seconds()

    def _firing_alerts(
        self, matchers: Mapping[str, str], ended: frozenset[EventType] | None
    ) -> list[dict[str, Any]] | DeliveryResult:
        """The alerts Alertmanager holds for ``matchers`` (any process may have fired them)."""
        import requests

        filters = [f'{name}="{_quote(value)}"' for name, value in sorted(matchers.items())]
        if ended is None:
            filters.append('event_type=~".+"')  # only alerts this library made
        else:
            filters.append(f'event_type=~"{"|".join(sorted(kind.value for kind in ended))}"')
        try:
            response = self.session.get(
                self.alerts_url,
                params=[("filter", item) for item in filters],
                timeout=(self.timeout, self.timeout),
            )
        except requests.RequestException as error:
            return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
        if response.status_code >= 300:
            return self.classify(response)
        try:
            alerts = response.json()
        except ValueError:
            return DeliveryResult.retry("Alertmanager's alert list is not JSON")
        return [
            alert for alert in alerts if isinstance(alert, dict) and isinstance(alert.get("labels"), dict)
        ]

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
                    if self._firing:
                        self._refresh(session)
        finally:
            session.close()

    def _refresh(self, session: requests.Session) -> None:
        import requests

        ends = _timestamp(_now() + timedelta(seconds=self.resolve_timeout))
        alerts = [{**alert, "endsAt": ends} for alert in self._firing.values()]
        try:
            response = session.post(self.alerts_url, json=alerts, timeout=(self.timeout, self.timeout))
        except requests.RequestException as error:
            log.info("afs-callbacks: re-posting %d alert(s) failed: %s", len(alerts), redact(error))
            return
        if response.status_code >= 300:
            log.info("afs-callbacks: re-posting alerts got HTTP %d", response.status_code)

    @property
    def firing(self) -> list[dict[str, str]]:
        """Label sets this process keeps firing (re-posts), for status and tests."""
        with self._lock:
            return [dict(alert["labels"]) for alert in self._firing.values()]

    def close(self) -> None:
        """Stop re-posting (alerts then end at their ``endsAt``) and close the session."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in ("_firing", "_lock", "_stop", "_thread", "_pid"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def check(self) -> DeliveryResult:
        """``GET /-/ready``: Alertmanager is up and has loaded its configuration."""
        import requests

        try:
            response = self.session.get(self.base_url + "/-/ready", timeout=(self.timeout, self.timeout))
        except requests.RequestException as error:
            return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
        return self.classify(response)

    def describe(self) -> str:
        """The base URL (credentials masked)."""
        parts = urlsplit(self.base_url)
        return f"alertmanager {mask_url(self.base_url) if parts.password else self.base_url}"

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> AlertmanagerNotifier | None:
        """``ALERTMANAGER_URL`` and its options; None when the URL is unset.

        Raises:
            ConfigurationError: a bad URL, label list, level or interval.
        """
        settings = channel_settings(env, settings)
        register_secret(_password(env.text("ALERTMANAGER_URL")))  # user:password@ is basic auth
        url = env.url("ALERTMANAGER_URL", allow_http=settings.allow_http)
        if url is None:
            return None
        check_self_hosted(url, "ALERTMANAGER_URL")
        return cls(
            url,
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


def _password(url: str | None) -> str | None:
    try:
        return urlsplit(url or "").password
    except ValueError:
        return None  # validate_url says what is wrong with it


# The payload (pure functions: an event to an /api/v2/alerts item, label sets compared) ---


def alert_name(event_type: EventType) -> str:
    """``nan_detected`` -> ``TrainingNaN``, ``training_stalled`` -> ``TrainingStalled``."""
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

    ``extra_labels`` are the user's own (the channel's labels win on a clash);
    ``generator_url`` is used when the event has no ``url`` context field.
    """
    labels = dict(extra_labels)
    # `key` tells apart conditions of one run and type (GPU 0 vs GPU 1): separate alerts.
    for key in ("run_id", "model", "host"):
        value = event.context.get(key)
        if value is not None and str(value) != "":
            labels[key] = str(value)
    condition = _condition(event)
    if condition:
        labels["key"] = condition
    labels.update(
        alertname=alert_name(event.event_type),
        event_type=event.event_type.value,
        severity=SEVERITY[event.level],
    )
    details = [event.message] if event.message else []
    details += [f"{label}: {value}" for label, value in context_fields(event)]
    if event.metrics:
        details.append("Metrics: " + format_metrics(event.metrics))
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {
            "summary": truncate(event.title, 1024),
            "description": truncate("\n".join(details) or event.title, 8192),
        },
        "startsAt": _timestamp(event.timestamp),
        "endsAt": _timestamp(ends_at),
    }
    link = event.context.get("url") or generator_url
    if isinstance(link, str) and link.startswith(("http://", "https://")):
        alert["generatorURL"] = link
    return alert


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
