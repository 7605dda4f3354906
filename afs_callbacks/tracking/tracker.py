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
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.events import DEFAULT_LEVELS, Attachment, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import describe_exception, format_duration, format_metrics, format_value
from afs_callbacks.manager import NotificationManager
from afs_callbacks.tracking.classify import Failure, classify, oom_device
from afs_callbacks.tracking.config import TrackerConfig, cadence_hit, new_run_id
from afs_callbacks.tracking.memory import cuda_memory_figures
from afs_callbacks.tracking.metrics import Change, MetricWatch
from afs_callbacks.tracking.nan import LossAccumulator
from afs_callbacks.tracking.watchdog import StallWatchdog

log = get_logger(__name__)

_MAX_CHART_POINTS = 2000
_RUN_NAMESPACE = uuid.UUID("6f0d3c1e-8a0b-4d52-9d4e-5f1a2b3c4d5e")

# Runs started and not yet finished in this process, so that `watch()` and the excepthook
# fallback report a crash on the run a callback already announced.
_active: weakref.WeakSet[RunTracker] = weakref.WeakSet()


def active_tracker() -> RunTracker | None:
    """The most recently started run of this process that has not ended, if any."""
    running = [tracker for tracker in list(_active) if not tracker.finished]
    return max(running, key=lambda t: t._started_at or 0.0) if running else None


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
        self.run_id = self.config.run_id or new_run_id(self.config.model_name)
        self.model_name = self.config.model_name or "model"
        self.is_global_zero = True
        self.rank = 0
        self._metric = MetricWatch(
            self.config.monitor, self.config.mode, self.config.min_delta, self.config.patience
        )
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
        self._epoch: int | None = None
        self._planned_epochs: int | None = None
        self._batch_size: int | None = None
        self._world_size: int | None = None
        self._output_dir: str | None = None
        self._epochs_seen = 0
        self._evaluations_seen = 0
        self._checkpoints_seen = 0
        self._nan_reported = False
        self._stop_requested = False
        self._accumulator = LossAccumulator()
        self._loss_points: list[tuple[int, float]] = []
        self._metric_points: dict[str, list[tuple[int, float]]] = {}
        self._last_metrics: dict[str, float] = {}
        self._last_progress = time.monotonic()
        self._watchdog: StallWatchdog | None = None
        self._monitors: Any = None

    @property
    def manager(self) -> NotificationManager:
        """The manager events go to (built from the environment on first use)."""
        if self._manager is None:
            self._manager = NotificationManager.from_env()
        return self._manager

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks. A manager holds threads and a database connection,
        # the watchdog and monitors hold threads: each worker builds its own.
        state = self.__dict__.copy()
        for name in ("_lock", "_watchdog", "_monitors", "_accumulator"):
            state.pop(name, None)
        state["_manager"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._watchdog = None
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
        self._planned_epochs = epochs if epochs and epochs > 0 else None
        self._batch_size = batch_size
        self._world_size = world_size
        self._output_dir = output_dir
        self._last_progress = time.monotonic()
        if self._started_at is not None:
            return
        self._started_at = time.monotonic()
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
        if self.config.stall_timeout is not None:
            self._watchdog = StallWatchdog(
                self.config.stall_timeout, lambda: self._last_progress, self._stalled
            )
            self._watchdog.start()
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
            if isinstance(grad_norm, float) and not math.isfinite(grad_norm):
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

    def epoch_started(self, epoch: int) -> None:
        """An epoch begins (0-based): messages during it can name it."""
        self._epoch = epoch
        self.heartbeat()

    @_guarded
    def epoch_end(self, epoch: int, metrics: Mapping[str, Any] | None = None) -> None:
        """An epoch finished with ``metrics`` (host floats)."""
        self._epoch = epoch
        self._epochs_seen += 1
        self._read_window()
        values = self._observe(metrics or {}, epoch)
        if cadence_hit(self._epochs_seen, self._planned_epochs, self.config.epoch_every):
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
        """An evaluation finished. Inside training its metrics feed the monitored metric and
        the message follows the epoch cadence; a standalone evaluation (after training, a
        ``validate()`` call) always reports and judges nothing."""
        self.heartbeat()
        if in_training:
            values = self._observe(metrics, self._epoch)
            self._evaluations_seen += 1
            if not cadence_hit(self._evaluations_seen, self._planned_epochs, self.config.epoch_every):
                return
        else:
            values = _floats(metrics)
        self._emit(
            EventType.EVALUATION_COMPLETED,
            f"Evaluation completed: {self.model_name}",
            format_metrics(values) or "no metrics",
            metrics=values,
            epoch=self._epoch,
            step=self._last_step,
            key=f"eval-{self._evaluations_seen}-{self._last_step}",
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
        """A checkpoint was written to ``path`` (reported at the epoch cadence, so a run
        that saves every epoch does not send a message per epoch)."""
        self._checkpoints_seen += 1
        if not cadence_hit(self._checkpoints_seen, self._planned_epochs, self.config.epoch_every):
            return
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
        if not self._begin_end():
            return
        text = describe_exception(error)
        context: dict[str, Any] = {
            "error": _last_line(text),
            "error_type": type(error).__name__,
            "step": self._last_step,
            "epoch": self._epoch,
            "duration": self._duration(),
        }
        if kind is Failure.OUT_OF_MEMORY:
            device = oom_device(error)
            # A dict display, not keywords: the figures repeat "device" (and keep its value).
            context.update({"device": device, **cuda_memory_figures(device), **self._monitor_summary()})
            event_type, title = EventType.OUT_OF_MEMORY, f"Out of memory: {self.model_name}"
        else:
            event_type, title = EventType.TRAINING_FAILED, f"Training failed: {self.model_name}"
        self._emit(event_type, title, text, rank_any=True, **context)
        self._finish()

    @_guarded
    def interrupted(self, reason: str = "interrupted") -> None:
        """Training was stopped from outside (Ctrl-C, SIGTERM/preemption)."""
        if not self._begin_end():
            return
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
        """Training finished: TRAINING_COMPLETED with the run's summary and chart.

        A run that ended because of a NaN (``stop_on_nan``) is reported as a warning, not a
        success.
        """
        if not self._begin_end():
            return
        if metrics:
            self._observe(metrics, self._epoch)
        summary = self._summary()
        lines = [f"Run {self.run_id} finished in {format_duration(summary['duration'])}."]
        if self._last_metrics:
            lines.append("Final: " + format_metrics(self._last_metrics))
        if self._metric.best is not None:
            lines.append(f"Best {self._metric.name}: {format_value(self._metric.best)}")
        if summary.get("steps_per_second") is not None:
            lines.append(f"Throughput: {format_value(summary['steps_per_second'])} steps/s")
        lines.extend(self._monitor_lines())
        attachments: tuple[Attachment, ...] = ()
        if self.config.chart and self.is_global_zero:
            chart = _chart(self._loss_points, self._metric_points, self.model_name)
            attachments = (chart,) if chart is not None else ()
        title = f"Training completed: {self.model_name}"
        level = None
        if self._nan_reported:
            title = f"Training stopped after NaN/Inf: {self.model_name}"
            level = NotificationLevel.WARNING
        self._emit(
            EventType.TRAINING_COMPLETED,
            title,
            "\n".join(lines),
            level=level,
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
        """What a checkpoint keeps: run id, attempt, monitored metric, started marker."""
        return {
            "run_id": self.run_id,
            "attempt": self._attempt,
            "started": self._started_at is not None or self._resumed,
            **self._metric.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from a checkpoint: the next :meth:`start` reports TRAINING_RESUMED."""
        self.run_id = str(state.get("run_id") or self.run_id)
        self._attempt = int(state.get("attempt") or 0) + 1
        self._metric.load_state_dict(state)
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
        ``rank_any`` events come from any rank with an id fixed by run, attempt and type, so
        several ranks reporting the same failure make one message (the outbox ignores an id
        it already holds)."""
        if not (self.is_global_zero or rank_any):
            return
        base: dict[str, Any] = {"model": self.model_name, "run_id": self.run_id}
        if not self.is_global_zero:
            base["rank"] = self.rank
        fields = {key: value for key, value in {**base, **context}.items() if value is not None}
        extra: dict[str, Any] = {}
        if rank_any:
            name = f"{self.run_id}|{self._attempt}|{event_type.value}"
            extra["id"] = uuid.uuid5(_RUN_NAMESPACE, name).hex
        event = NotificationEvent(
            event_type,
            level or DEFAULT_LEVELS[event_type],
            title,
            message,
            fields,
            attachments,
            **extra,
        )
        self.manager.emit(event)

    def _report_nan(self, step: int, what: str) -> None:
        with self._lock:
            if self._nan_reported:
                return
            self._nan_reported = True
        if self.config.stop_on_nan:
            self._stop_requested = True
        where = f"step {step}" + (f" (epoch {self._epoch + 1})" if self._epoch is not None else "")
        action = " Training will stop." if self.config.stop_on_nan else ""
        self._emit(
            EventType.NAN_DETECTED,
            f"NaN/Inf {what}: {self.model_name}",
            f"{what} became NaN or Inf at {where}.{action}",
            step=step,
            epoch=self._epoch,
            metric=what,
            rank_any=True,
        )

    def _read_window(self) -> None:
        window = self._accumulator.read()
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
        values = _floats(metrics)
        self._last_metrics.update(values)
        x = epoch if epoch is not None else self._last_step
        for metric, number in values.items():
            self._metric_points.setdefault(metric, []).append((x, number))
        verdict = self._metric.observe(values, epoch)
        name = verdict.name or "metric"
        key = f"{name}-{epoch}-{self._last_step}"
        if verdict.change is Change.NON_FINITE:
            self._report_nan(self._last_step, name)
        elif verdict.change is Change.IMPROVED:
            self._emit(
                EventType.LOSS_IMPROVED,
                f"{name} improved: {self.model_name}",
                f"{name} {format_value(verdict.previous_best)} → {format_value(verdict.value)}",
                metrics={name: verdict.value},
                epoch=epoch,
                step=self._last_step,
                key=key,
            )
        elif verdict.change is Change.DEGRADED:
            self._emit(
                EventType.LOSS_DEGRADED,
                f"{name} not improving: {self.model_name}",
                f"{name} is {format_value(verdict.value)}, no better than "
                f"{format_value(verdict.previous_best)} for {verdict.stale_count} evaluations.",
                metrics={name: verdict.value, f"best_{name}": verdict.previous_best},
                epoch=epoch,
                step=self._last_step,
                key=key,
            )
        return values

    def _begin_end(self) -> bool:
        """Mark the run ended; False when it already was (the first end wins)."""
        with self._lock:
            if self._finished:
                return False
            self._finished = True
        self._read_window()
        return True

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
        if self._metric.best is not None:
            summary["best"] = {
                self._metric.name or "metric": self._metric.best,
                "epoch": self._metric.best_epoch,
            }
        summary.update(self._monitor_summary())
        return summary

    def _duration(self) -> float:
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at

    def _stalled(self, idle: float) -> None:
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
        try:
            return {} if self._monitors is None else dict(self._monitors.summary().to_dict())
        except Exception:
            return {}

    def _monitor_lines(self) -> list[str]:
        try:
            return [] if self._monitors is None else list(self._monitors.summary().lines())
        except Exception:
            return []

    def _stop_background(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._monitors is not None:
            try:
                self._monitors.stop()
            except Exception:
                log.debug("afs-callbacks: stopping monitors failed", exc_info=True)

    def _finish(self) -> None:
        _active.discard(self)
        self._stop_background()
        # The process may exit right after this hook: deliver now, within a bound.
        self.manager.flush(self.config.flush_timeout)


def _chart(
    losses: list[tuple[int, float]], metrics: dict[str, list[tuple[int, float]]], model: str
) -> Attachment | None:
    # Imported here: matplotlib is optional and only needed once, at the end of a run.
    from afs_callbacks.tracking.charts import loss_chart

    return loss_chart(losses, metrics, title=f"{model}: training loss")


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are numbers, as floats (0-d tensors read at epoch granularity)."""
    values: dict[str, float] = {}
    for key, raw in metrics.items():
        number = _to_float(raw)
        if number is not None:
            values[str(key)] = number
    return values


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
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
    if type(error).__name__ == "KeyboardInterrupt":
        return "KeyboardInterrupt (Ctrl-C)"
    return "SIGTERM (preemption or job cancellation)"


__all__ = ["RunTracker", "TrackerConfig", "active_tracker"]
