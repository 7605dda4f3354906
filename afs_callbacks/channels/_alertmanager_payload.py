"""Alertmanager payloads: alert names, labels, the alert body and label matching.

Kept apart from :mod:`afs_callbacks.channels.alertmanager` so that module holds the
delivery side (posting, resolving, the re-post thread) and this one only the pure
functions that turn an event into an ``/api/v2/alerts`` item and compare label sets;
nothing here does I/O or holds state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import context_fields, format_metrics, truncate

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

LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

LabelKey = tuple[tuple[str, str], ...]


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
        if not sep or not LABEL_NAME.match(name) or not value:
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
    condition = condition_of(event)
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
        "startsAt": timestamp(event.timestamp),
        "endsAt": timestamp(ends_at),
    }
    link = event.context.get("url") or generator_url
    if isinstance(link, str) and link.startswith(("http://", "https://")):
        alert["generatorURL"] = link
    return alert


def now() -> datetime:
    """The current UTC time."""
    return datetime.now(timezone.utc)


def timestamp(moment: datetime) -> str:
    """``moment`` as Alertmanager's RFC 3339 UTC text, to the millisecond."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def label_key(labels: Mapping[str, str]) -> LabelKey:
    """A hashable, order-free identity of a label set (Alertmanager's alert identity)."""
    return tuple(sorted(labels.items()))


def matches(
    labels: Mapping[str, str], matchers: Mapping[str, str], ended: Iterable[EventType] | None
) -> bool:
    """Whether ``labels`` match every matcher and (when given) one of the ``ended`` types."""
    # An absent label equals "" in Alertmanager's matching; do the same here.
    if any(labels.get(name, "") != value for name, value in matchers.items()):
        return False
    return ended is None or labels.get("event_type") in {kind.value for kind in ended}


def postable(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a listed alert that can be posted back."""
    keep = ("labels", "annotations", "startsAt", "generatorURL")
    return {key: alert[key] for key in keep if alert.get(key)}


def quote(value: str) -> str:
    """``value`` escaped for a double-quoted Alertmanager filter matcher."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def condition_of(event: NotificationEvent) -> str:
    """The event's repeat key (which GPU, which disk), or ``""``: the field, else a ``key``
    a caller put in the context by hand (an event built before the field existed)."""
    value = event.key or event.context.get("key")
    return "" if value is None else str(value)
