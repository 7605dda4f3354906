"""A sweep as one thing to a person: one start, one summary at its end.

Trials are tagged by themselves (:mod:`afs_callbacks.tracking.sweep`) and their routine
starts and clean ends stay in the history (:mod:`afs_callbacks.delivery.routing`). What
only the program that runs the sweep knows is when it begins and ends; around that call::

    from afs_callbacks import Sweep

    with Sweep("lr-study"):                 # pushes "Sweep started: lr-study"
        study.optimize(objective, n_trials=200)
    # pushes one summary: trials, best value and parameters, pruned/failed, total time

    with Sweep("asha", metric="val_loss", mode="min"):
        tuner.fit()                         # Ray Tune: trials in other processes too

Inside the block ``AFS_SWEEP`` names the sweep, so every trial started from this process
(and from processes it starts, Ray's workers included, when ``ray.init`` runs inside the
block) is tagged with it. The summary reads the trials' ends from the history that the
trials share (one ``AFS_STATE_DIR``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.events import TERMINAL_TYPES, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import format_duration
from afs_callbacks.manager import NotificationManager
from afs_callbacks.outcome import Outcome

log = get_logger(__name__)

#: Most events of the history read for one summary.
MAX_EVENTS_READ = 20_000


@dataclass
class TrialEnd:
    """One trial as the summary counts it."""

    trial: str
    outcome: Outcome | None  # None: started, no end stored (still running, or killed)
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSummary:
    """What a sweep's end says: its trials by outcome and the best one."""

    name: str
    trials: list[TrialEnd]
    seconds: float
    metric: str | None
    mode: str

    def count(self, *outcomes: Outcome) -> int:
        """Trials that ended with one of ``outcomes``."""
        return sum(1 for t in self.trials if t.outcome in outcomes)

    @property
    def failed(self) -> int:
        """Trials that crashed or were killed (a pruning is not a failure)."""
        return self.count(Outcome.FAILED, Outcome.KILLED, Outcome.STOPPED_ON_PROBLEM)

    @property
    def pruned(self) -> int:
        """Trials a pruner or scheduler ended."""
        return self.count(Outcome.PRUNED)

    @property
    def unfinished(self) -> int:
        """Trials with no end stored."""
        return sum(1 for t in self.trials if t.outcome is None)

    @property
    def best(self) -> TrialEnd | None:
        """The trial with the best value (``mode``), among those that have one."""
        scored = [t for t in self.trials if t.value is not None]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda t: t.value if t.value is not None else 0.0)

    def lines(self) -> list[str]:
        """The summary in words."""
        finished = len(self.trials) - self.unfinished
        lines = [
            f"{len(self.trials)} trials in {format_duration(self.seconds)}: {finished} ended,"
            f" {self.pruned} pruned, {self.failed} failed"
            + (f", {self.unfinished} without an end" if self.unfinished else "")
            + "."
        ]
        best = self.best
        if best is not None:
            shown = ", ".join(f"{name}={_short(value)}" for name, value in best.params.items())
            where = f"trial {best.trial}" + (f": {shown}" if shown else "")
            lines.append(f"Best {self.metric or 'value'}: {_short(best.value)} ({where})")
        return lines


class Sweep:
    """Announce a sweep once and summarise it once (see the module docstring).

    Args:
        name: the sweep's name (default: ``AFS_SWEEP``, else ``sweep-<time>``).
        manager: where the two messages go (default: ``NotificationManager.from_env()``).
        metric: the trials' metric the best is chosen by (default: each trial's monitored
            metric, the one its summary names best).
        mode: ``"min"`` or ``"max"`` for ``metric``.

    Raises:
        ValueError: ``mode`` is neither ``"min"`` nor ``"max"``.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        manager: NotificationManager | None = None,
        metric: str | None = None,
        mode: str = "min",
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"Sweep(mode={mode!r}) must be 'min' or 'max'")
        self.name = name or os.environ.get("AFS_SWEEP") or time.strftime("sweep-%Y%m%d-%H%M%S")
        self.metric = metric
        self.mode = mode
        self._manager = manager
        self._started = 0.0
        self._wall_started = 0.0
        self._previous: str | None = None

    @property
    def manager(self) -> NotificationManager:
        """Where the sweep's messages go."""
        if self._manager is None:
            self._manager = NotificationManager.from_env()
        return self._manager

    def __enter__(self) -> Sweep:
        self._started, self._wall_started = time.monotonic(), time.time()
        self._previous = os.environ.get("AFS_SWEEP")
        os.environ["AFS_SWEEP"] = self.name
        self.manager.notify(
            f"Sweep started: {self.name}",
            "Its trials' starts and clean ends go to the history; a crash or a warning is"
            " pushed, and one summary comes at the end.",
            EventType.TRAINING_STARTED,
            run_id=self.name,
            model="sweep",
            sweep=self.name,
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._previous is None:
            os.environ.pop("AFS_SWEEP", None)
        else:
            os.environ["AFS_SWEEP"] = self._previous
        try:
            self.finish(error=exc)
        except Exception:
            log.exception("afs-callbacks: the sweep's summary failed")

    def summary(self) -> SweepSummary:
        """The sweep's trials as the history holds them now."""
        manager = self.manager
        manager.flush(10)  # what this process queued is stored (and sent) first
        types = [t.value for t in (*TERMINAL_TYPES, EventType.TRAINING_STARTED)]
        events = manager.outbox.history(event_type=types, limit=MAX_EVENTS_READ)
        return summarise(
            self.name,
            [e.event for e in events],
            since=self._wall_started,
            seconds=time.monotonic() - self._started,
            metric=self.metric,
            mode=self.mode,
        )

    def finish(self, error: BaseException | None = None) -> NotificationEvent | None:
        """Push the summary (called on leaving the block; ``error``: what ended it)."""
        summary = self.summary()
        clean = error is None and summary.failed == 0
        lines = summary.lines()
        if error is not None:
            lines.append(f"The sweep itself ended with {type(error).__name__}: {str(error)[:300]}")
        best = summary.best
        context: dict[str, Any] = {
            "run_id": self.name,
            "model": "sweep",
            "sweep": self.name,
            "outcome": (Outcome.COMPLETED if clean else Outcome.COMPLETED_WITH_WARNINGS).value,
            "trials": len(summary.trials),
            "pruned": summary.pruned,
            "failed": summary.failed,
            "duration": summary.seconds,
        }
        if best is not None:
            context["best"] = {summary.metric or "value": best.value, "trial": best.trial}
            context["best_params"] = dict(best.params)
        event = self.manager.notify(
            f"Sweep finished: {self.name}" if clean else f"Sweep finished with failures: {self.name}",
            "\n".join(lines),
            EventType.TRAINING_COMPLETED,
            NotificationLevel.SUCCESS if clean else NotificationLevel.WARNING,
            **context,
        )
        self.manager.flush(10)
        return event


def summarise(
    name: str,
    events: list[NotificationEvent],
    *,
    since: float,
    seconds: float,
    metric: str | None = None,
    mode: str = "min",
) -> SweepSummary:
    """The summary of sweep ``name`` from its trials' events (the newest end of each trial
    since ``since``, epoch seconds, counts)."""
    trials: dict[str, TrialEnd] = {}
    chosen = metric
    for event in sorted(events, key=lambda e: e.timestamp):
        context = event.context
        if context.get("sweep") != name or context.get("trial") is None:
            continue
        if event.timestamp.timestamp() < since:
            continue
        key = str(event.run_id or context["trial"])
        trial = trials.setdefault(key, TrialEnd(str(context["trial"]), None))
        trial.params = dict(context.get("trial_params") or trial.params)
        if event.event_type not in TERMINAL_TYPES:
            continue
        trial.outcome = _outcome(event)
        value, found = _value(context, chosen)
        if chosen is None and found is not None:
            chosen = found  # the first trial's monitored metric names the rest
        trial.value = value
    return SweepSummary(name, list(trials.values()), seconds, chosen, mode)


def _outcome(event: NotificationEvent) -> Outcome:
    recorded = event.context.get("outcome")
    if recorded:
        try:
            return Outcome.parse(str(recorded))
        except ValueError:
            pass
    if event.event_type is EventType.TRAINING_COMPLETED:
        return Outcome.COMPLETED
    if event.event_type is EventType.TRAINING_INTERRUPTED:
        return Outcome.INTERRUPTED
    if event.level is NotificationLevel.CRITICAL:
        return Outcome.KILLED
    return Outcome.FAILED


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _value(context: Mapping[str, Any], metric: str | None) -> tuple[float | None, str | None]:
    """The trial's value of ``metric`` (default: its best monitored one), and the name."""
    best = context.get("best")
    if isinstance(best, Mapping):
        names = [k for k in best if k != "epoch"]
        name = metric if metric in best else (names[0] if names and metric is None else None)
        if name is not None and isinstance(best.get(name), (int, float)):
            return float(best[name]), name
    metrics = context.get("metrics")
    if isinstance(metrics, Mapping) and metric is not None and isinstance(metrics.get(metric), (int, float)):
        return float(metrics[metric]), metric
    return None, None


__all__ = ["Sweep", "SweepSummary", "TrialEnd", "summarise"]
