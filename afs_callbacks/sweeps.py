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

Without the block, a sweep whose trials run in this process (an Optuna study's
``optimize``, HF ``hyperparameter_search`` with the Optuna backend) is still one thing to
a person: its first trial announces it, and the summary comes once no trial has run for
:data:`QUIET_SECONDS`, or when the manager closes (at the latest at process exit),
whichever is first (:func:`trial_started`, :func:`trial_ended`). A sweep whose trials run
in other processes (Ray Tune, a W&B agent, a SLURM array) has no such moment here: its
driver says it with the block.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.events import TERMINAL_TYPES, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import format_duration
from afs_callbacks.manager import NotificationManager
from afs_callbacks.outcome import Outcome
from afs_callbacks.tracking.sweep import Trial

log = get_logger(__name__)

#: Most events of the history read for one summary.
MAX_EVENTS_READ = 20_000
#: Seconds with no trial running after which a sweep nobody announced is summarised.
QUIET_SECONDS = 60.0
#: The tools whose trials all run in the process that runs the sweep: there, the sweep's
#: start and its quiet end are seen without the block.
IN_PROCESS_TOOLS = frozenset({"optuna"})
#: What a sweep's start says of its trials' messages (the end comes with the block's exit).
_QUIET_TRIALS = "Its trials' starts and clean ends go to the history; a crash or a warning is pushed"


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
        manager: where the two messages go (default: ``NotificationManager.shared()``).
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
            self._manager = NotificationManager.shared()
        return self._manager

    def __enter__(self) -> Sweep:
        self._previous = os.environ.get("AFS_SWEEP")
        os.environ["AFS_SWEEP"] = self.name
        self.announce(f"{_QUIET_TRIALS}, and one summary comes at the end.")
        return self

    def announce(self, text: str) -> None:
        """Push ``Sweep started`` with ``text``; the summary counts trials from now."""
        self._started, self._wall_started = time.monotonic(), time.time()
        self.manager.notify(
            f"Sweep started: {self.name}",
            text,
            EventType.TRAINING_STARTED,
            run_id=self.name,
            model="sweep",
            sweep=self.name,
        )

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

    def summary(self, *, flush: bool = True) -> SweepSummary:
        """The sweep's trials as the history holds them now (``flush``: what this process
        queued is stored and sent first; a trial's end is stored before it returns)."""
        manager = self.manager
        if flush:
            manager.flush(10)
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

    def finish(self, error: BaseException | None = None, *, flush: bool = True) -> NotificationEvent | None:
        """Push the summary (called on leaving the block; ``error``: what ended it;
        ``flush``: wait for delivery before reading the history and after pushing)."""
        summary = self.summary(flush=flush)
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
        if flush:
            self.manager.flush(10)
        return event


# A sweep nobody announced -----------------------------------------------------------------


class _Unannounced:
    """A sweep seen through its trials in this process: announced by its first trial,
    summarised on a thread of its own once no trial has run for :data:`QUIET_SECONDS`, or
    at once when the manager of its latest trial closes. (Each trial may have a manager of
    its own: they share the history, and the latest one speaks.)"""

    def __init__(self, trial: Trial, manager: NotificationManager) -> None:
        self.sweep = Sweep(trial.sweep, manager=manager)
        self.running = 0
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def manager(self) -> NotificationManager:
        """The latest trial's manager: the sweep's messages go through it."""
        return self.sweep.manager

    def announce(self, trial: Trial) -> None:
        tool = "Optuna study" if trial.tool == "optuna" else "Sweep"
        quiet = format_duration(QUIET_SECONDS)
        self.sweep.announce(
            f"{tool} {trial.sweep}, seen from its first trial. {_QUIET_TRIALS}, and one"
            f" summary comes when no trial has run for {quiet} (or when the program ends)."
        )

    def poke(self) -> None:
        """A trial started or ended (the counts are updated under ``_lock``)."""
        if self._thread is None or not self._thread.is_alive():
            # One thread per wait, and it speaks once as it ends: a trial after the summary
            # starts the next wait (and the next summary).
            self._closing = False
            self._thread = threading.Thread(target=self._wait, name="afs-sweep-summary", daemon=True)
            self._thread.start()
        self._wake.set()

    def close(self, timeout: float) -> None:
        """The manager closes: summarise now, if a summary is still owed."""
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _wait(self) -> None:
        # A daemon: it must not hold the process open for QUIET_SECONDS at exit; the
        # manager's close (run at exit) hurries it instead.
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                break
            with _lock:
                running = self.running
            if running == 0 and not self._wake.wait(QUIET_SECONDS):
                break  # nothing started or ended for QUIET_SECONDS
        try:
            # No flush: every trial's end is stored before it returns, and a flush here
            # would spend the closing manager's budget before the summary is queued.
            self.sweep.finish(flush=False)
        except Exception:
            log.exception("afs-callbacks: the sweep's summary failed")


_lock = threading.Lock()
_unannounced: dict[str, _Unannounced] = {}  # by sweep name, for this process
_hooked: weakref.WeakSet[NotificationManager] = weakref.WeakSet()  # managers whose close hurries


def trial_started(trial: Trial, manager: object) -> None:
    """A trial of ``trial.sweep`` starts on ``manager`` in this process. The first one of a
    sweep that no :class:`Sweep` block announces (its tool runs every trial here, see
    :data:`IN_PROCESS_TOOLS`) pushes the sweep's start. Never raises."""
    if trial.tool not in IN_PROCESS_TOOLS or not isinstance(manager, NotificationManager):
        return
    if not manager.settings.enabled:
        return
    try:
        with _lock:
            watch = _unannounced.get(trial.sweep)
            first = watch is None
            if watch is None:
                watch = _unannounced[trial.sweep] = _Unannounced(trial, manager)
            watch.sweep._manager = manager
            watch.running += 1
            hook = manager not in _hooked
            _hooked.add(manager)
        if hook:
            manager.before_close(functools.partial(_close, weakref.ref(manager)))
        if first:
            watch.announce(trial)
        watch.poke()
    except Exception:
        log.exception("afs-callbacks: announcing the sweep failed")


def trial_ended(trial: Trial, manager: object) -> None:
    """A trial that :func:`trial_started` counted has ended. Never raises."""
    with _lock:
        watch = _unannounced.get(trial.sweep)
        if watch is None:
            return
        watch.running = max(0, watch.running - 1)
    watch.poke()


def _close(manager: weakref.ref[NotificationManager]) -> None:
    owner = manager()
    if owner is None:
        return
    with _lock:
        # Kept after: a later trial of the sweep is not announced again; its end starts a
        # new wait, and the summary that follows counts every trial since the first.
        watches = [watch for watch in _unannounced.values() if watch.manager is owner]
    for watch in watches:
        watch.close(owner.settings.exit_flush_timeout)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _unannounced.clear()  # the parent's trials and threads


os.register_at_fork(after_in_child=_after_fork_in_child)


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


__all__ = ["QUIET_SECONDS", "Sweep", "SweepSummary", "TrialEnd", "summarise", "trial_ended", "trial_started"]
