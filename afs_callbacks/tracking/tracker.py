"""The framework-free run tracker: training semantics in, notification events out.

Framework adapters translate their hooks into the calls below and hold no logic of their
own. The tracker knows what a run is (started, steps, epochs, a monitored metric getting
better or worse, NaN, OOM, interruption, stall, end) and nothing about channels: it hands
events to a :class:`~afs_callbacks.manager.NotificationManager`.

Every public method is safe to call from a framework hook: it never raises and never
waits on a network. :meth:`RunTracker.on_step` is the hot path and does no device sync
except once every ``nan_check_every`` steps.
"""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.events import (
    DEFAULT_LEVELS,
    Attachment,
    EventType,
    NotificationEvent,
    NotificationLevel,
)
from afs_callbacks.formatting import describe_exception, format_duration, format_metrics, format_value
from afs_callbacks.manager import NotificationManager
from afs_callbacks.tracking.classify import Failure, classify, oom_device
from afs_callbacks.tracking.nan import LossAccumulator, Window

log = get_logger(__name__)

# Metric names tried, in order, when no metric to monitor is named.
_MONITOR_CANDIDATES = ("val_loss", "eval_loss", "valid_loss", "loss", "train_loss")
_MAX_CHART_POINTS = 2000
_RUN_NAMESPACE = uuid.UUID("6f0d3c1e-8a0b-4d52-9d4e-5f1a2b3c4d5e")

# Runs started and not yet finished in this process, so that `watch()` and the excepthook
# fallback report a crash on the run a callback already announced.
_active: weakref.WeakSet[RunTracker] = weakref.WeakSet()


def active_tracker() -> RunTracker | None:
    """The most recently started run of this process that has not ended, if any."""
    running = [tracker for tracker in list(_active) if not tracker.finished]
    return max(running, key=lambda t: t._started_at or 0.0) if running else None


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
        flush_timeout: seconds to wait for delivery when the run ends or fails.

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

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"TrackerConfig(mode={self.mode!r}) must be 'min' or 'max'")
        for name in ("patience", "batch_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrackerConfig({name}={getattr(self, name)!r}) must be >= 0")
        if self.nan_check_every < 1:
            raise ValueError(f"TrackerConfig(nan_check_every={self.nan_check_every!r}) must be >= 1")
        if self.epoch_every is not None and self.epoch_every < 1:
            raise ValueError(f"TrackerConfig(epoch_every={self.epoch_every!r}) must be >= 1")
        if self.stall_timeout is not None and self.stall_timeout <= 0:
            raise ValueError(f"TrackerConfig(stall_timeout={self.stall_timeout!r}) must be > 0")


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Make a hook-facing method swallow (and log) any exception: hooks must not raise."""

    def wrapper(self: RunTracker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            log.exception("afs-callbacks: %s failed; training continues", method.__name__)
            return None

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class RunTracker:
    """Turns training signals into events for one run.

    Args:
        manager: where events go; None builds ``NotificationManager.from_env()`` on first use.
        config: what to report (see :class:`TrackerConfig`).

    Example::

        tracker = RunTracker(config=TrackerConfig(model_name="tiny-bert"))
        tracker.start(epochs=3, batch_size=32)
        for step, batch in enumerate(loader):
            loss = train_step(batch)
            if tracker.on_step(step, loss):
                break
        tracker.completed({"val_loss": 0.12})
    """

    def __init__(
        self, manager: NotificationManager | None = None, config: TrackerConfig | None = None
    ) -> None:
        self.config = config or TrackerConfig()
        self._manager = manager
        self.run_id = self.config.run_id or _new_run_id(self.config.model_name)
        self.model_name = self.config.model_name or "model"
        self.is_global_zero = True
        self.rank = 0
        self._lock = threading.Lock()
        self._reset_run_state()
        self._best: float | None = None
        self._best_epoch: int | None = None
        self._bad_evaluations = 0
        self._resumed = False

    def _reset_run_state(self) -> None:
        self._started_at: float | None = None
        self._started_wall: float | None = None
        self._finished = False
        self._steps = 0
        self._last_step = 0
        self._epoch: int | None = None
        self._planned_epochs: int | None = None
        self._batch_size: int | None = None
        self._epochs_seen = 0
        self._evaluations_seen = 0
        self._nan_reported = False
        self._stop_requested = False
        self._accumulator = LossAccumulator()
        self._loss_points: list[tuple[int, float]] = []
        self._metric_points: dict[str, list[tuple[int, float]]] = {}
        self._last_metrics: dict[str, float] = {}
        self._last_progress = time.monotonic()
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._monitors: Any = None
        self._world_size: int | None = None
        self._output_dir: str | None = None

    # Manager ------------------------------------------------------------------------

    @property
    def manager(self) -> NotificationManager:
        """The manager events go to (built from the environment on first use)."""
        if self._manager is None:
            self._manager = NotificationManager.from_env()
        return self._manager

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks: threads, locks and the manager are rebuilt lazily.
        state = self.__dict__.copy()
        for name in ("_lock", "_watchdog", "_watchdog_stop", "_monitors", "_accumulator"):
            state.pop(name, None)
        # A manager holds threads and a database connection: each worker builds its own.
        state["_manager"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._watchdog = None
        self._watchdog_stop = threading.Event()
        self._monitors = None
        self._accumulator = LossAccumulator()

    # Lifecycle ----------------------------------------------------------------------

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
        **extra: Any,
    ) -> None:
        """Training begins (TRAINING_STARTED, or TRAINING_RESUMED after a checkpoint).

        A second call for the same run (HF's ``auto_find_batch_size`` restarts the loop)
        only updates the plan.
        """
        first = self._started_at is None
        self._world_size = world_size
        self._output_dir = output_dir
        self._planned_epochs = epochs if epochs and epochs > 0 else None
        self._batch_size = batch_size
        self._last_progress = time.monotonic()
        if not first:
            return
        self._started_at = time.monotonic()
        self._started_wall = time.time()
        _active.add(self)
        resumed = self._resumed or resumed_from is not None
        if resumed_from is not None:
            self.checkpoint_loading(resumed_from)
        plan = _join(
            f"{epochs} epochs" if epochs and epochs > 0 else "",
            f"{max_steps} steps" if max_steps and max_steps > 0 else "",
            f"batch size {batch_size}" if batch_size else "",
            f"world size {world_size}" if world_size and world_size > 1 else "",
        )
        verb = "resumed" if resumed else "started"
        self._emit(
            EventType.TRAINING_RESUMED if resumed else EventType.TRAINING_STARTED,
            f"Training {verb}: {self.model_name}",
            f"Run {self.run_id} {verb} on {socket.gethostname()}" + (f" ({plan})." if plan else "."),
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            device=None if devices is None else str(devices),
            world_size=world_size,
            resumed_from=resumed_from,
            **extra,
        )
        self._start_watchdog()
        self._start_monitors()

    def on_step(self, step: int, loss: Any = None, grad_norm: Any = None) -> bool:
        """One optimisation step finished. Returns True when training should stop.

        The loss may be a device tensor: it is accumulated on its device and read once
        every ``nan_check_every`` steps, never here.
        """
        try:
            self._last_progress = time.monotonic()
            self._steps += 1
            self._last_step = step
            if loss is not None and self._accumulator.add(step, loss):
                self._report_nan(step, "loss")
            if grad_norm is not None and isinstance(grad_norm, float) and not math.isfinite(grad_norm):
                self._report_nan(step, "grad_norm")
            if self._steps % self.config.nan_check_every == 0:
                self._read_window()
            every = self.config.batch_every
            if every and step % every == 0:
                self._batch_processed(step)
            return self._stop_requested
        except Exception:
            log.exception("afs-callbacks: on_step failed; training continues")
            return False

    def heartbeat(self) -> None:
        """Progress that is not a training step (an evaluation batch): keeps the stall
        watchdog quiet."""
        self._last_progress = time.monotonic()

    @_guarded
    def epoch_end(self, epoch: int, metrics: Mapping[str, Any] | None = None) -> None:
        """An epoch finished with ``metrics`` (host floats)."""
        self._epoch = epoch
        self._epochs_seen += 1
        self._read_window()
        values = self._observe(metrics or {}, epoch)
        if _cadence_hit(self._epochs_seen, self._planned_epochs, self.config.epoch_every):
            total = f"/{self._planned_epochs}" if self._planned_epochs else ""
            self._emit(
                EventType.EPOCH_COMPLETED,
                f"Epoch {epoch + 1}{total} completed: {self.model_name}",
                format_metrics(values) or "no metrics logged",
                epoch=epoch,
                step=self._last_step,
                metrics=values,
                key=f"epoch-{epoch}",
            )

    @_guarded
    def evaluation_started(self, *, in_training: bool = False) -> None:
        """An evaluation begins (reported only for standalone evaluations)."""
        self.heartbeat()
        if not in_training:
            self._emit(
                EventType.EVALUATION_STARTED,
                f"Evaluation started: {self.model_name}",
                f"Run {self.run_id}: evaluation started.",
            )

    @_guarded
    def evaluation_completed(self, metrics: Mapping[str, Any], *, in_training: bool = False) -> None:
        """An evaluation finished. Inside training the metrics feed the monitored metric
        and the message follows the epoch cadence; a standalone evaluation always reports."""
        self.heartbeat()
        values = self._observe(metrics, self._epoch)
        self._evaluations_seen += 1
        if in_training and not _cadence_hit(
            self._evaluations_seen, self._planned_epochs, self.config.epoch_every
        ):
            return
        self._emit(
            EventType.EVALUATION_COMPLETED,
            f"Evaluation completed: {self.model_name}",
            format_metrics(values) or "no metrics",
            metrics=values,
            epoch=self._epoch,
            step=self._last_step,
            key=f"eval-{self._evaluations_seen}",
        )

    @_guarded
    def evaluation_failed(self, error: BaseException | str) -> None:
        """An evaluation crashed."""
        text = describe_exception(error) if isinstance(error, BaseException) else str(error)
        self._emit(
            EventType.EVALUATION_FAILED,
            f"Evaluation failed: {self.model_name}",
            text,
            error=_last_line(text),
            rank_any=True,
        )

    @_guarded
    def checkpoint_saved(self, path: str, step: int | None = None) -> None:
        """A checkpoint was written to ``path``."""
        self._emit(
            EventType.CHECKPOINT_SAVED,
            f"Checkpoint saved: {self.model_name}",
            f"Saved {path}",
            checkpoint=str(path),
            step=self._last_step if step is None else step,
            epoch=self._epoch,
            key=str(path),
        )

    @_guarded
    def checkpoint_loading(self, path: str) -> None:
        """Training is restoring from ``path``."""
        self._resumed = True
        self._emit(
            EventType.CHECKPOINT_LOADING,
            f"Loading checkpoint: {self.model_name}",
            f"Restoring from {path}",
            checkpoint=str(path),
        )

    @_guarded
    def nan_detected(self, step: int, what: str = "loss") -> None:
        """``what`` became NaN/Inf at ``step`` (reported once per run)."""
        self._report_nan(step, what)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called for this run."""
        return self._started_at is not None

    @property
    def finished(self) -> bool:
        """Whether the run's end (completed, failed, interrupted) was reported."""
        return self._finished

    @property
    def stop_requested(self) -> bool:
        """True after a NaN when ``stop_on_nan`` is set."""
        return self._stop_requested

    @_guarded
    def failed(self, error: BaseException) -> None:
        """Training raised ``error``: OUT_OF_MEMORY, TRAINING_INTERRUPTED or TRAINING_FAILED.

        Delivery is flushed (bounded by ``flush_timeout``) so the message leaves before the
        process exits. Only the first end of a run is reported.
        """
        kind = classify(error)
        if kind is Failure.INTERRUPTED:
            self.interrupted(_interrupt_reason(error))
            return
        if self._finished:
            return
        self._finished = True
        self._read_window()
        text = describe_exception(error)
        context: dict[str, Any] = {
            "error": _last_line(text),
            "error_type": type(error).__name__,
            "step": self._last_step,
            "epoch": self._epoch,
            "duration": self._duration(),
        }
        if kind is Failure.OUT_OF_MEMORY:
            context.update(self._memory_figures(error))
            self._emit(
                EventType.OUT_OF_MEMORY,
                f"Out of memory: {self.model_name}",
                text,
                rank_any=True,
                **context,
            )
        else:
            self._emit(
                EventType.TRAINING_FAILED,
                f"Training failed: {self.model_name}",
                text,
                rank_any=True,
                **context,
            )
        self._finish()

    @_guarded
    def interrupted(self, reason: str = "interrupted") -> None:
        """Training was stopped from outside (Ctrl-C, SIGTERM/preemption)."""
        if self._finished:
            return
        self._finished = True
        self._read_window()
        self._emit(
            EventType.TRAINING_INTERRUPTED,
            f"Training interrupted: {self.model_name}",
            f"Run {self.run_id} was interrupted ({reason}) at step {self._last_step}"
            f" after {format_duration(self._duration())}.",
            reason=reason,
            step=self._last_step,
            epoch=self._epoch,
            duration=self._duration(),
            rank_any=True,
        )
        self._finish()

    @_guarded
    def completed(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Training finished: TRAINING_COMPLETED with the run's summary and chart."""
        if self._finished:
            return
        self._finished = True
        self._read_window()
        if metrics:
            self._observe(metrics, self._epoch)
        summary = self._summary()
        lines = [f"Run {self.run_id} finished in {format_duration(summary['duration'])}."]
        if self._last_metrics:
            lines.append("Final: " + format_metrics(self._last_metrics))
        if self._best is not None:
            lines.append(f"Best {self._monitor_name()}: {format_value(self._best)}")
        if summary.get("steps_per_second") is not None:
            lines.append(f"Throughput: {format_value(summary['steps_per_second'])} steps/s")
        lines.extend(self._monitor_lines())
        attachments: tuple[Attachment, ...] = ()
        if self.config.chart and self.is_global_zero:
            chart = _chart(self._loss_points, self._metric_points, self.model_name)
            attachments = (chart,) if chart is not None else ()
        self._emit(
            EventType.TRAINING_COMPLETED,
            f"Training completed: {self.model_name}",
            "\n".join(lines),
            metrics=dict(self._last_metrics),
            attachments=attachments,
            **summary,
        )
        self._finish()

    @_guarded
    def close(self) -> None:
        """Stop the watchdog and monitors without reporting anything."""
        self._stop_background()

    # State (checkpoints) ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: run id, best metric, plateau count, started marker."""
        return {
            "run_id": self.run_id,
            "best": self._best,
            "best_epoch": self._best_epoch,
            "bad_evaluations": self._bad_evaluations,
            "started": self._started_at is not None or self._resumed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from a checkpoint: the next :meth:`start` reports TRAINING_RESUMED."""
        self.run_id = str(state.get("run_id") or self.run_id)
        best = state.get("best")
        self._best = None if best is None else float(best)
        self._best_epoch = state.get("best_epoch")
        self._bad_evaluations = int(state.get("bad_evaluations") or 0)
        self._resumed = bool(state.get("started", True))

    # Internals ----------------------------------------------------------------------

    def _emit(
        self,
        event_type: EventType,
        title: str,
        message: str,
        *,
        rank_any: bool = False,
        attachments: tuple[Attachment, ...] = (),
        level: NotificationLevel | None = None,
        **context: Any,
    ) -> None:
        """Hand one event to the manager. Run-level events speak only on global rank zero;
        ``rank_any`` events come from any rank with an id fixed by run and type, so several
        ranks reporting the same failure make one message (the outbox ignores a known id)."""
        if not (self.is_global_zero or rank_any):
            return
        base: dict[str, Any] = {"model": self.model_name, "run_id": self.run_id}
        if not self.is_global_zero:
            base["rank"] = self.rank
        fields = {key: value for key, value in {**base, **context}.items() if value is not None}
        kwargs: dict[str, Any] = {}
        if rank_any:
            kwargs["id"] = uuid.uuid5(_RUN_NAMESPACE, f"{self.run_id}|{event_type.value}").hex
        event = NotificationEvent(
            event_type,
            level or DEFAULT_LEVELS[event_type],
            title,
            message,
            fields,
            attachments,
            **kwargs,
        )
        self.manager.emit(event)

    def _report_nan(self, step: int, what: str) -> None:
        with self._lock:
            if self._nan_reported:
                return
            self._nan_reported = True
        if self.config.stop_on_nan:
            self._stop_requested = True
        action = " Training will stop." if self.config.stop_on_nan else ""
        self._emit(
            EventType.NAN_DETECTED,
            f"NaN/Inf {what}: {self.model_name}",
            f"{what} became NaN or Inf at step {step} (epoch {self._epoch_label()}).{action}",
            step=step,
            epoch=self._epoch,
            metric=what,
            rank_any=True,
        )

    def _read_window(self) -> None:
        window: Window | None = self._accumulator.read()
        if window is None:
            return
        if window.saw_non_finite:
            self._report_nan(window.last_step, "loss")
        elif window.mean_loss is not None:
            self._loss_points.append((window.last_step, window.mean_loss))
            if len(self._loss_points) > _MAX_CHART_POINTS:
                self._loss_points = self._loss_points[::2]  # keep the shape, halve the memory

    def _batch_processed(self, step: int) -> None:
        self._read_window()
        loss = self._loss_points[-1][1] if self._loss_points else None
        self._emit(
            EventType.BATCH_PROCESSED,
            f"Step {step}: {self.model_name}",
            f"loss={format_value(loss)}" if loss is not None else f"step {step}",
            step=step,
            epoch=self._epoch,
            metrics={"loss": loss} if loss is not None else None,
            key=f"step-{step}",
        )

    def _observe(self, metrics: Mapping[str, Any], epoch: int | None) -> dict[str, float]:
        """Record metrics; report NaN and improvement/degradation of the monitored one."""
        values: dict[str, float] = {}
        for key, raw in metrics.items():
            number = _to_float(raw)
            if number is not None:
                values[str(key)] = number
        self._last_metrics.update(values)
        x = epoch if epoch is not None else self._last_step
        for metric, number in values.items():
            self._metric_points.setdefault(metric, []).append((x, number))
        name = self._monitor_name(values)
        value = values.get(name) if name else None
        if name is None or value is None:
            return values
        if not math.isfinite(value):
            self._report_nan(self._last_step, name or "metric")
            return values
        better = (
            self._best is None
            or (self.config.mode == "min" and value < self._best - self.config.min_delta)
            or (self.config.mode == "max" and value > self._best + self.config.min_delta)
        )
        if better:
            previous = self._best
            self._best, self._best_epoch, self._bad_evaluations = value, epoch, 0
            if previous is not None:
                self._emit(
                    EventType.LOSS_IMPROVED,
                    f"{name} improved: {self.model_name}",
                    f"{name} {format_value(previous)} → {format_value(value)}",
                    metrics={name: value},
                    epoch=epoch,
                    step=self._last_step,
                    key=f"{name}-{epoch}-{self._last_step}",
                )
            return values
        self._bad_evaluations += 1
        if self._bad_evaluations == self.config.patience:
            self._emit(
                EventType.LOSS_DEGRADED,
                f"{name} not improving: {self.model_name}",
                f"{name} is {format_value(value)}, no better than {format_value(self._best)} "
                f"for {self._bad_evaluations} evaluations.",
                metrics={name: value, f"best_{name}": self._best},
                epoch=epoch,
                step=self._last_step,
                key=f"{name}-{epoch}-{self._last_step}",
            )
        return values

    def _monitor_name(self, values: Mapping[str, float] | None = None) -> str | None:
        if self.config.monitor:
            return self.config.monitor
        pool = values if values is not None else self._last_metrics
        return next((name for name in _MONITOR_CANDIDATES if name in pool), None)

    def _summary(self) -> dict[str, Any]:
        duration = self._duration()
        summary: dict[str, Any] = {
            "duration": duration,
            "steps": self._steps,
            "step": self._last_step,
            "epoch": self._epoch,
            "steps_per_second": round(self._steps / duration, 3) if duration else None,
            "samples_per_second": (
                round(self._steps * self._batch_size / duration, 3) if duration and self._batch_size else None
            ),
        }
        if self._best is not None:
            summary["best"] = {self._monitor_name() or "metric": self._best, "epoch": self._best_epoch}
        summary.update(self._monitor_summary())
        return summary

    def _duration(self) -> float:
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at

    def _epoch_label(self) -> str:
        return "?" if self._epoch is None else str(self._epoch + 1)

    def _memory_figures(self, error: BaseException) -> dict[str, Any]:
        figures: dict[str, Any] = {"device": oom_device(error)}
        torch = sys.modules.get("torch")  # only if the program already uses it
        try:
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                index = torch.cuda.current_device()
                free, total = torch.cuda.mem_get_info(index)
                figures.update(
                    device=figures["device"] or f"cuda:{index}",
                    memory_allocated_mb=round(torch.cuda.memory_allocated(index) / 2**20, 1),
                    memory_reserved_mb=round(torch.cuda.memory_reserved(index) / 2**20, 1),
                    peak_allocated_mb=round(torch.cuda.max_memory_allocated(index) / 2**20, 1),
                    memory_free_mb=round(free / 2**20, 1),
                    memory_total_mb=round(total / 2**20, 1),
                )
        except Exception:
            log.debug("afs-callbacks: no CUDA memory figures", exc_info=True)
        figures.update(self._monitor_summary())
        return figures

    # Background helpers ---------------------------------------------------------------

    def _start_watchdog(self) -> None:
        timeout = self.config.stall_timeout
        if timeout is None or self._watchdog is not None:
            return
        self._watchdog_stop.clear()
        self._watchdog = threading.Thread(
            target=self._watch_for_stall, args=(timeout,), name="afs-stall-watchdog", daemon=True
        )
        self._watchdog.start()

    def _watch_for_stall(self, timeout: float) -> None:
        reported = False
        while not self._watchdog_stop.wait(min(max(timeout / 4, 0.05), 30.0)):
            idle = time.monotonic() - self._last_progress
            if idle < timeout:
                reported = False  # progress resumed: re-arm
            elif not reported:
                reported = True
                self._emit(
                    EventType.TRAINING_STALLED,
                    f"Training stalled: {self.model_name}",
                    f"No step for {format_duration(idle)} (last step {self._last_step}); a hung"
                    " data loader or collective is likely.",
                    step=self._last_step,
                    idle_seconds=round(idle, 1),
                    rank_any=True,
                )

    def _start_monitors(self) -> None:
        if not self.config.monitors or not self.is_global_zero:
            return
        try:
            from afs_callbacks.monitors import start_monitors

            self._monitors = start_monitors(
                self.manager,
                paths=[self._output_dir] if self._output_dir else (),
                run_id=self.run_id,
                model=self.model_name,
                gpu_count=self._world_size,
            )
        except Exception:
            log.debug("afs-callbacks: run monitors not started", exc_info=True)
            self._monitors = None

    def _monitor_summary(self) -> dict[str, Any]:
        if self._monitors is None:
            return {}
        try:
            return dict(self._monitors.summary().to_dict())
        except Exception:
            return {}

    def _monitor_lines(self) -> list[str]:
        if self._monitors is None:
            return []
        try:
            return list(self._monitors.summary().lines())
        except Exception:
            return []

    def _stop_background(self) -> None:
        self._watchdog_stop.set()
        self._watchdog = None
        if self._monitors is not None:
            try:
                self._monitors.stop()
            except Exception:
                log.debug("afs-callbacks: stopping monitors failed", exc_info=True)
            self._monitors = None

    def _finish(self) -> None:
        _active.discard(self)
        self._stop_background()
        # The process may exit right after this hook: deliver now, within a bound.
        self.manager.flush(self.config.flush_timeout)


def _cadence_hit(count: int, planned: int | None, every: int | None) -> bool:
    """Whether the ``count``-th epoch is reported: every ``every``, or about ten per run."""
    if every is None:
        every = max(1, planned // 10) if planned else (1 if count <= 10 else 10)
    return count % every == 0 or count == 1 or (planned is not None and count == planned)


def _chart(
    losses: list[tuple[int, float]], metrics: dict[str, list[tuple[int, float]]], model: str
) -> Attachment | None:
    from afs_callbacks.tracking.charts import loss_chart

    return loss_chart(losses, metrics, title=f"{model}: training loss")


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)  # 0-d tensors/arrays at epoch granularity
    if callable(item):
        try:
            return float(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _join(*parts: str) -> str:
    return ", ".join(part for part in parts if part)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


def _interrupt_reason(error: BaseException) -> str:
    name = type(error).__name__
    if name == "KeyboardInterrupt":
        return "KeyboardInterrupt (Ctrl-C)"
    return "SIGTERM (preemption or job cancellation)"


def _new_run_id(model: str | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in (model or "run"))[:40]
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"
