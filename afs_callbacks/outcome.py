"""How a run ended: one value, decided once by the tracker (or the death watcher), read by
every surface.

A person glancing at a phone must know in one word what happened. The end message's title
and level, the live card's icon and colour, the dashboard's badge and status filter,
``afs-notify history --json``, Alertmanager and PagerDuty resolution, SMS routing, the death
notice and the Prometheus ``outcome`` label all read :class:`Outcome` and its properties;
none of them decides for itself.

========================  ===========================================================  =======
outcome                   what happened                                                 level
========================  ===========================================================  =======
completed                 reached its planned end, nothing wrong seen                   success
completed_with_warnings   reached its end, but a NaN/Inf (or another alert) was seen    warning
stopped_early             stopped by the user's own rule: EarlyStopping, should_stop,  success
                          ``max_time``, a plateau callback
stopped_on_problem        stopped because something went wrong: a NaN/Inf with          error
                          ``stop_on_nan``/``TerminateOnNaN``, a divergence check
stopped_by_command        stopped from outside on purpose: ``afs-notify stop``, the    info
                          dashboard, a chat button
stopped_by_rule           an ``AFS_RULES``/``rules=`` rule's stop action               warning
pruned                    a sweep's pruner ended the trial (Optuna, Ray schedulers,     info
                          HF hyperparameter search): a normal part of a sweep
failed                    raised an exception (out of memory included)                 error
interrupted               Ctrl-C                                                        warning
preempted                 SIGTERM: the scheduler took the node (SLURM, Kubernetes)      warning
killed                    the process vanished without a word (SIGKILL, the OOM        critical
                          killer, a time limit): told by the death watcher
========================  ===========================================================  =======

A live run is ``running`` or ``stalled`` (:data:`LIVE_STATUSES`); those are statuses, not
outcomes: a stalled run may move again.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel

#: A live run's statuses (not outcomes: a stalled run may resume).
RUNNING = "running"
STALLED = "stalled"
LIVE_STATUSES = (RUNNING, STALLED)


class Outcome(str, Enum):
    """How a run ended. The value is what the store, the history and the API carry."""

    COMPLETED = "completed"
    COMPLETED_WITH_WARNINGS = "completed_with_warnings"
    STOPPED_EARLY = "stopped_early"
    STOPPED_ON_PROBLEM = "stopped_on_problem"
    STOPPED_BY_COMMAND = "stopped_by_command"
    STOPPED_BY_RULE = "stopped_by_rule"
    PRUNED = "pruned"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PREEMPTED = "preempted"
    KILLED = "killed"

    @property
    def label(self) -> str:
        """The outcome in words, for titles and badges: ``"completed with warnings"``,
        ``"stopped on a problem"``."""
        return _LABELS.get(self, self.value.replace("_", " "))

    @property
    def level(self) -> NotificationLevel:
        """The level of the run's end message."""
        return _LEVELS[self]

    @property
    def icon(self) -> str:
        """One character a card or a title leads with."""
        return _ICONS[self]

    @property
    def colour(self) -> int:
        """RGB colour of cards, badges and attachment bars."""
        return _COLOURS[self]

    @property
    def succeeded(self) -> bool:
        """The run did what it was meant to: its planned end, its own stopping rule, a
        pruning, or a person's deliberate stop."""
        return self in _SUCCESSES

    @property
    def resolves_alerts(self) -> bool:
        """Whether the end closes the run's open alerts (Alertmanager, PagerDuty).

        Only a clean end does: a run that completed with warnings or stopped on a problem
        keeps its NaN alert firing until a person looks. A person's own stop resolves them:
        they have seen the run.
        """
        return self in _RESOLVING

    @classmethod
    def parse(cls, value: str | Outcome) -> Outcome:
        """Read an outcome from its value, member name or label in any case.

        Raises:
            ValueError: not an outcome; the message lists the valid values.
        """
        if isinstance(value, Outcome):
            return value
        text = str(value).strip().lower().replace("-", "_").replace(" ", "_")
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(outcome.value for outcome in cls)
            raise ValueError(f"unknown outcome {value!r}; expected one of {names}") from None

    @classmethod
    def of_event(cls, event: NotificationEvent) -> Outcome | None:
        """The outcome an end event carries (``context["outcome"]``); for an end event
        stored before outcomes existed, the one its type means; None for any other event."""
        return cls.of(event.event_type, event.context)

    @classmethod
    def of(cls, event_type: EventType | str, context: Mapping[str, Any]) -> Outcome | None:
        """:meth:`of_event` from an event's type and context (a stored row's JSON)."""
        carried = context.get("outcome")
        if carried:
            try:
                return cls.parse(carried)
            except ValueError:
                pass
        try:
            kind = EventType.parse(event_type) if isinstance(event_type, str) else event_type
        except ValueError:
            return None
        return _BY_TYPE.get(kind)

    def __str__(self) -> str:
        return self.value


_LABELS = {Outcome.STOPPED_ON_PROBLEM: "stopped on a problem"}
#: What an end event means where it carries no outcome (stored before outcomes existed, or
#: sent by code that names none).
_BY_TYPE = {
    EventType.TRAINING_COMPLETED: Outcome.COMPLETED,
    EventType.TRAINING_FAILED: Outcome.FAILED,
    EventType.OUT_OF_MEMORY: Outcome.FAILED,
    EventType.TRAINING_INTERRUPTED: Outcome.INTERRUPTED,
}
#: Event types that end a run, and so carry an outcome.
END_TYPES = frozenset(_BY_TYPE)

_LEVELS = {
    Outcome.COMPLETED: NotificationLevel.SUCCESS,
    Outcome.COMPLETED_WITH_WARNINGS: NotificationLevel.WARNING,
    Outcome.STOPPED_EARLY: NotificationLevel.SUCCESS,
    Outcome.STOPPED_ON_PROBLEM: NotificationLevel.ERROR,
    Outcome.STOPPED_BY_COMMAND: NotificationLevel.INFO,
    Outcome.STOPPED_BY_RULE: NotificationLevel.WARNING,
    Outcome.PRUNED: NotificationLevel.INFO,
    Outcome.FAILED: NotificationLevel.ERROR,
    Outcome.INTERRUPTED: NotificationLevel.WARNING,
    Outcome.PREEMPTED: NotificationLevel.WARNING,
    Outcome.KILLED: NotificationLevel.CRITICAL,
}
_ICONS = {
    Outcome.COMPLETED: "✅",
    Outcome.COMPLETED_WITH_WARNINGS: "⚠️",
    Outcome.STOPPED_EARLY: "⏹️",
    Outcome.STOPPED_ON_PROBLEM: "🛑",
    Outcome.STOPPED_BY_COMMAND: "✋",
    Outcome.STOPPED_BY_RULE: "📏",
    Outcome.PRUNED: "✂️",
    Outcome.FAILED: "❌",
    Outcome.INTERRUPTED: "⏸️",
    Outcome.PREEMPTED: "⏸️",
    Outcome.KILLED: "💀",
}
_COLOURS = {
    Outcome.COMPLETED: 0x22C55E,
    Outcome.COMPLETED_WITH_WARNINGS: 0xF59E0B,
    Outcome.STOPPED_EARLY: 0x16A34A,
    Outcome.STOPPED_ON_PROBLEM: 0xDC2626,
    Outcome.STOPPED_BY_COMMAND: 0x3B82F6,
    Outcome.STOPPED_BY_RULE: 0xF59E0B,
    Outcome.PRUNED: 0x6B7280,
    Outcome.FAILED: 0xDC2626,
    Outcome.INTERRUPTED: 0xF59E0B,
    Outcome.PREEMPTED: 0xF59E0B,
    Outcome.KILLED: 0x7F1D1D,
}
_SUCCESSES = frozenset({Outcome.COMPLETED, Outcome.STOPPED_EARLY, Outcome.PRUNED, Outcome.STOPPED_BY_COMMAND})
_RESOLVING = _SUCCESSES

__all__ = ["END_TYPES", "LIVE_STATUSES", "RUNNING", "STALLED", "Outcome"]
