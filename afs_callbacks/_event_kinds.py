"""The kinds of notification: levels, event types, and how each type is treated by default.

Kept apart from :mod:`afs_callbacks.events` (which re-exports every name here; import them
from there) so that module holds the event value and its JSON form, and this one the
vocabulary: :class:`NotificationLevel`, :class:`EventType`, each type's default level and
the terminal/urgent/progress classification the delivery order and verbosity use. Nothing
here imports the rest of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


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
    DIGEST = "digest"
    TEST = "test"
    CUSTOM = "custom"

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
    EventType.DIGEST: NotificationLevel.INFO,
    EventType.TEST: NotificationLevel.INFO,
    EventType.CUSTOM: NotificationLevel.INFO,
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
    }
)
