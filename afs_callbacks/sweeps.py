"""A sweep as one thing to a person: one start, one summary at its end.

Trials are tagged by themselves (:mod:`afs_callbacks.tracking.sweep`) and their routine
starts and clean ends stay in the history (:mod:`afs_callbacks.delivery.routing`). Who
says the sweep's start and its summary is claimed once per state dir
(:mod:`afs_callbacks.delivery.sweep_claims`), by the first of three voices to see it:

* **a** ``Sweep`` **block** in the program that runs the sweep::

      from afs_callbacks import Sweep

      with Sweep("lr-study"):                 # pushes "Sweep started: lr-study"
          study.optimize(objective, n_trials=200)
      # pushes one summary: trials, best value and parameters, pruned/failed, total time

  Inside the block ``AFS_SWEEP`` names the sweep, so every trial started from this
  process (and from processes it starts, Ray's workers included, when ``ray.init`` runs
  inside the block) is tagged with it.
* **an Optuna study in this process** (``study.optimize``, HF ``hyperparameter_search``
  with the Optuna backend), no block: its first trial announces it, and the summary comes
  once no trial has run for :data:`QUIET_SECONDS`, or when the manager closes (at the
  latest at process exit), whichever is first (:func:`trial_started`, :func:`trial_ended`).
* **the trials themselves**, for a sweep whose trials run in processes of their own (Ray
  Tune, a W&B agent, a SLURM array, ``AFS_SWEEP`` set for the workers), no block: the first
  trial to start announces it; the death watcher, which outlives the trials, sends the
  summary once no trial of it has run for :data:`QUIET_SECONDS`
  (:mod:`afs_callbacks.delivery.sweep_end`).

The summary reads the trials' ends from the history they share (one ``AFS_STATE_DIR``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from types import TracebackType

from afs_callbacks._log import get_logger
from afs_callbacks.delivery import sweep_claims
from afs_callbacks.delivery.sweep_claims import Claim
from afs_callbacks.delivery.sweep_end import (
    MAX_EVENTS_READ,
    QUIET_SECONDS,
    SweepSummary,
    TrialEnd,
    quiet_seconds,
    summarise,
)
from afs_callbacks.events import TERMINAL_TYPES, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import format_duration
from afs_callbacks.manager import NotificationManager
from afs_callbacks.tracking.sweep import Trial

log = get_logger(__name__)

#: The tools whose trials all run in the process that runs the sweep: there, the sweep's
#: start and its quiet end are seen without the block.
IN_PROCESS_TOOLS = frozenset({"optuna"})
#: What a sweep's start says of its trials' messages (the end comes with the block's exit).
_QUIET_TRIALS = "Its trials' starts and clean ends go to the history; a crash or a warning is pushed"
#: How a sweep's start names the tool its trials told (the trials' own voice).
_TOOL_WORDS = {
    "ray": "Ray Tune experiment",
    "wandb": "W&B sweep",
    "slurm": "SLURM array job",
    "transformers": "Hyperparameter search",
}


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
        self._claim: Claim | None = None  # held while this object speaks for the sweep

    @property
    def manager(self) -> NotificationManager:
        """Where the sweep's messages go."""
        if self._manager is None:
            self._manager = NotificationManager.shared()
        return self._manager

    def __enter__(self) -> Sweep:
        self._previous = os.environ.get("AFS_SWEEP")
        os.environ["AFS_SWEEP"] = self.name
        # Claimed before any trial starts: trials in other processes then see the sweep is
        # spoken for, and neither announce it nor leave it to the death watcher.
        adopted = self.speak_for("block")
        if adopted is not None and not adopted.won and adopted.voice == "trials":
            # Its trials opened it (and announced it) before this block: the block takes the
            # summary over, counting from the sweep's start.
            self.count_from(adopted.started)
        else:
            self.announce(f"{_QUIET_TRIALS}, and one summary comes at the end.")
        return self

    def speak_for(self, voice: str) -> Claim | None:
        """Claim the sweep for ``voice`` (``block``, ``study``) in the manager's state dir.
        Returns the claim as found (None when none could be made): ``won`` when this
        object opened the sweep; else the voice that had it, which this object took over
        when that was its trials' or a killed process's (then it closes the claim)."""
        if not self.manager.settings.enabled:
            return None  # a disabled library writes no file
        state_dir = self.manager.state_dir
        found = sweep_claims.claim(state_dir, self.name, voice, metric=self.metric, mode=self.mode)
        if found is not None and (found.won or found.voice == "trials" or found.stale):
            self._claim = found if found.won else sweep_claims.take_over(state_dir, found, voice)
        return found

    def count_from(self, since: float) -> None:
        """Count the sweep's trials and time from ``since`` (epoch seconds; a moment past)."""
        self._wall_started = since
        self._started = time.monotonic() - max(0.0, time.time() - since)

    def announce(self, text: str) -> None:
        """Push ``Sweep started`` with ``text``; the summary counts trials from now."""
        self.count_from(time.time())
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
            runs=manager.outbox.runs(ended_since=self._wall_started, limit=None),
        )

    def finish(self, error: BaseException | None = None, *, flush: bool = True) -> NotificationEvent | None:
        """Push the summary (called on leaving the block; ``error``: what ended it;
        ``flush``: wait for delivery before reading the history and after pushing)."""
        said = self.summary(flush=flush).event(error=error)
        event = self.manager.notify(
            said.title, said.message, said.event_type, said.level, **dict(said.context)
        )
        if self._claim is not None:
            sweep_claims.close(self.manager.state_dir, self._claim)
        if flush:
            self.manager.flush(10)
        return event


# A sweep nobody announced: an Optuna study in this process -----------------------------------


class _Unannounced:
    """A sweep seen through its trials in this process: announced by its first trial,
    summarised on a thread of its own once no trial has run for :data:`QUIET_SECONDS`, or
    at once when the manager of its latest trial closes. (Each trial may have a manager of
    its own: they share the history, and the latest one speaks.)"""

    def __init__(self, trial: Trial, manager: NotificationManager) -> None:
        self.sweep = Sweep(trial.sweep, manager=manager)
        self.running = 0
        self.silent = False  # a block in another process speaks for it
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def manager(self) -> NotificationManager:
        """The latest trial's manager: the sweep's messages go through it."""
        return self.sweep.manager

    def announce(self, trial: Trial) -> None:
        found = self.sweep.speak_for("study")
        if found is not None and not found.won:
            # Another voice announced it: a block (which says the summary too), its trials,
            # or another process of the same study (one RDB storage), and each process
            # still summarises what it saw.
            self.silent = found.voice == "block" and not found.stale
            # A sweep adopted from its trials counts from its start; one another voice keeps, from now.
            self.sweep.count_from(found.started if found.voice == "trials" else time.time())
            return
        tool = "Optuna study" if trial.tool == "optuna" else "Sweep"
        quiet = format_duration(quiet_seconds(QUIET_SECONDS))
        self.sweep.announce(
            f"{tool} {trial.sweep}, seen from its first trial. {_QUIET_TRIALS}, and one"
            f" summary comes when no trial has run for {quiet} (or when the program ends)."
        )

    def poke(self) -> None:
        """A trial started or ended (the counts are updated under ``_lock``)."""
        if self.silent:
            return
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
            if running == 0 and not self._wake.wait(quiet_seconds(QUIET_SECONDS)):
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
    sweep that no :class:`Sweep` block speaks for pushes the sweep's start: here, for a
    tool that runs every trial in this process (:data:`IN_PROCESS_TOOLS`), which then
    summarises it too; else the first of all its trials' processes (:func:`open_for_trials`).
    Never raises."""
    if not isinstance(manager, NotificationManager) or not manager.settings.enabled:
        return
    if trial.tool not in IN_PROCESS_TOOLS:
        open_for_trials(trial, manager)
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


# A sweep of trials in processes of their own ---------------------------------------------------


def open_for_trials(trial: Trial, manager: NotificationManager) -> Claim | None:
    """The trials' own voice: the first trial of ``trial.sweep`` to start in the state dir
    opens the sweep and pushes its start (with an id of the sweep's, so it is sent once
    whatever happens); a sweep a block or a study speaks for is left to it. The summary is
    the death watcher's (:func:`afs_callbacks.delivery.sweep_end.quiet_summaries`).
    ``AFS_SWEEP_METRIC`` and ``AFS_SWEEP_MODE`` in the trials' environment choose the best
    trial. Returns the claim (None when it could not be made). Never raises."""
    try:
        mode = "max" if os.environ.get("AFS_SWEEP_MODE", "").strip().lower() == "max" else "min"
        metric = os.environ.get("AFS_SWEEP_METRIC", "").strip() or None
        found = sweep_claims.claim(manager.state_dir, trial.sweep, "trials", metric=metric, mode=mode)
        if found is None or not found.won:
            if found is not None and found.stale:  # its block or study was killed: ours now
                return sweep_claims.take_over(manager.state_dir, found, "trials")
            return found
        quiet = format_duration(quiet_seconds(QUIET_SECONDS))
        words = _TOOL_WORDS.get(trial.tool, "Sweep")
        manager.emit(
            NotificationEvent(
                event_type=EventType.TRAINING_STARTED,
                level=NotificationLevel.INFO,
                title=f"Sweep started: {trial.sweep}",
                message=(
                    f"{words} {trial.sweep}, seen from its first trial. {_QUIET_TRIALS}, and one"
                    f" summary comes once no trial has run for {quiet}."
                ),
                context={
                    "run_id": trial.sweep,
                    "model": "sweep",
                    "sweep": trial.sweep,
                    "sweep_tool": trial.tool,
                },
                id=found.event_id("started"),
            )
        )
        return found
    except Exception:
        log.exception("afs-callbacks: announcing the sweep failed")
        return None


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


__all__ = [
    "QUIET_SECONDS",
    "Sweep",
    "SweepSummary",
    "TrialEnd",
    "open_for_trials",
    "quiet_seconds",
    "summarise",
    "trial_ended",
    "trial_started",
]
