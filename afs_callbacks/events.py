"""What a notification is: its type, its level and the event value that travels to channels.

The vocabulary: :class:`NotificationLevel`, :class:`EventType`, each type's default level
(:data:`DEFAULT_LEVELS`) and the terminal/urgent/progress classification the delivery order
and verbosity use. The value: a :class:`NotificationEvent` is immutable and is written to
the outbox as JSON before any channel sees it, so everything in it must survive
``to_dict()``/``from_dict()``. Nothing here imports the rest of the package.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any


class NotificationLevel(str, Enum):
    """How serious an event is, from INFO (lowest) to CRITICAL (highest).

    Levels compare by severity, so routing can say ``event.level >= NotificationLevel.ERROR``.
    """

    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def severity(self) -> int:
        """Position of the level in the order INFO < SUCCESS < WARNING < ERROR < CRITICAL."""
        return _SEVERITY[self]

    @classmethod
    def parse(cls, value: str | NotificationLevel) -> NotificationLevel:
        """Read a level from its name in any case (``"error"``, ``"ERROR"``).

        Raises:
            ValueError: the name is not a level; the message lists the valid names.
        """
        if isinstance(value, NotificationLevel):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(level.value for level in cls)
            raise ValueError(f"unknown level {value!r}; expected one of {names}") from None

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, NotificationLevel):
            return NotImplemented
        return self.severity < other.severity

    def __le__(self, other: object) -> bool:
        if not isinstance(other, NotificationLevel):
            return NotImplemented
        return self.severity <= other.severity

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, NotificationLevel):
            return NotImplemented
        return self.severity > other.severity

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, NotificationLevel):
            return NotImplemented
        return self.severity >= other.severity

    def __str__(self) -> str:
        return self.value


_SEVERITY = {level: rank for rank, level in enumerate(NotificationLevel)}


class EventType(str, Enum):
    """What happened. The first 21 members are the seed system's; the rest are new."""

    TRAINING_STARTED = "training_started"
    TRAINING_COMPLETED = "training_completed"
    TRAINING_FAILED = "training_failed"
    TRAINING_PAUSED = "training_paused"
    TRAINING_RESUMED = "training_resumed"
    EVALUATION_STARTED = "evaluation_started"
    EVALUATION_COMPLETED = "evaluation_completed"
    EVALUATION_FAILED = "evaluation_failed"
    CHECKPOINT_SAVED = "checkpoint_saved"
    CHECKPOINT_LOADING = "checkpoint_loading"
    EPOCH_COMPLETED = "epoch_completed"
    BATCH_PROCESSED = "batch_processed"
    LOSS_IMPROVED = "loss_improved"
    LOSS_DEGRADED = "loss_degraded"
    COST_THRESHOLD = "cost_threshold"
    GPU_MEMORY = "gpu_memory"
    GPU_UTILIZATION = "gpu_utilization"
    DISK_SPACE = "disk_space"
    ERROR_OCCURRED = "error_occurred"
    OUT_OF_MEMORY = "out_of_memory"
    NAN_DETECTED = "nan_detected"
    # Beyond the seed system:
    TRAINING_INTERRUPTED = "training_interrupted"
    TRAINING_STALLED = "training_stalled"
    GPU_TEMPERATURE = "gpu_temperature"
    HOST_MEMORY = "host_memory"
    VALIDATION_COMPLETED = "validation_completed"
    DIGEST = "digest"
    TEST = "test"
    CUSTOM = "custom"
    RULE_FIRED = "rule_fired"  # a rule of the run's (afs_callbacks.rules) with ``notify``

    @classmethod
    def parse(cls, value: str | EventType) -> EventType:
        """Read an event type from its value or member name in any case.

        Raises:
            ValueError: the name is not an event type.
        """
        if isinstance(value, EventType):
            return value
        text = str(value).strip().lower().replace("-", "_")
        try:
            return cls(text)
        except ValueError:
            raise ValueError(
                f"unknown event type {value!r}; see `afs_callbacks.EventType` for the list"
            ) from None

    def __str__(self) -> str:
        return self.value


#: The level an event type gets when the caller names none.
DEFAULT_LEVELS: Mapping[EventType, NotificationLevel] = {
    EventType.TRAINING_STARTED: NotificationLevel.INFO,
    EventType.TRAINING_COMPLETED: NotificationLevel.SUCCESS,
    EventType.TRAINING_FAILED: NotificationLevel.ERROR,
    EventType.TRAINING_PAUSED: NotificationLevel.INFO,
    EventType.TRAINING_RESUMED: NotificationLevel.INFO,
    EventType.EVALUATION_STARTED: NotificationLevel.INFO,
    EventType.EVALUATION_COMPLETED: NotificationLevel.SUCCESS,
    EventType.EVALUATION_FAILED: NotificationLevel.ERROR,
    EventType.CHECKPOINT_SAVED: NotificationLevel.INFO,
    EventType.CHECKPOINT_LOADING: NotificationLevel.INFO,
    EventType.EPOCH_COMPLETED: NotificationLevel.INFO,
    EventType.BATCH_PROCESSED: NotificationLevel.INFO,
    EventType.LOSS_IMPROVED: NotificationLevel.SUCCESS,
    EventType.LOSS_DEGRADED: NotificationLevel.WARNING,
    EventType.COST_THRESHOLD: NotificationLevel.WARNING,
    EventType.GPU_MEMORY: NotificationLevel.WARNING,
    EventType.GPU_UTILIZATION: NotificationLevel.WARNING,
    EventType.DISK_SPACE: NotificationLevel.WARNING,
    EventType.ERROR_OCCURRED: NotificationLevel.ERROR,
    EventType.OUT_OF_MEMORY: NotificationLevel.CRITICAL,
    EventType.NAN_DETECTED: NotificationLevel.ERROR,
    EventType.TRAINING_INTERRUPTED: NotificationLevel.WARNING,
    EventType.TRAINING_STALLED: NotificationLevel.ERROR,
    EventType.GPU_TEMPERATURE: NotificationLevel.WARNING,
    EventType.HOST_MEMORY: NotificationLevel.WARNING,
    EventType.VALIDATION_COMPLETED: NotificationLevel.INFO,
    EventType.DIGEST: NotificationLevel.INFO,
    EventType.TEST: NotificationLevel.INFO,
    EventType.CUSTOM: NotificationLevel.INFO,
    EventType.RULE_FIRED: NotificationLevel.WARNING,
}


#: Events that end a run; they go out before anything else still queued for the run.
TERMINAL_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.TRAINING_COMPLETED,
        EventType.TRAINING_FAILED,
        EventType.TRAINING_INTERRUPTED,
    }
)

#: Events that need a human now (not terminal). They go out before any queued progress and
#: are pushed at every verbosity.
URGENT_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.NAN_DETECTED,
        EventType.OUT_OF_MEMORY,
        EventType.TRAINING_STALLED,
        EventType.ERROR_OCCURRED,
        EventType.EVALUATION_FAILED,
        EventType.COST_THRESHOLD,
        EventType.GPU_MEMORY,
        EventType.GPU_UTILIZATION,
        EventType.GPU_TEMPERATURE,
        EventType.HOST_MEMORY,
        EventType.DISK_SPACE,
        EventType.RULE_FIRED,  # the user wrote the rule to be told
    }
)

#: Progress of a running run. Kept in the history (and in the summary and the live card) but
#: not pushed to channels unless ``AFS_VERBOSITY=verbose`` or ``<CHANNEL>_EVENTS`` names them.
#: Stale progress (its run moved on or ended) may be superseded instead of delivered.
PROGRESS_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.EPOCH_COMPLETED,
        EventType.BATCH_PROCESSED,
        EventType.LOSS_IMPROVED,
        EventType.LOSS_DEGRADED,
        EventType.CHECKPOINT_SAVED,
        EventType.CHECKPOINT_LOADING,
        EventType.EVALUATION_STARTED,
        # An evaluation inside training is progress; a standalone one (evaluate(),
        # validate(), test()) is a result, EVALUATION_COMPLETED, and pushed.
        EventType.VALIDATION_COMPLETED,
    }
)


@dataclass(frozen=True)
class Attachment:
    """A file carried with an event, such as a loss-curve PNG.

    Channels that can carry images (email, Discord, Telegram, Slack via a link) attach it;
    the others ignore it.
    """

    filename: str
    content_type: str
    data: bytes = field(repr=False)

    def to_dict(self) -> dict[str, str]:
        """The attachment as JSON-safe values (data in base64)."""
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "data": base64.b64encode(self.data).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachment:
        """Rebuild an attachment written by :meth:`to_dict`."""
        return cls(
            filename=str(data["filename"]),
            content_type=str(data["content_type"]),
            data=base64.b64decode(data["data"]),
        )


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# A generator of our own: training code seeds the global ``random`` (``seed_everything``,
# HF ``set_seed``), which would give two runs of one process the same event ids, and the
# outbox ignores an id it already holds. Reseeded from the OS in a forked child.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def _new_id() -> str:
    # 128 random bits from a Mersenne Twister: unlike uuid4's os.urandom it does not release
    # the GIL, so a training thread making an event never waits for a background thread.
    return f"{_ids.getrandbits(128):032x}"


@dataclass(frozen=True)
class NotificationEvent:
    """One thing worth telling a person about, as every channel receives it.

    Args:
        event_type: what happened.
        level: how serious it is; channels colour and route by it.
        title: one short line (a channel may cut it to its limit).
        message: the body, plain text.
        context: run details: ``model``, ``run_id``, ``host``, ``metrics`` (a mapping of
            names to numbers), ``step``, ``epoch`` and anything else JSON-serialisable.
        attachments: files such as a chart, for channels that can carry them.
        id: unique id, also used as the idempotency key where a service has one.
        timestamp: when it happened, in UTC.
        key: explicit repeat key. Alerts (warning or worse) of one type and run with the
            same key are repeats whatever their text (e.g. a GPU index or a threshold);
            other events are repeats only with the same text, and the key keeps apart
            texts that are the same. Empty: the content decides.
        collapse: False means this event is never collapsed as a repeat (digests, tests).
        digest_count: for a digest, how many events it stands for.

    Control data (``key``, ``collapse``, ``digest_count``) are fields, not context entries;
    an older producer's context ``key``/``no_dedup``/``digest_count`` are lifted into them.

    Example::

        event = NotificationEvent(EventType.NAN_DETECTED, NotificationLevel.ERROR,
                                  "NaN loss", "loss became NaN at step 120",
                                  {"model": "bert-tiny", "run_id": "r1", "step": 120})
    """

    event_type: EventType
    level: NotificationLevel
    title: str
    message: str = ""
    # Left out of the hash (a dict is unhashable), so events can go in sets and dict keys.
    context: Mapping[str, Any] = field(default_factory=dict, hash=False)
    attachments: tuple[Attachment, ...] = ()
    id: str = field(default_factory=_new_id)
    timestamp: datetime = field(default_factory=_utc_now)
    key: str = ""
    collapse: bool = True
    digest_count: int = 0

    def __post_init__(self) -> None:
        # Accept plain strings from callers (the seed API passed strings around).
        object.__setattr__(self, "event_type", EventType.parse(self.event_type))
        object.__setattr__(self, "level", NotificationLevel.parse(self.level))
        if self.timestamp.tzinfo is None:
            # A naive time is read as UTC (the documented unit), not as local time.
            object.__setattr__(self, "timestamp", self.timestamp.replace(tzinfo=timezone.utc))
        elif self.timestamp.utcoffset():
            object.__setattr__(self, "timestamp", self.timestamp.astimezone(timezone.utc))
        object.__setattr__(self, "context", dict(self.context))
        self._lift_control_from_context()

    def _lift_control_from_context(self) -> None:
        """Read control data an older producer put in the context (kept there for them)."""
        context = self.context
        if not self.key and context.get("key") not in (None, ""):
            object.__setattr__(self, "key", str(context["key"]))
        if self.collapse and context.get("no_dedup"):
            object.__setattr__(self, "collapse", False)
        if not self.digest_count and isinstance(context.get("digest_count"), int):
            object.__setattr__(self, "digest_count", int(context["digest_count"]))

    @property
    def run_id(self) -> str | None:
        """The run this event belongs to, if any."""
        value = self.context.get("run_id")
        return None if value is None else str(value)

    @property
    def model(self) -> str | None:
        """The model name, if any."""
        value = self.context.get("model")
        return None if value is None else str(value)

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics mapping from the context (empty when there is none)."""
        value = self.context.get("metrics")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def dedup_key(self) -> str:
        """Events with the same key inside a dedup window collapse into one message.

        The key is type + run + :attr:`key` (e.g. a GPU index or a threshold).
        """
        return f"{self.event_type.value}|{self.run_id or ''}|{self.key}"

    def with_changes(self, **changes: Any) -> NotificationEvent:
        """A copy with some fields replaced (the id stays unless replaced too)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-safe values."""
        return {
            "id": self.id,
            "timestamp": self.timestamp.isoformat(),
            "event_type": self.event_type.value,
            "level": self.level.value,
            "title": self.title,
            "message": self.message,
            "context": _json_safe(self.context),
            "attachments": [attachment.to_dict() for attachment in self.attachments],
            "control": {
                "key": self.key,
                "collapse": self.collapse,
                "digest_count": self.digest_count,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NotificationEvent:
        """Rebuild an event written by :meth:`to_dict`.

        Metrics that were NaN or infinite (written as ``"nan"``, ``"inf"``, ``"-inf"``
        because JSON has no such numbers) come back as floats.
        """
        context = dict(data.get("context") or {})
        if isinstance(context.get("metrics"), Mapping):
            context["metrics"] = _restore_non_finite(context["metrics"])
        # Rows written before control fields existed have no "control"; the context is lifted.
        control = data.get("control")
        control = control if isinstance(control, Mapping) else {}
        return cls(
            event_type=EventType.parse(data["event_type"]),
            level=NotificationLevel.parse(data["level"]),
            title=str(data.get("title", "")),
            message=str(data.get("message", "")),
            context=context,
            attachments=tuple(Attachment.from_dict(a) for a in data.get("attachments") or ()),
            id=str(data["id"]),
            timestamp=datetime.fromisoformat(str(data["timestamp"])),
            key=str(control.get("key") or ""),
            collapse=bool(control.get("collapse", True)),
            digest_count=int(control.get("digest_count") or 0),
        )

    def to_json(self) -> str:
        """The event as a JSON string."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> NotificationEvent:
        """Rebuild an event written by :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def _json_safe(value: Any) -> Any:
    """Turn context values into plain JSON: NaN/Inf become strings, unknown objects ``str``.

    Metrics can be NaN (that is often the news), and JSON has no NaN.
    """
    kind = type(value)  # the usual exact types first: ABC checks cost a row per snapshot
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if value - value == 0 else str(value)  # NaN and ±Inf give NaN here
    if kind is dict:
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    try:
        # numpy scalars, one-element tensors; a bigger tensor raises RuntimeError, not TypeError
        return _json_safe(float(value))
    except Exception:
        pass
    try:
        return str(value)
    except Exception:  # a broken __str__ must not cost the whole event
        return f"<unprintable {type(value).__name__}>"


_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _restore_non_finite(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`_json_safe` for metric values: ``"nan"`` back to ``float("nan")``."""
    restored: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            restored[name] = _restore_non_finite(value)
        elif isinstance(value, str) and value in _NON_FINITE:
            restored[name] = _NON_FINITE[value]
        else:
            restored[name] = value
    return restored
