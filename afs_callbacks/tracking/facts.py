"""A run's facts and their API: identity, ranks, resolved settings, counters, snapshots.

:class:`RunFacts` is the base of :class:`~afs_callbacks.tracking.tracker.RunTracker`:
what adapters may set (:meth:`RunFacts.bind`, :meth:`RunFacts.resolve`), what they may
read, and what a checkpoint keeps. Nothing here sends anything.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.events import NotificationEvent
from afs_callbacks.runstate import RunState
from afs_callbacks.tracking.background import Background
from afs_callbacks.tracking.config import TrackerConfig, new_run_id
from afs_callbacks.tracking.metrics import MetricWatch
from afs_callbacks.tracking.nan import LossAccumulator
from afs_callbacks.tracking.points import Curves
from afs_callbacks.tracking.ranks import Ranks
from afs_callbacks.tracking.reader import WindowReads
from afs_callbacks.tracking.run import RunRecord, build_state
from afs_callbacks.tracking.sink import EventSink

log = get_logger(__name__)

#: Seconds between run snapshots sent from the step hook (epochs, evaluations,
#: checkpoints and the end send one at once).
SNAPSHOT_INTERVAL = 5.0
_NEVER = math.inf
_EVENT_FIELDS = NotificationEvent.__dataclass_fields__


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Make a hook-facing method swallow (and log) any exception: hooks must not raise."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            log.exception("afs-callbacks: %s failed; training continues", method.__name__)
            return None

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class RunFacts:
    """The state of one run and the API for its facts (see :class:`RunTracker`)."""

    def __init__(self, manager: EventSink | None = None, config: TrackerConfig | None = None) -> None:
        self._config = config or TrackerConfig()
        self._sink = manager
        self._run_id = self._config.run_id or new_run_id(self._config.model_name)
        # A run id given, shared by rank zero or restored from a checkpoint is never
        # replaced; a generated one is renamed once the model's name is known.
        self._run_id_fixed = self._config.run_id is not None
        self._ranks = Ranks()
        self._metric = self._new_watch()
        self._resumed = False
        # How many times this run was (re)started from a checkpoint: part of the ids of
        # once-per-run events, so a failure after a resume is not taken for the old one.
        self._attempt = 0
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self._finished = False
        self._steps = 0
        self._last_step = 0
        self._epoch: int | None = None  # 0-based index of the current/last epoch
        self._record = RunRecord()
        self._nan_reported = False
        self._stop_requested = False
        self._accumulator = LossAccumulator()
        self._reads = WindowReads()
        self._curves = Curves()
        self._last_progress = time.monotonic()
        self._background = Background()
        self._update_run: Callable[..., Any] | None = None
        self._next_snapshot = _NEVER
        self._snapshot_at = -_NEVER  # when the last snapshot went out (monotonic)
        self._cache_cadence()

    def _new_watch(self) -> MetricWatch:
        c = self._config
        return MetricWatch(c.monitor, c.mode, c.min_delta, c.patience)

    def _cache_cadence(self) -> None:
        # Read on every step: plain attributes, not a walk through the config.
        self._nan_every = self._config.nan_check_every
        self._batch_every = self._config.batch_every

    @property
    def config(self) -> TrackerConfig:
        """What this tracker reports (settled by :meth:`resolve`)."""
        return self._config

    @property
    def run_id(self) -> str:
        """The run's id (shared by every rank, kept across resumes)."""
        return self._run_id

    @property
    def model_name(self) -> str:
        """The model name shown in every message."""
        return self._config.model_name or "model"

    @property
    def rank(self) -> int:
        """This process's global rank."""
        return self._ranks.rank

    @property
    def world_size(self) -> int:
        """How many processes train this run."""
        return self._ranks.world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this process speaks for the run."""
        return self._ranks.is_global_zero

    @property
    def manager(self) -> EventSink:
        """The sink events go to (``NotificationManager.from_env()`` on first use)."""
        if self._sink is None:
            from afs_callbacks.manager import NotificationManager  # only the default needs it

            self._sink = NotificationManager.from_env()
        return self._sink

    def bind(
        self, *, rank: int | None = None, world_size: int | None = None, is_global_zero: bool | None = None
    ) -> None:
        """Say where this process stands in a distributed run (default: rank 0 of 1).

        ``is_global_zero`` defaults to ``rank == 0``.
        """
        current = self._ranks
        rank = current.rank if rank is None else int(rank)
        world = current.world_size if world_size is None else max(1, int(world_size))
        zero = (rank == 0) if is_global_zero is None else bool(is_global_zero)
        self._ranks = Ranks(rank, world, zero)

    def resolve(
        self,
        *,
        model_name: str | None = None,
        run_id: str | None = None,
        monitor: str | None = None,
        mode: str | None = None,
        nan_check_every: int | None = None,
    ) -> None:
        """Settle what the framework decides (the model's name, the shared run id, the
        Trainer's metric to monitor, its logging cadence). None leaves a fact as it is.

        A model name given before the run starts also names a generated run id.

        Raises:
            ValueError: ``mode`` or ``nan_check_every`` out of range.
        """
        changes: dict[str, Any] = {}
        if model_name is not None:
            renamed = model_name != self._config.model_name
            if renamed and not self._run_id_fixed and self._started_at is None and not self._resumed:
                self._run_id = new_run_id(model_name)
            changes["model_name"] = model_name
        if monitor is not None:
            changes["monitor"] = monitor
        if mode is not None:
            changes["mode"] = mode
        if nan_check_every is not None:
            changes["nan_check_every"] = nan_check_every
        if changes:
            before = (self._config.monitor, self._config.mode)
            self._config = dataclasses.replace(self._config, **changes)
            if (self._config.monitor, self._config.mode) != before:  # a new watch, a new best
                self._metric = self._new_watch()
            self._cache_cadence()
        if run_id is not None:
            self._run_id, self._run_id_fixed = str(run_id), True

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called for this run."""
        return self._started_at is not None

    @property
    def started_at(self) -> float | None:
        """``time.monotonic()`` at :meth:`start`, or None."""
        return self._started_at

    @property
    def finished(self) -> bool:
        """Whether the run's end (completed, failed, interrupted) was reported."""
        return self._finished

    @property
    def stop_requested(self) -> bool:
        """True after a NaN when ``stop_on_nan`` is set."""
        return self._stop_requested

    @property
    def steps(self) -> int:
        """Optimisation steps counted in this process for this run."""
        return self._steps

    def state(self, status: str | None = None) -> RunState:
        """A snapshot of the run now (what :meth:`update_run` receives)."""
        return build_state(
            self._record if status is None else dataclasses.replace(self._record, status=status),
            run_id=self._run_id,
            model=self.model_name,
            step=self._last_step,
            steps=self._steps,
            duration=self._duration(),
            monitor=self._metric.name,
            best=self._metric.best,
            best_epoch=self._metric.best_epoch,
            monitors=self._background.summary(),
        )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: run id, attempt, monitored metric, started marker."""
        return {
            "run_id": self._run_id,
            "attempt": self._attempt,
            "started": self._started_at is not None or self._resumed,
            **self._metric.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from a checkpoint: the next :meth:`start` reports TRAINING_RESUMED."""
        self._run_id = str(state.get("run_id") or self._run_id)
        self._run_id_fixed = True
        self._attempt = int(state.get("attempt") or 0) + 1
        self._metric.load_state_dict(state)
        self._resumed = bool(state.get("started", True))

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks. A manager holds threads and a database connection,
        # the watchdog and monitors hold threads: each worker builds its own.
        state = self.__dict__.copy()
        for name in ("_lock", "_background", "_accumulator", "_reads", "_update_run"):
            state.pop(name, None)
        state["_sink"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._background = Background()
        self._accumulator = LossAccumulator()
        self._reads = WindowReads()
        self._update_run = None

    def _epoch_number(self) -> int | None:
        return None if self._epoch is None else self._epoch + 1

    def _duration(self) -> float:
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at
