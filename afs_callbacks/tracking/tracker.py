"""The framework-free run tracker: training semantics in, events and run snapshots out.

Framework adapters translate their hooks into :class:`RunTracker`'s verbs and hold no
logic of their own. The tracker knows what a run is and nothing about channels: it hands
events to a sink (:class:`~afs_callbacks.tracking.sink.EventSink`, the
:class:`~afs_callbacks.manager.NotificationManager` by default) and, when the sink has
``update_run``, snapshots of the run (:class:`~afs_callbacks.runstate.RunState`).

The verbs, in the order a run meets them:

=====================  ==============================================================
where the run stands   :meth:`~RunTracker.bind` (rank, world size),
                       :meth:`~RunTracker.resolve` (model name, run id, monitor, cadence)
start                  :meth:`~RunTracker.start`
step                   :meth:`~RunTracker.on_step` (the hot path; True: stop training),
                       :meth:`~RunTracker.heartbeat` (progress that is not a step)
epoch                  :meth:`~RunTracker.epoch_started`, :meth:`~RunTracker.epoch_end`
evaluation             :meth:`~RunTracker.evaluation_started`,
                       :meth:`~RunTracker.evaluation_completed`,
                       :meth:`~RunTracker.evaluation_failed`
checkpoint             :meth:`~RunTracker.checkpoint_saved`,
                       :meth:`~RunTracker.best_checkpoint`,
                       :meth:`~RunTracker.checkpoint_loading`
NaN                    :meth:`~RunTracker.nan_detected` (the loss windows find the rest)
stall                  by itself: the watchdog of ``stall_timeout``
end (the first wins)   :meth:`~RunTracker.completed`, :meth:`~RunTracker.failed`
                       (out of memory, crash), :meth:`~RunTracker.pruned` (a sweep's
                       pruner), :meth:`~RunTracker.interrupted`;
                       :meth:`~RunTracker.close` stops without a word
asks from outside      :meth:`~RunTracker.ask` (stop, checkpoint: any thread),
                       :meth:`~RunTracker.asked` (the adapter takes them at a safe
                       point), :meth:`~RunTracker.answered`, :meth:`~RunTracker.listen`
state                  :meth:`~RunTracker.state` (the :class:`RunState` now),
                       :meth:`~RunTracker.state_dict` / :meth:`~RunTracker.load_state_dict`
                       (what a checkpoint keeps), and the read-only facts ``config``,
                       ``run_id``, ``model_name``, ``manager``, ``rank``, ``world_size``,
                       ``is_global_zero``, ``started``, ``started_at``, ``finished``,
                       ``stop_requested``, ``steps``
=====================  ==============================================================

Every verb is safe to call from a framework hook: it never raises and never waits on a
network. :meth:`RunTracker.on_step` is a few counters and a clock read. The loss windows
of device tensors are read on a reader thread (:mod:`.reader`): no device sync on the
training thread, except with ``stop_on_nan`` (once every ``nan_check_every`` steps) and at
the run's end; those of CPU tensors, which have no device to wait for, at the check.
Events go to the sink's ``post`` where it has one (the manager's admits them on its writer
thread).

Who speaks (the rank policy): run-level events (started, epochs, completion) come from
global rank zero only. Events any rank may be the first to see (a NaN, a crash, a stall)
come from every rank with an id fixed by run, attempt and event type, so several ranks
reporting the same failure make one message: the outbox ignores an id it already holds.

Numbering: the ``epoch`` arguments are 0-based indices, as frameworks count; every field
and text shown to people is 1-based ("Epoch 1/3", ``epoch=1``).

The outcome: the tracker decides how the run ended once, at its end
(:mod:`~afs_callbacks.tracking.ending` says which end reason means which
:class:`~afs_callbacks.outcome.Outcome`), and puts it in the run's state (``status``) and
in the end event's context (``outcome``); the end's title and level follow from it. Every
surface reads that value and decides nothing itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from afs_callbacks import _pending as pending
from afs_callbacks import messages
from afs_callbacks._log import get_logger
from afs_callbacks.events import (
    DEFAULT_LEVELS,
    Attachment,
    EventType,
    NotificationEvent,
    NotificationLevel,
    _new_id,
)
from afs_callbacks.formatting import describe_exception, exception_report
from afs_callbacks.outcome import Outcome
from afs_callbacks.runstate import STALLED, RunState
from afs_callbacks.tracking.asks import (
    ACCEPTED,
    ACTIONS,
    CHECKPOINT,
    DONE,
    REFUSED,
    STOP,
    Ask,
    Asked,
    Listener,
)
from afs_callbacks.tracking.classify import (
    Failure,
    classify,
    cuda_memory_figures,
    interrupt_reason,
    mark_reported,
    oom_device,
    pruned_reason,
)
from afs_callbacks.tracking.cluster import slurm_context
from afs_callbacks.tracking.ending import decide, infer_end_reason, interruption
from afs_callbacks.tracking.metrics import Change, MetricWatch
from afs_callbacks.tracking.nan import LossAccumulator, Window
from afs_callbacks.tracking.points import Curves
from afs_callbacks.tracking.reader import WindowReads
from afs_callbacks.tracking.run import RunRecord, build_state, summary_of
from afs_callbacks.tracking.sink import EventSink
from afs_callbacks.tracking.sweep import Trial, detect, on_tool_stop
from afs_callbacks.tracking.values import floats, one_per_metric
from afs_callbacks.tracking.watchdog import StallWatchdog

log = get_logger(__name__)


@dataclass(frozen=True)
class TrackerConfig:
    """What the tracker reports and how often.

    Args:
        model_name: shown in every message (default: the adapter's guess, e.g. the class).
        run_id: identifies the run (default: generated; adapters may share one across ranks).
        monitor: metric whose improvement/degradation is reported (default: the first of
            val_loss, eval_loss, valid_loss, loss, train_loss that appears).
        mode: ``"min"`` or ``"max"``: which direction is better for ``monitor``.
        min_delta: smallest change that counts as an improvement.
        patience: epochs/evaluations without improvement before LOSS_DEGRADED.
        epoch_every: EPOCH_COMPLETED every N epochs (default: about 10 messages per run).
        batch_every: BATCH_PROCESSED every N steps (0: off).
        nan_check_every: steps between reads of the device-side NaN flag (one sync each).
        stop_on_nan: ask the framework to stop training at the first NaN/Inf.
        stall_timeout: seconds without a step before TRAINING_STALLED (None: off).
        monitors: start the GPU/system/cost monitors for the run.
        chart: attach a loss-curve PNG to the summary (needs the ``charts`` extra).
        flush_timeout: seconds to wait for delivery when the run fails or is interrupted
            (the process is likely about to exit); a completed run never waits.
        sweep: the sweep this run is a trial of (default: ``AFS_SWEEP``, else what the
            tool tells: Optuna, Ray Tune, HF, W&B, SLURM arrays; see :mod:`.sweep`).

    Raises:
        ValueError: a value out of range; the message quotes the bad argument.
    """

    model_name: str | None = None
    run_id: str | None = None
    monitor: str | None = None
    mode: str = "min"
    min_delta: float = 0.0
    patience: int = 3
    epoch_every: int | None = None
    batch_every: int = 0
    nan_check_every: int = 50
    stop_on_nan: bool = False
    stall_timeout: float | None = 1800.0
    monitors: bool = True
    chart: bool = True
    flush_timeout: float = 5.0
    sweep: str | None = None

    def __post_init__(self) -> None:
        check_settings(
            "TrackerConfig",
            mode=self.mode,
            patience=self.patience,
            batch_every=self.batch_every,
            nan_check_every=self.nan_check_every,
            epoch_every=self.epoch_every,
            stall_timeout=self.stall_timeout,
            flush_timeout=self.flush_timeout,
            min_delta=self.min_delta,
        )


def check_settings(owner: str, **values: Any) -> None:
    """Check the tracker settings in ``values`` (absent or None ones are skipped where
    None means "default"); errors name ``owner`` and the argument as the caller wrote it:
    ``AFSNotify(patience=-1) must be >= 0``.

    Raises:
        ValueError: a value out of range.
    """

    def bad(name: str, rule: str) -> ValueError:
        return ValueError(f"{owner}({name}={values[name]!r}) {rule}")

    if "mode" in values and values["mode"] is not None and values["mode"] not in ("min", "max"):
        raise bad("mode", "must be 'min' or 'max'")
    for name in ("patience", "batch_every", "min_delta"):
        value = values.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise bad(name, "must be >= 0")
    for name in ("nan_check_every", "epoch_every"):
        value = values.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise bad(name, "must be an integer >= 1")
    for name in ("stall_timeout", "flush_timeout"):
        value = values.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise bad(name, "must be > 0" + (" (None turns it off)" if name == "stall_timeout" else ""))


def cadence_hit(count: int, planned: int | None, every: int | None) -> bool:
    """Whether the ``count``-th epoch is reported: every ``every``, or about ten per run."""
    if every is None:
        every = max(1, planned // 10) if planned else (1 if count <= 10 else 10)
    return count % every == 0 or count == 1 or (planned is not None and count == planned)


def new_run_id(model: str | None) -> str:
    """A readable, unique run id: ``<model>-<yyyymmdd-hhmmss>-<6 hex>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in (model or "run"))[:40]
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"


#: Seconds between run snapshots sent from the step hook (epochs, evaluations,
#: checkpoints and the end send one at once). The first one after the start goes out
#: :data:`SNAPSHOT_MIN_GAP` after it, so a live card moves from the first steps on.
SNAPSHOT_INTERVAL = 5.0
#: Shortest time between two snapshots for news (see ``RunTracker._snapshot_soon``).
SNAPSHOT_MIN_GAP = 0.5
#: Longest wait for the loss windows being read, where the last verdict is needed (a
#: device read that takes longer is stuck behind a long GPU queue or a broken device).
WINDOW_WAIT_SECONDS = 10.0
#: Longest the stored completion waits for its loss chart before it goes without one
#: (drawing takes a second or more; a process that dies meanwhile never draws it).
CHART_HOLD_SECONDS = 5.0
#: How long an adapter's steps may wait in :attr:`RunTracker.handed` before it counts them,
#: at the run's recent pace: the step hook then appends and compares, and the counting
#: (NaN windows, cadences, snapshots, asks) runs once per window, its code and objects warm.
#: Run between torch's kernels, that code costs a fast step 7-10 µs when it runs every step
#: (issue #27, ``benchmarks/bench_wall_clock.py --in-situ``). News a tenth of a second late
#: reads the same to a person.
STEP_WINDOW_SECONDS = 0.1
_NEVER = math.inf
_RUN_NAMESPACE = uuid.UUID("6f0d3c1e-8a0b-4d52-9d4e-5f1a2b3c4d5e")
#: Epoch starts remembered to tell which epoch a step was in (a loss window spans a few
#: steps, so only the last epochs matter).
_EPOCH_STARTS_KEPT = 16
#: What a pickled tracker (``ddp_spawn``) leaves behind and builds afresh in its process.
_PER_PROCESS = (
    "_lock",
    "_watchdog",
    "_monitors",
    "_accumulator",
    "_reads",
    "_update_run",
    "_listener",
    "_rules",
)

# The runs of this process that started and have not ended: ``watch()`` and the
# excepthook fallback report a crash on the run a callback already announced. Weak
# references: a forgotten tracker does not stay alive.
_active: weakref.WeakSet[RunTracker] = weakref.WeakSet()


class RuleReader(Protocol):
    """What the tracker hands its rules (``afs_callbacks.rules.RuleWatch``)."""

    def observe(self, values: Mapping[str, float], source: str, step: int, epoch: int | None) -> None:
        """``values`` just processed; ``source``: ``metrics``, ``window`` or ``figures``."""


class SweepVoice(Protocol):
    """What speaks for the sweep a run is a trial of (``afs_callbacks.sweeps``: its start
    and summary when no ``Sweep`` block does), told of each trial's start and end."""

    def trial_started(self, trial: Trial, sink: EventSink) -> None:
        """A trial starts (before its own start event)."""

    def trial_ended(self, trial: Trial, sink: EventSink) -> None:
        """A trial ended (its end is stored or on its way)."""


def active_tracker() -> RunTracker | None:
    """The most recently started run of this process that has not ended, if any."""
    running = [tracker for tracker in list(_active) if not tracker.finished]
    return max(running, key=lambda t: t.started_at or 0.0) if running else None


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


class RunTracker:
    """Turns training signals into events and snapshots for one run.

    Args:
        manager: the sink events go to (anything with ``emit(event)``, optionally
            ``update_run(state, points)``); None takes ``NotificationManager.shared()``
            on first use.
        config: what to report (see :class:`TrackerConfig`).

    Example::

        tracker = RunTracker(config=TrackerConfig(model_name="tiny-bert"))
        tracker.start(epochs=3, batch_size=32)
        for step, batch in enumerate(loader, 1):
            loss = train_step(batch)
            if tracker.on_step(step, loss):
                break
        tracker.completed({"val_loss": 0.12})
    """

    # Slots, not a __dict__: the step hook reads a dozen of these attributes, and CPython's
    # fast path for attributes in a dict-backed instance ends at 30 of them (3.11: past it
    # every read costs ~20 ns more; on_step with no loss went from 0.24 to 0.28 µs). Slot
    # reads stay fast however many facts the tracker holds. A new attribute is added here.
    __slots__ = (
        "__weakref__",  # the process's set of active runs holds trackers weakly
        "_accumulator",
        "_asks",
        "_attempt",
        "_attention",
        "_batch_every",
        "_config",
        "_curves",
        "_epoch",
        "_epoch_starts",
        "_finished",
        "_handed",
        "_handed_moved",
        "_handed_seen",
        "_is_global_zero",
        "_last_progress",
        "_last_step",
        "_listener",
        "_lock",
        "_metric",
        "_monitors",
        "_nan_every",
        "_nan_reported",
        "_next_snapshot",
        "_pace",
        "_rank",
        "_reads",
        "_record",
        "_resumed",
        "_rules",
        "_run_id",
        "_run_id_fixed",
        "_sink",
        "_snapshot_at",
        "_stalled_seen",
        "_started_at",
        "_steps",
        "_stop_requested",
        "_stopped_by",
        "_sweep",
        "_sweep_voice",
        "_update_run",
        "_watchdog",
        "_world_size",
    )

    def __init__(self, manager: EventSink | None = None, config: TrackerConfig | None = None) -> None:
        self._config = config or TrackerConfig()
        self._sink = manager
        self._run_id = self._config.run_id or new_run_id(self._config.model_name)
        # A run id given, shared by rank zero or restored from a checkpoint is never
        # replaced; a generated one is renamed once the model's name is known.
        self._run_id_fixed = self._config.run_id is not None
        self._rank, self._world_size, self._is_global_zero = 0, 1, True
        self._metric = self._new_watch()
        self._resumed = False
        # How many times this run was (re)started from a checkpoint: part of the ids of
        # once-per-run events, so a failure after a resume is not taken for the old one.
        self._attempt = 0
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self._finished = False
        # The step hook's counters: one plain attribute each (the rest is in the record).
        self._steps = 0
        self._last_step = 0
        self._epoch: int | None = None  # 0-based index of the current/last epoch
        # (first step, 0-based epoch) of the last epochs begun: which epoch a step was in.
        self._epoch_starts: list[tuple[int, int]] = []
        self._record = RunRecord()
        self._nan_reported = False
        self._stalled_seen = False
        self._stop_requested = False
        # What the step hook returns: a NaN stop or an ask from outside waits for the
        # adapter (one attribute read per step, whatever else happens).
        self._attention = False
        self._asks: list[Ask] = []
        self._listener: Listener | None = None
        self._stopped_by: Ask | None = None
        self._rules: RuleReader | None = None
        self._sweep_voice: SweepVoice | None = None
        self._sweep: Trial | None = None  # the sweep this run is a trial of, found at start
        self._accumulator = LossAccumulator()
        self._reads = WindowReads()
        self._curves = Curves()
        self._last_progress = time.monotonic()
        self._handed: list[Any] = []
        self._handed_seen = 0  # its length at the stall watchdog's last look, and when it moved
        self._handed_moved = -_NEVER
        self._pace: tuple[int, float] | None = None  # (steps, monotonic) at the last count
        # What runs beside the run: both start with it and stop at every end path.
        self._watchdog: StallWatchdog | None = None
        self._monitors: Any = None
        self._update_run: Callable[..., Any] | None = None
        self._next_snapshot = _NEVER
        self._snapshot_at = -_NEVER  # when the last snapshot went out (monotonic)
        self._cache_cadence()

    # Where the run stands ---------------------------------------------------------------

    def bind(
        self, *, rank: int | None = None, world_size: int | None = None, is_global_zero: bool | None = None
    ) -> None:
        """Say where this process stands in a distributed run (default: rank 0 of 1).

        ``is_global_zero`` defaults to ``rank == 0``.
        """
        if rank is not None:
            self._rank = int(rank)
        if world_size is not None:
            self._world_size = max(1, int(world_size))
        self._is_global_zero = (self._rank == 0) if is_global_zero is None else bool(is_global_zero)

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

    # Start ------------------------------------------------------------------------------

    @_guarded
    def start(
        self,
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int | None = None,
        devices: Any = None,
        world_size: int | None = None,
        resumed_from: str | None = None,
        output_dir: str | None = None,
        samples_per_step: int | None = None,
        smoke_run: bool = False,
        trial: Any = None,
        **extra: Any,
    ) -> None:
        """Training begins (TRAINING_STARTED, or TRAINING_RESUMED after a checkpoint).

        ``samples_per_step``: samples one optimizer step consumes (batch size times
        accumulated batches; default ``batch_size``), for samples/s. ``smoke_run``: a
        framework's quick check (Lightning's ``fast_dev_run``), said in the titles. The
        SLURM job, array task and node list join the context (``extra``) by themselves.
        ``trial``: the Optuna trial, or HF's ``TrainerState``, this run is a trial of
        (found by itself where the tool tells; see :mod:`.sweep`): every event then names
        the sweep, the trial and its parameters.

        A second call for the same run (HF's ``auto_find_batch_size`` restarts the loop)
        only updates the plan.
        """
        record = self._record
        record.plan(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            world_size=world_size,
            output_dir=output_dir,
            samples_per_step=samples_per_step,
        )
        self._last_progress = time.monotonic()
        if self._started_at is not None:
            return
        self._started_at = time.monotonic()
        record.started_wall = time.time()
        if smoke_run:
            extra["smoke_run"] = True
        extra = {**slurm_context(), **extra}
        self._sweep = detect(sweep=self._config.sweep, trial=trial, run_id=self._run_id)
        if self._sweep is not None:
            extra.update(sweep=self._sweep.sweep, trial=self._sweep.trial)
            if self._is_global_zero:
                on_tool_stop(functools.partial(_tool_stopped, weakref.ref(self)))
                if self._sweep_voice is not None:
                    self._sweep_voice.trial_started(self._sweep, self.manager)
        record.extra.update({k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool))})
        _active.add(self)
        resumed = self._resumed or resumed_from is not None
        if resumed_from is not None:
            self.checkpoint_loading(resumed_from)
        # The run's first state is handed over before its start event: the writer then
        # stores the row in the same transaction as the start or an earlier one, so a
        # process killed right after its start was stored still has a row for the death
        # watcher (and the next run) to find. Taken after the start, it could miss the
        # writer's turn and a kill in between left a start and never a death notice.
        self._update_run = getattr(self.manager, "update_run", None) if self._is_global_zero else None
        self._snapshot()
        text = messages.training_started(
            self.model_name,
            self._run_id,
            host=socket.gethostname(),
            plan_text=messages.plan(epochs, max_steps, batch_size, world_size),
            resumed=resumed,
        )
        if smoke_run:
            text = messages.smoke_run(text)
        self._emit(
            EventType.TRAINING_RESUMED if resumed else EventType.TRAINING_STARTED,
            text,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            device=None if devices is None else str(devices),
            world_size=world_size,
            resumed_from=resumed_from,
            **extra,
        )
        if self._config.stall_timeout is not None:
            self._start_watchdog(self._config.stall_timeout)
        if self._config.monitors and self._is_global_zero:
            self._start_monitors(output_dir, world_size)
        if self._update_run is not None:  # the next one soon: a live card moves from the first steps
            self._next_snapshot = self._snapshot_at + min(SNAPSHOT_MIN_GAP, SNAPSHOT_INTERVAL)

    # Step -------------------------------------------------------------------------------

    def on_step(self, step: int, loss: Any = None, grad_norm: Any = None) -> bool:
        """One optimisation step finished. Returns True when the adapter should look: a NaN
        with ``stop_on_nan`` (:attr:`stop_requested`) or an ask from outside (:meth:`asked`).

        The loss may be a device tensor: it is kept as is, and each window of
        ``nan_check_every`` steps is read on the reader thread, never here.
        """
        try:
            now = time.monotonic()
            self._last_progress = now
            self._steps += 1
            self._last_step = step
            if loss is not None and self._accumulator.add(step, loss):
                self._report_nan(step, "loss", loss)
            if grad_norm is not None and isinstance(grad_norm, float) and not math.isfinite(grad_norm):
                self._report_nan(step, "grad_norm", grad_norm)
            if self._steps % self._nan_every == 0:
                self._read_window()
            elif self._reads.landed:  # a window's verdict came in from the reader thread
                self._take_windows(self._reads.ready())
            if self._batch_every and step % self._batch_every == 0:
                self._batch_processed(step)
            if now >= self._next_snapshot:
                self._snapshot()
            return self._attention
        except Exception:
            log.exception("afs-callbacks: on_step failed; training continues")
            return False

    def on_steps(self, first_step: int, losses: Sequence[Any]) -> bool:
        """Steps ``first_step``, ``first_step + 1``, ... finished, one loss each (None: no
        loss): what :meth:`on_step` does for each, in one call. Returns what the last would.

        A window of tensor losses with no loss check and no batch cadence before its last
        step (the windows :meth:`steps_to_count` sizes) is recorded at once, and only its
        last step goes through :meth:`on_step`: the others would only be appended and
        counted there. Anything else is taken step by step."""
        count = len(losses)
        try:
            at_once = (
                count > 1
                and not self._batch_every
                and self._steps_to_check() >= count
                and self._accumulator.add_tensors(first_step, losses[:-1])
            )
        except Exception:  # never raises, as on_step does not: these steps go one by one
            log.exception("afs-callbacks: on_steps failed; training continues")
            at_once = False
        if at_once:
            self._steps += count - 1  # the last step's on_step counts itself and sets the rest
            return self.on_step(first_step + count - 1, loss=losses[-1])
        for offset, loss in enumerate(losses):
            self.on_step(first_step + offset, loss=loss)
        return self._attention

    @property
    def handed(self) -> list[Any]:
        """Steps a framework adapter has handed over and not counted yet, one item each in
        the adapter's own terms (its step hook appends; nothing here reads an item).

        The adapter counts them with :meth:`on_steps` when their number reaches
        :meth:`steps_to_count`, and before any other call into the run, so that everything
        else sees every step. Meanwhile the list's growth is progress to the stall
        watchdog. The same list for the whole run; emptied in place."""
        return self._handed

    def steps_to_count(self) -> int:
        """How many steps an adapter may hand over (:attr:`handed`) before it counts them:
        as many as take :data:`STEP_WINDOW_SECONDS` at the pace since the last call, never
        past the next loss check (a NaN stop acts at the check's step), and one until the
        pace is known. Called after each count, on the training thread."""
        now, steps = time.monotonic(), self._steps
        pace, self._pace = self._pace, (steps, now)
        if pace is None or steps <= pace[0]:
            return 1
        per_step = (now - pace[1]) / (steps - pace[0])
        to_check = self._steps_to_check()
        if per_step <= 0:
            return to_check
        return max(1, min(to_check, int(STEP_WINDOW_SECONDS / per_step)))

    def _steps_to_check(self) -> int:
        """Steps from the last one counted to the next loss check, that one included."""
        return self._nan_every - self._steps % self._nan_every

    def last_progress(self) -> float:
        """When the run last moved (monotonic), for the stall watchdog's thread only: a step
        counted, an evaluation batch, or a step handed over since the watchdog's last look."""
        handed = len(self._handed)
        if handed != self._handed_seen:
            self._handed_seen = handed
            self._handed_moved = time.monotonic()
        return max(self._last_progress, self._handed_moved)

    def heartbeat(self) -> None:
        """Progress that is not a training step (an evaluation batch): keeps the stall
        watchdog quiet."""
        self._last_progress = time.monotonic()

    # Epoch, evaluation, checkpoint, NaN -------------------------------------------------

    def epoch_started(self, epoch: int) -> None:
        """An epoch (0-based index) begins: messages during it can name it."""
        if self._epoch != epoch or not self._epoch_starts:
            starts = self._epoch_starts
            starts.append((self._last_step + 1, epoch))
            if len(starts) > _EPOCH_STARTS_KEPT:
                del starts[0]
        self._epoch = epoch
        self.heartbeat()

    @_guarded
    def epoch_end(self, epoch: int, metrics: Mapping[str, Any] | None = None) -> None:
        """The epoch with 0-based index ``epoch`` finished with ``metrics`` (host floats)."""
        record = self._record
        self._epoch = epoch
        record.epochs_done = epoch + 1
        record.epochs_seen += 1
        # Loss windows follow the step count, not epochs: take what has come in.
        if self._reads.landed:
            self._take_windows(self._reads.ready())
        values = self._observe(metrics or {})
        if cadence_hit(record.epochs_seen, record.planned_epochs, self._config.epoch_every):
            text = messages.epoch_completed(self.model_name, epoch + 1, record.planned_epochs, values)
            self._emit(
                EventType.EPOCH_COMPLETED,
                text,
                epoch=epoch + 1,
                step=self._last_step,
                metrics=values,
                key=f"epoch-{epoch + 1}",
            )
        self._snapshot_soon()

    @_guarded
    def evaluation_started(self, *, in_training: bool = False) -> None:
        """An evaluation begins (reported only for standalone evaluations)."""
        self.heartbeat()
        if not in_training:
            self._emit(
                EventType.EVALUATION_STARTED, messages.evaluation_started(self.model_name, self._run_id)
            )

    @_guarded
    def evaluation_completed(self, metrics: Mapping[str, Any], *, in_training: bool = False) -> None:
        """An evaluation finished. Inside training its metrics feed the monitored metric and
        the message (VALIDATION_COMPLETED: progress, pushed only at ``verbose``) follows the
        epoch cadence; a standalone evaluation (after training, a ``validate()`` call) is
        EVALUATION_COMPLETED, always reported, and judges nothing."""
        self.heartbeat()
        record = self._record
        if in_training:
            values = self._observe(metrics)
            record.evaluations_seen += 1
            self._snapshot_soon()
            if not cadence_hit(record.evaluations_seen, record.planned_epochs, self._config.epoch_every):
                return
        else:
            values = floats(metrics)
        self._emit(
            EventType.VALIDATION_COMPLETED if in_training else EventType.EVALUATION_COMPLETED,
            messages.evaluation_completed(self.model_name, values),
            metrics=values,
            epoch=self._epoch_number(),
            step=self._last_step,
            key=f"eval-{record.evaluations_seen}-{self._last_step}",
        )

    @_guarded
    def evaluation_failed(self, error: BaseException | str) -> None:
        """An evaluation crashed."""
        text = describe_exception(error) if isinstance(error, BaseException) else str(error)
        self._emit(
            EventType.EVALUATION_FAILED,
            messages.evaluation_failed(self.model_name, text),
            error=_first_line(text),
            rank_any=True,
        )

    @_guarded
    def checkpoint_saved(self, path: str, step: int | None = None, *, best: bool = False) -> None:
        """A checkpoint was written to ``path`` (``best``: it holds the best model so far).
        Reported at the epoch cadence, so a run that saves every epoch does not send a
        message per epoch; every one is in the run's snapshot."""
        record = self._record
        record.checkpoints_seen += 1
        record.last_checkpoint = str(path)
        if best:
            record.best_checkpoint = str(path)
        self._snapshot_soon()
        if not cadence_hit(record.checkpoints_seen, record.planned_epochs, self._config.epoch_every):
            return
        self._emit(
            EventType.CHECKPOINT_SAVED,
            messages.checkpoint_saved(self.model_name, str(path)),
            checkpoint=str(path),
            step=self._last_step if step is None else step,
            epoch=self._epoch_number(),
            key=str(path),
        )

    def best_checkpoint(self, path: str | None) -> None:
        """Name the best checkpoint so far (the framework's own choice, e.g.
        ``ModelCheckpoint.best_model_path``): it goes in the summary."""
        if path:
            self._record.best_checkpoint = str(path)

    @_guarded
    def checkpoint_loading(self, path: str) -> None:
        """Training is restoring from ``path``."""
        self._resumed = True
        self._emit(
            EventType.CHECKPOINT_LOADING,
            messages.checkpoint_loading(self.model_name, str(path)),
            checkpoint=str(path),
        )

    @_guarded
    def nan_detected(self, step: int, what: str = "loss", value: float | None = None) -> None:
        """``what`` became NaN/Inf (``value``, when known) at ``step`` (reported once per
        run: the first one a run sees)."""
        self._report_nan(step, what, value)

    # Asks from outside: stop, checkpoint --------------------------------------------

    def ask(
        self,
        action: str,
        *,
        source: str,
        actor: str,
        reason: str = "",
        command_id: str | None = None,
    ) -> bool:
        """Ask the run to ``stop`` (gracefully: the current step finishes, a checkpoint is
        saved where the run has a checkpointer) or to save a ``checkpoint`` now; the adapter
        acts at its next step. Safe from any thread. False when the run is not running.

        ``source`` and ``actor`` say who asked (the end reads "stopped by ``actor`` via
        ``source``"); ``reason`` why (a rule's condition).

        Raises:
            ValueError: ``action`` is neither ``stop`` nor ``checkpoint``.
        """
        if action not in ACTIONS:
            raise ValueError(f"RunTracker.ask({action!r}): the action must be one of {', '.join(ACTIONS)}")
        with self._lock:
            if self._finished or self._started_at is None:
                return False
            self._asks.append(Ask(action, source, actor, reason, command_id))
            self._attention = True
        return True

    def asks_waiting(self) -> tuple[bool, bool]:
        """(a stop waits, a checkpoint waits), without taking them (DDP ranks agree on these
        before rank zero takes them)."""
        with self._lock:
            return (
                any(a.action == STOP for a in self._asks),
                any(a.action == CHECKPOINT for a in self._asks),
            )

    def asked(self, *, stop: bool = True, checkpoint: bool = True) -> Asked:
        """Take what was asked since the last call (the adapter, at a safe point); only
        stops or only checkpoints with ``checkpoint=False`` / ``stop=False`` (DDP ranks take
        what they agreed on, not what arrived meanwhile). A stop is acknowledged here
        ("stopping after step N") and reported done at the run's end; a second ask of the
        same kind is answered by the first."""
        kinds = {kind for kind, wanted in ((STOP, stop), (CHECKPOINT, checkpoint)) if wanted}
        with self._lock:
            asks = [a for a in self._asks if a.action in kinds]
            self._asks = [a for a in self._asks if a.action not in kinds]
            self._attention = self._stop_requested or bool(self._asks)
        first_stop = next((a for a in asks if a.action == STOP), None)
        first_checkpoint = next((a for a in asks if a.action == CHECKPOINT), None)
        for extra in asks:
            if extra is not first_stop and extra is not first_checkpoint:
                self._tell(extra, DONE, f"answered together with the {extra.action} asked before it")
        if first_stop is not None:
            if self._stopped_by is None:
                self._stopped_by = first_stop
                self._tell(first_stop, ACCEPTED, f"stopping after step {self._last_step:,}")
            else:
                self._tell(first_stop, DONE, "the run is already stopping")
                first_stop = None
        return Asked(first_stop, first_checkpoint)

    def answered(self, ask: Ask, *, checkpoint: str | None = None, error: str | None = None) -> None:
        """The adapter acted on ``ask``: it saved ``checkpoint`` (a path; the adapter reports
        the save itself, with :meth:`checkpoint_saved`), or could not (``error``, in words)."""
        if error is not None:
            self._tell(ask, REFUSED if ask.action == CHECKPOINT else ACCEPTED, error)
            return
        if ask.action == CHECKPOINT:
            where = f": {checkpoint}" if checkpoint else ""
            self._tell(ask, DONE, f"checkpoint saved at step {self._last_step:,}{where}")
        elif checkpoint is not None:
            self._tell(ask, ACCEPTED, f"checkpoint saved at step {self._last_step:,}: {checkpoint}; stopping")

    def listen(self, listener: Listener | None) -> None:
        """Call ``listener(ask, state, detail)`` when an ask is taken, done or refused (the
        run's control records it; called on the training thread: it must not block)."""
        self._listener = listener

    def note_control(self, facts: dict[str, Any]) -> None:
        """What the run's control tells people (the surfaces it takes commands from, the
        latest commands): in the next snapshot, for the card and the dashboard."""
        self._record.control = dict(facts)
        if self._update_run is not None:
            self._next_snapshot = min(self._next_snapshot, time.monotonic())

    def use_rules(self, rules: RuleReader | None) -> None:
        """Hand ``rules`` (``afs_callbacks.rules``: a started run on global rank zero) what
        the run processes anyway: the metrics of each epoch and evaluation, each loss
        window's mean (as ``loss``), and the run's figures at each snapshot. Nothing per
        step, no device read."""
        self._rules = rules

    def use_sweep_voice(self, voice: SweepVoice | None) -> None:
        """Tell ``voice`` when this run, found to be a sweep's trial at :meth:`start`,
        starts and ends (set before the run starts; on global rank zero only)."""
        self._sweep_voice = voice

    def _consult_rules(self, values: Mapping[str, float] | None, source: str) -> None:
        """The one point where the run's rules see what it learnt (None: its figures now)."""
        rules = self._rules
        if rules is None or self._finished:
            return
        try:
            if values is None:
                monitors = self._monitors
                figures = monitors.figures() if monitors is not None else {}
                values = {"elapsed": self._duration(), "step": float(self._last_step), **figures}
                if self._epoch is not None:
                    values["epoch"] = float(self._epoch + 1)
            rules.observe(values, source, self._last_step, self._epoch_number())
        except Exception:
            log.exception("afs-callbacks: the run's rules failed; training continues")

    def _tell(self, ask: Ask, state: str, detail: str) -> None:
        listener = self._listener
        if listener is not None:
            try:
                listener(ask, state, detail)
            except Exception:
                log.exception("afs-callbacks: recording the answer to a %s failed", ask.action)

    # The ends: the first wins; each stops the watchdog before anything else ------------

    @_guarded
    def completed(
        self,
        metrics: Mapping[str, Any] | None = None,
        *,
        end_reason: str | None = None,
        best_checkpoint: str | None = None,
        outcome: Outcome | str | None = None,
    ) -> None:
        """Training ended without an error: TRAINING_COMPLETED with the run's summary and
        chart, titled by its outcome.

        Args:
            metrics: final metrics not reported at an epoch end already.
            end_reason: why the run ended, as the framework tells (``max_epochs``,
                ``max_steps``, ``max_time``, ``early_stopping (val_loss, patience 3)``,
                ``should_stop``...); default: inferred from the plan or a NaN stop.
            best_checkpoint: the best checkpoint's path, for the summary.
            outcome: how the run ended, where the caller knows better than the reason's
                words (:mod:`~afs_callbacks.tracking.ending`): ``pruned`` (a sweep's pruner
                ended the trial), ``stopped_by_command`` (``afs-notify stop``, the
                dashboard, a chat button), ``stopped_by_rule`` (a rule's stop action), or
                any other :class:`~afs_callbacks.outcome.Outcome` that ends a run without
                an error. Default: decided from ``end_reason`` and what the run saw.

        The outcome decided (see :func:`~afs_callbacks.tracking.ending.decide`): a
        ``stop_on_nan``/TerminateOnNaN stop is ``stopped_on_problem``; a NaN/Inf (or a
        stall) seen and survived ``completed_with_warnings``; the user's own stopping rule
        ``stopped_early``; else ``completed``. Returns once the end is stored (a bounded
        wait on the outbox, never on a network: the process may end right after);
        delivery and the chart follow in the background.

        An ``outcome`` that is not one is logged and the decided one used (a hook never
        raises).
        """
        if not self._begin_end():
            return
        if metrics:
            self._observe(metrics)
        record = self._record
        if best_checkpoint:
            record.best_checkpoint = str(best_checkpoint)
        stopped = self._stop_requested and self._config.stop_on_nan
        record.end_reason = end_reason or infer_end_reason(
            planned_epochs=record.planned_epochs,
            epochs_done=record.epochs_done,
            max_steps=record.max_steps,
            step=self._last_step,
            stopped_on_nan=stopped,
        )
        commanded = self._stopped_by if not stopped else None
        if commanded is not None:
            record.end_reason = commanded.words  # "stopped by alice@gpu-7 via cli"
            asked = Outcome.STOPPED_BY_RULE if commanded.source == "rule" else Outcome.STOPPED_BY_COMMAND
        ended = (
            _given_outcome(outcome)
            or (asked if commanded is not None else None)
            or decide(record.end_reason, warnings=self._nan_reported or self._stalled_seen)
        )
        duration = self._duration()
        record.end(ended, duration)
        monitors = self._monitor_figures()
        summary = summary_of(
            record,
            duration=duration,
            steps=self._steps,
            monitor=self._metric.name,
            best=self._metric.best,
            best_epoch=self._metric.best_epoch,
            extra_lines=self._monitor_lines() + self._warning_lines(),
        )
        text = messages.training_completed(
            self.model_name, self._run_id, summary, outcome=ended, non_finite=record.non_finite
        )
        if record.extra.get("smoke_run"):
            text = messages.smoke_run(text)
        record.summary_text = text.body
        fields: dict[str, Any] = {
            "outcome": ended.value,
            "duration": duration,
            "steps": self._steps,
            "step": self._last_step,
            "epoch": record.epochs_done,
            "epochs_run": record.epochs_done,
            "steps_per_second": summary.steps_per_second,
            "samples_per_second": summary.samples_per_second,
            "end_reason": record.end_reason,
            "best_checkpoint": record.best_checkpoint,
            **self._non_finite_fields(),
            **monitors,
        }
        if commanded is not None:
            fields["stopped_by"] = {"actor": commanded.actor, "via": commanded.source}
        if self._metric.best is not None:
            fields["best"] = {
                self._metric.name or "metric": self._metric.best,
                "epoch": self._metric.best_epoch,
            }
        event = self._event(
            EventType.TRAINING_COMPLETED,
            text,
            level=_end_level(ended, EventType.TRAINING_COMPLETED),
            metrics=one_per_metric(record.last_metrics, keep=self._metric.name),
            **fields,
        )
        if event is not None:
            self._store_end(event)
        self._finish(flush=False)

    @_guarded
    def failed(self, error: BaseException) -> None:
        """Training raised ``error``: OUT_OF_MEMORY, TRAINING_INTERRUPTED or TRAINING_FAILED
        (outcome ``failed``; an interruption is ``interrupted`` or ``preempted``).

        Delivery is flushed (bounded by ``flush_timeout``): the process is likely about to
        exit. Only the first end of a run is reported.
        """
        mark_reported(error)  # on this run, whichever of the calls below reports it
        kind = classify(error)
        if kind is Failure.INTERRUPTED:
            self.interrupted(interrupt_reason(error))
            return
        if kind is Failure.PRUNED:
            self.pruned(pruned_reason(error))
            return
        if not self._begin_end():
            return
        report = exception_report(error)
        record = self._record
        duration = self._duration()
        record.end(Outcome.FAILED, duration)
        record.error_type, record.error = type(error).__name__, report.headline
        context: dict[str, Any] = {
            "outcome": Outcome.FAILED.value,
            "error": record.error,
            "error_type": record.error_type,
            "step": self._last_step,
            "epoch": self._epoch_number(),
            "duration": duration,
            **self._non_finite_fields(),
            # The whole traceback, for the history, the dashboard and structured payloads;
            # the message itself carries the error and the user's frames.
            "traceback": report.traceback,
        }
        oom = kind is Failure.OUT_OF_MEMORY
        if oom:
            device = oom_device(error)
            # A dict display, not keywords: the figures repeat "device" (and keep its value).
            context.update({"device": device, **cuda_memory_figures(device), **self._monitor_figures()})
        event_type = EventType.OUT_OF_MEMORY if oom else EventType.TRAINING_FAILED
        self._emit(
            event_type,
            messages.training_failed(
                self.model_name, report, out_of_memory=oom, step=self._last_step, epoch=self._epoch_number()
            ),
            rank_any=True,
            level=_end_level(Outcome.FAILED, event_type),
            **context,
        )
        self._finish(flush=True)

    @_guarded
    def pruned(self, reason: str = "pruned by the sweep's pruner") -> None:
        """A sweep's pruner ended this trial (Optuna's ``TrialPruned``, a Ray Tune
        scheduler, HF's hyperparameter search): a normal part of a sweep, never a failure.
        Reported as a TRAINING_COMPLETED at info level with ``outcome`` ``pruned``, the
        summary so far and ``reason``, no traceback (:meth:`failed` sends a
        ``TrialPruned`` here)."""
        self.completed(end_reason=reason, outcome=Outcome.PRUNED)

    @_guarded
    def interrupted(self, reason: str = "interrupted", *, outcome: Outcome | str | None = None) -> None:
        """Training was stopped from outside: Ctrl-C (outcome ``interrupted``), SIGTERM, a
        scheduler's preemption or a SLURM requeue (``preempted``), as ``reason`` tells;
        ``outcome`` names it where the reason's words do not."""
        if not self._begin_end():
            return
        ended = _given_outcome(outcome) or interruption(reason)
        duration = self._duration()
        self._record.end(ended, duration)
        self._record.end_reason = reason
        self._emit(
            EventType.TRAINING_INTERRUPTED,
            messages.training_interrupted(self.model_name, reason, self._last_step, outcome=ended),
            outcome=ended.value,
            reason=reason,
            step=self._last_step,
            epoch=self._epoch_number(),
            duration=duration,
            rank_any=True,
            level=_end_level(ended, EventType.TRAINING_INTERRUPTED),
            **self._non_finite_fields(),
        )
        self._finish(flush=True)

    @_guarded
    def close(self) -> None:
        """Stop the watchdog and monitors without reporting anything."""
        self._stop_beside()

    # State ------------------------------------------------------------------------------

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
        return self._rank

    @property
    def world_size(self) -> int:
        """How many processes train this run."""
        return self._world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this process speaks for the run."""
        return self._is_global_zero

    @property
    def manager(self) -> EventSink:
        """The sink events go to (``NotificationManager.shared()`` on first use)."""
        if self._sink is None:
            from afs_callbacks.manager import NotificationManager  # only the default needs it

            self._sink = NotificationManager.shared()
        return self._sink

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

    @property
    def outcome(self) -> Outcome | None:
        """How the run ended (decided once, at its end); None while it runs."""
        return self._record.outcome

    def state(self, status: str | None = None) -> RunState:
        """A snapshot of the run now (what the sink's ``update_run`` receives); its
        ``status`` is the outcome's value once the run ended."""
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
            monitors=self._monitor_figures(),
            # The watchdog's clock (monotonic) as wall time: what a stall is measured from.
            last_step_at=time.time() - (time.monotonic() - self._last_progress),
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
        state = {name: getattr(self, name) for name in RunTracker.__slots__ if hasattr(self, name)}
        state.update(getattr(self, "__dict__", {}))  # a subclass's own attributes
        for name in ("__weakref__", *_PER_PROCESS):
            state.pop(name, None)
        state["_sink"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._lock = threading.Lock()
        self._watchdog = None
        self._monitors = None
        self._accumulator = LossAccumulator()
        self._reads = WindowReads()
        self._update_run = None
        self._listener = None
        self._rules = None

    # Events -----------------------------------------------------------------------------

    def _emit(self, event_type: EventType, text: messages.Message, **options: Any) -> None:
        """Hand one event to the sink, if this rank speaks for it (``options``: those of
        :meth:`_event`)."""
        event = self._event(event_type, text, **options)
        if event is not None:
            sink = self.manager
            hand_over = getattr(sink, "post", None) or sink.emit  # post: admitted off this thread
            hand_over(event)

    def _event(
        self,
        event_type: EventType,
        text: messages.Message,
        *,
        rank_any: bool = False,
        attachments: tuple[Attachment, ...] = (),
        level: NotificationLevel | None = None,
        key: str | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """The event as it would be handed over; None when this rank does not speak for it
        (the rank policy: see the module's docstring)."""
        if not (self._is_global_zero or rank_any):
            return None
        base: dict[str, Any] = {"model": self.model_name, "run_id": self._run_id}
        body = text.body
        if self._sweep is not None:  # every message of a trial names it and its parameters
            base.update(self._sweep.context())
            body = f"{body}\n{self._sweep.line()}" if body else self._sweep.line()
        if not self._is_global_zero:
            base["rank"] = self._rank
        fields = {name: value for name, value in {**base, **context}.items() if value is not None}
        # A rank-any event's id is shared by every rank; any other is fresh from the events
        # module's own generator (never the ``random`` the training code seeds).
        if rank_any:
            event_id = uuid.uuid5(_RUN_NAMESPACE, f"{self._run_id}|{self._attempt}|{event_type.value}").hex
        else:
            event_id = _new_id()
        return NotificationEvent(
            event_type,
            level or DEFAULT_LEVELS[event_type],
            text.title,
            body,
            fields,
            attachments,
            id=event_id,
            key=key or "",
        )

    def _report_nan(
        self,
        step: int,
        what: str,
        value: float | None = None,
        *,
        seen_step: int | None = None,
        at_epoch_end: bool = False,
    ) -> None:
        """Report the run's first NaN/Inf: ``what`` became ``value`` at ``step`` (found at
        ``seen_step`` when later; ``at_epoch_end``: a metric of the epoch's end)."""
        if self._nan_reported:  # read without the lock: once reported, always reported
            return
        if at_epoch_end and not self._finished:
            # A metric of the epoch's end (val_loss) may have turned NaN because the train
            # loss did earlier, in a window not read yet: read it first, so the message
            # names the first bad value.
            self._read_window(wait=True)
        with self._lock:
            if self._nan_reported:
                return
            self._nan_reported = True
        if self._config.stop_on_nan:
            self._stop_requested = self._attention = True
        found = messages.NonFinite(
            metric=what,
            value=value,
            step=step,
            epoch=self._epoch_at(step),
            seen_step=self._last_step if seen_step is None else seen_step,
            at_epoch_end=at_epoch_end,
        )
        self._record.non_finite = found
        self._emit(
            EventType.NAN_DETECTED,
            messages.nan_detected(self.model_name, found, will_stop=self._config.stop_on_nan),
            step=step,
            epoch=found.epoch,
            metric=what,
            value=None if value is None else found.kind,
            seen_step=found.seen_step if found.seen_step != step else None,
            rank_any=True,
        )
        self._snapshot_soon()

    def _non_finite_fields(self) -> dict[str, Any]:
        """The first NaN/Inf in an end event's context: what, where (None when none)."""
        found = self._record.non_finite
        if found is None:
            return {}
        return {"non_finite": found.words(), "non_finite_metric": found.metric, "non_finite_step": found.step}

    def _warning_lines(self) -> list[str]:
        """What a completion warns about besides a NaN/Inf (which its first line names)."""
        return ["The run stalled at least once (see the history)."] if self._stalled_seen else []

    def _epoch_at(self, step: int) -> int | None:
        """The 1-based epoch ``step`` was in (the current one when not known)."""
        for first, epoch in reversed(self._epoch_starts):
            if step >= first:
                return epoch + 1
        return self._epoch_number()

    def _batch_processed(self, step: int) -> None:
        self._read_window(wait=True)
        losses = self._curves.losses
        loss = losses[-1][1] if losses else None
        self._emit(
            EventType.BATCH_PROCESSED,
            messages.batch_processed(self.model_name, step, loss),
            step=step,
            epoch=self._epoch_number(),
            metrics={"loss": loss} if loss is not None else None,
            key=f"step-{step}",
        )

    def _observe(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Record metrics; report NaN and improvement/degradation of the monitored one.
        Returns them as people read them (one value per metric: see ``one_per_metric``)."""
        raw = floats(metrics)
        self._record.last_metrics.update(raw)
        values = one_per_metric(raw, keep=self._metric.name or self._config.monitor)
        epoch = self._epoch_number()
        x, axis = (epoch, "epoch") if epoch is not None else (self._last_step, "step")
        for metric, number in values.items():
            self._curves.add_metric(metric, x, number, axis)
        verdict = self._metric.observe(raw, epoch)
        self._consult_rules(raw, "metrics")
        name = verdict.name or "metric"
        common: dict[str, Any] = {
            "epoch": epoch,
            "step": self._last_step,
            "key": f"{name}-{epoch}-{self._last_step}",
        }
        if verdict.change is Change.NON_FINITE:
            self._report_nan(self._last_step, name, verdict.value, at_epoch_end=epoch is not None)
        elif verdict.change is Change.IMPROVED:
            text = messages.metric_improved(self.model_name, name, verdict.previous_best, verdict.value)
            self._emit(EventType.LOSS_IMPROVED, text, metrics={name: verdict.value}, **common)
        elif verdict.change is Change.DEGRADED:
            text = messages.metric_degraded(
                self.model_name, name, verdict.value, verdict.previous_best, verdict.stale_count
            )
            best = {name: verdict.value, f"best_{name}": verdict.previous_best}
            self._emit(EventType.LOSS_DEGRADED, text, metrics=best, **common)
        return values

    def _stalled(self, idle: float) -> None:
        """The watchdog's call, on its thread: no step for ``idle`` seconds."""
        if self._finished:  # the run ended while the watchdog was waking up
            return
        self._stalled_seen = True
        self._emit(
            EventType.TRAINING_STALLED,
            messages.training_stalled(self.model_name, idle, self._last_step),
            step=self._last_step,
            idle_seconds=round(idle, 1),
            rank_any=True,
        )
        self._snapshot(STALLED)

    # Loss windows -----------------------------------------------------------------------

    def _read_window(self, *, wait: bool = False) -> None:
        """Hand the loss window to the reader thread and take the verdicts already in; with
        ``wait``, every verdict. With ``stop_on_nan`` the window is read here: the run must
        stop at the check."""
        window = self._accumulator.take()
        if self._config.stop_on_nan:
            if window is not None:
                self._reads.read_here(window)
            wait = True
        elif window is not None:
            self._reads.submit(window)
        self._take_windows(self._reads.wait(WINDOW_WAIT_SECONDS) if wait else self._reads.ready())

    def _take_windows(self, windows: list[Window]) -> None:
        for window in windows:
            if window.saw_non_finite:
                first = window.first_bad_step
                if window.finite_mean is not None and first is not None and first > window.first_step:
                    self._curves.add_loss(first - 1, window.finite_mean)  # the curve up to it
                if first is not None and not self._nan_reported:
                    self._curves.add_loss(first, math.nan)  # where it went wrong: a NaN point
                self._report_nan(window.last_step if first is None else first, "loss", window.first_bad_value)
            elif window.mean_loss is not None:
                self._curves.add_loss(window.last_step, window.mean_loss)
                self._consult_rules({"loss": window.mean_loss}, "window")

    # Snapshots --------------------------------------------------------------------------

    def _snapshot(self, status: str | None = None) -> None:
        """Hand the run's state and new points to the sink's ``update_run`` (global rank
        zero while running; any rank for its own end). Never raises."""
        self._consult_rules(None, "figures")
        update = self._update_run
        if update is None:
            self._next_snapshot = _NEVER
            return
        now = time.monotonic()
        self._next_snapshot = now + SNAPSHOT_INTERVAL
        self._snapshot_at = now
        try:
            update(self.state(status), self._curves.take_pending())
        except Exception:
            log.exception("afs-callbacks: could not hand over the run's state")

    def _snapshot_soon(self) -> None:
        """A snapshot for news (an epoch, an evaluation, a checkpoint): now, or, when one
        went out less than :data:`SNAPSHOT_MIN_GAP` ago, from the step hook once the gap
        has passed (a run of 20 epochs a second hands over a few states, not 20). The
        points gathered meanwhile go with it; the run's end always sends one at once."""
        gap_ends = self._snapshot_at + SNAPSHOT_MIN_GAP
        if time.monotonic() >= gap_ends:
            self._snapshot()
        elif self._update_run is not None:
            self._next_snapshot = min(self._next_snapshot, gap_ends)

    # The end ----------------------------------------------------------------------------

    def _begin_end(self) -> bool:
        """Mark the run ended; False when it already was (the first end wins). The
        watchdog stops here, before anything else, so no stall follows an end."""
        with self._lock:
            if self._finished:
                return False
            self._finished = True
        self._stop_watchdog()
        self._read_window(wait=True)
        return True

    def _finish(self, *, flush: bool) -> None:
        """The end was reported: stop what runs beside the run and send the final state.

        ``flush`` (failures and interruptions, after which the process usually exits):
        wait up to ``flush_timeout`` for delivery. A completed run never waits: delivery
        goes on in the background and, at the latest, at process exit.
        """
        _active.discard(self)
        if self._sweep is not None and self._is_global_zero and self._sweep_voice is not None:
            self._sweep_voice.trial_ended(self._sweep, self.manager)
        with self._lock:
            waiting, self._asks = self._asks, []
        for ask in waiting:
            self._tell(ask, REFUSED, "the run ended before its next step")
        if self._stopped_by is not None:
            self._tell(self._stopped_by, DONE, f"{self._stopped_by.words}; ended at step {self._last_step:,}")
        if self._update_run is None and not self._is_global_zero:
            self._update_run = getattr(self.manager, "update_run", None)  # its own end
        self._snapshot()
        self._stop_beside()
        if flush:
            flush_now = getattr(self.manager, "flush", None)
            if callable(flush_now):
                flush_now(self._config.flush_timeout)

    def _store_end(self, event: NotificationEvent) -> None:
        """Hand over the completion so that it is stored before this returns: Ray Tune, a
        multiprocessing worker or ``os._exit`` may end the process right after training.
        The chart follows: drawing takes a second or more, so it is drawn on a thread of
        its own (see ``_pending``) while the stored end's deliveries wait up to
        :data:`CHART_HOLD_SECONDS` for it; if the process dies meanwhile, the end goes
        without it. A sink without ``emit_end`` gets the end at once, with no chart."""
        sink = self.manager
        emit_end = getattr(sink, "emit_end", None)
        if not callable(emit_end):
            sink.emit(event)
            return
        stored = emit_end(event, hold=CHART_HOLD_SECONDS if self._config.chart else 0.0)
        # No chart for an end no channel takes (a sweep's routine trial end, kept in the
        # history): drawing one costs a quarter of a second of CPU per trial.
        if self._config.chart and stored is not None and getattr(stored, "pushed", True):
            pending.start(lambda: stored.attach(self._chart_attachment()), "afs-completion-chart", owner=sink)

    def _chart_attachment(self) -> tuple[Attachment, ...]:
        """The loss chart, or nothing when it cannot be drawn (the message goes anyway)."""
        try:
            chart = self._chart()
        except Exception:
            log.warning("afs-callbacks: the loss chart could not be drawn", exc_info=True)
            return ()
        return (chart,) if chart is not None else ()

    def _chart(self) -> Attachment | None:
        # Imported here: matplotlib is optional and only needed once, at the end of a run.
        from afs_callbacks.tracking.charts import loss_chart

        return loss_chart(
            self._curves.losses, self._curves.metrics, title=f"{self.model_name}: training loss"
        )

    # What runs beside the run: the stall watchdog and the GPU/system/cost monitors -------

    def _start_watchdog(self, timeout: float) -> None:
        """Watch for a stall of ``timeout`` seconds. The watchdog's thread holds the run
        weakly: a run that nobody holds any more (its trainer gone without reporting an
        end) is collected, which stops the thread, instead of staying alive, and the
        process's active run (:func:`active_tracker`), for good."""
        self._stop_watchdog()
        run = weakref.ref(self)
        watchdog = StallWatchdog(
            timeout, functools.partial(_last_progress, run), functools.partial(_stall, run)
        )
        weakref.finalize(self, watchdog.stop)
        self._watchdog = watchdog
        watchdog.start()

    def _start_monitors(self, output_dir: str | None, world_size: int | None) -> None:
        """Start the resource monitors (they report through the sink); never raises."""
        try:
            from afs_callbacks.monitors import start_monitors  # a lower layer, loaded on demand

            self._monitors = start_monitors(
                self.manager,  # type: ignore[arg-type]  # any sink; the monitors only emit
                paths=[output_dir] if output_dir else [],
                run_id=self._run_id,
                model=self.model_name,
                gpu_count=world_size,
            )
        except Exception:
            log.debug("afs-callbacks: run monitors not started", exc_info=True)
            self._monitors = None

    def _monitor_figures(self) -> dict[str, Any]:
        """The monitors' figures for the state and the end (peak memory, cost...)."""
        try:
            return {} if self._monitors is None else dict(self._monitors.summary().to_dict())
        except Exception:
            return {}

    def _monitor_lines(self) -> list[str]:
        """The monitors' summary as text lines, for the completion message."""
        try:
            return [] if self._monitors is None else list(self._monitors.summary().lines())
        except Exception:
            return []

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop()

    def _stop_beside(self) -> None:
        """Stop the watchdog and the monitors (idempotent); never raises."""
        self._stop_watchdog()
        monitors, self._monitors = self._monitors, None
        if monitors is not None:
            try:
                monitors.stop()
            except Exception:
                log.debug("afs-callbacks: stopping monitors failed", exc_info=True)

    # Small facts ------------------------------------------------------------------------

    def _new_watch(self) -> MetricWatch:
        c = self._config
        return MetricWatch(c.monitor, c.mode, c.min_delta, c.patience)

    def _cache_cadence(self) -> None:
        # Read on every step: plain attributes, not a walk through the config.
        self._nan_every = self._config.nan_check_every
        self._batch_every = self._config.batch_every

    def _reached_plan(self) -> bool:
        """Whether the planned steps or epochs are done."""
        record = self._record
        if record.max_steps:
            return self._last_step >= record.max_steps
        planned = record.planned_epochs
        return planned is not None and (record.epochs_done or 0) >= planned

    def _epoch_number(self) -> int | None:
        return None if self._epoch is None else self._epoch + 1

    def _duration(self) -> float:
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at


def _last_progress(run: weakref.ref[RunTracker]) -> float:
    """The watchdog's view of a run's progress: a run collected meanwhile never stalls."""
    tracker = run()
    return time.monotonic() if tracker is None else tracker.last_progress()


def _stall(run: weakref.ref[RunTracker], idle: float) -> None:
    tracker = run()
    if tracker is not None:
        tracker._stalled(idle)


def _tool_stopped(run: weakref.ref[RunTracker]) -> None:
    """The sweep's tool ended the trial from outside (a Ray Tune scheduler): a pruning,
    stored before the tool ends the process (nothing, when the run ended already)."""
    tracker = run()
    if tracker is None or not tracker.started or tracker.finished:
        return
    if tracker._reached_plan():  # stopped at the last report: the scheduler's max_t
        tracker.completed(end_reason="stopped by Ray Tune at the end of its plan", outcome=Outcome.COMPLETED)
    else:
        tracker.pruned("stopped by Ray Tune (its scheduler's early stop or the stop criteria)")


def _given_outcome(outcome: Outcome | str | None) -> Outcome | None:
    """A caller's outcome for an end verb, or None (then the tracker decides): an unknown
    value, or one no end without an error may have, is logged and ignored."""
    if outcome is None:
        return None
    try:
        given = Outcome.parse(outcome)
    except ValueError as error:
        log.error("afs-callbacks: %s; the tracker decides the outcome instead", error)
        return None
    return given


def _end_level(outcome: Outcome, event_type: EventType) -> NotificationLevel:
    """The end event's level: its outcome's, or its type's where that is an alarm above it
    (an out-of-memory failure stays critical; a pruned trial is not raised to success)."""
    default = DEFAULT_LEVELS[event_type]
    alarm = default.severity >= NotificationLevel.ERROR.severity
    return default if alarm and default.severity > outcome.level.severity else outcome.level


def _first_line(text: str) -> str:
    """The first non-blank line of an error text, the error itself (at most 300 characters)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown error"


__all__ = [
    "CHART_HOLD_SECONDS",
    "SNAPSHOT_INTERVAL",
    "SNAPSHOT_MIN_GAP",
    "RunTracker",
    "TrackerConfig",
    "active_tracker",
    "check_settings",
]
