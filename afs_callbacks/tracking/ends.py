"""The ends of a run: completed, failed (out of memory), interrupted. The first wins;
each stops the watchdog before anything else and hands over the final state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afs_callbacks import _pending as pending
from afs_callbacks import messages
from afs_callbacks._log import get_logger
from afs_callbacks.events import Attachment, EventType, NotificationLevel
from afs_callbacks.formatting import describe_exception
from afs_callbacks.runstate import COMPLETED, FAILED, INTERRUPTED
from afs_callbacks.tracking import registry
from afs_callbacks.tracking.classify import Failure, classify, mark_reported, oom_device
from afs_callbacks.tracking.facts import _guarded
from afs_callbacks.tracking.memory import cuda_memory_figures
from afs_callbacks.tracking.reporting import Reporting
from afs_callbacks.tracking.run import infer_end_reason, summary_of
from afs_callbacks.tracking.values import interrupt_reason, last_line, smoke

log = get_logger(__name__)


class RunEnds(Reporting):
    """The end-of-run reports of :class:`~afs_callbacks.tracking.tracker.RunTracker`."""

    @_guarded
    def failed(self, error: BaseException) -> None:
        """Training raised ``error``: OUT_OF_MEMORY, TRAINING_INTERRUPTED or TRAINING_FAILED.

        Delivery is flushed (bounded by ``flush_timeout``): the process is likely about to
        exit. Only the first end of a run is reported.
        """
        mark_reported(error)  # on this run, whichever of the calls below reports it
        kind = classify(error)
        if kind is Failure.INTERRUPTED:
            self.interrupted(interrupt_reason(error))
            return
        if not self._begin_end():
            return
        text = describe_exception(error)
        record = self._record
        record.status, record.error_type, record.error = FAILED, type(error).__name__, last_line(text)
        context: dict[str, Any] = {
            "error": record.error,
            "error_type": record.error_type,
            "step": self._last_step,
            "epoch": self._epoch_number(),
            "duration": self._duration(),
        }
        oom = kind is Failure.OUT_OF_MEMORY
        if oom:
            device = oom_device(error)
            # A dict display, not keywords: the figures repeat "device" (and keep its value).
            context.update({"device": device, **cuda_memory_figures(device), **self._background.summary()})
        event_type = EventType.OUT_OF_MEMORY if oom else EventType.TRAINING_FAILED
        self._emit(
            event_type,
            messages.training_failed(self.model_name, text, out_of_memory=oom),
            rank_any=True,
            **context,
        )
        self._finish(flush=True)

    @_guarded
    def interrupted(self, reason: str = "interrupted") -> None:
        """Training was stopped from outside (Ctrl-C, SIGTERM/preemption)."""
        if not self._begin_end():
            return
        self._record.status, self._record.end_reason = INTERRUPTED, reason
        duration = self._duration()
        self._emit(
            EventType.TRAINING_INTERRUPTED,
            messages.training_interrupted(self.model_name, self._run_id, reason, self._last_step, duration),
            reason=reason,
            step=self._last_step,
            epoch=self._epoch_number(),
            duration=duration,
            rank_any=True,
        )
        self._finish(flush=True)

    @_guarded
    def completed(
        self,
        metrics: Mapping[str, Any] | None = None,
        *,
        end_reason: str | None = None,
        best_checkpoint: str | None = None,
    ) -> None:
        """Training reached its end: TRAINING_COMPLETED with the run's summary and chart.

        Args:
            metrics: final metrics not reported at an epoch end already.
            end_reason: why the run ended, as the framework tells (``max_epochs``,
                ``max_steps``, ``max_time``, ``early_stopping (val_loss, patience 3)``,
                ``should_stop``...); default: inferred from the plan or a NaN stop.
            best_checkpoint: the best checkpoint's path, for the summary.

        A run that saw a NaN/Inf loss is reported as a warning, not a success. Returns at
        once: delivery happens in the background (and at process exit).
        """
        if not self._begin_end():
            return
        if metrics:
            self._observe(metrics)
        record = self._record
        if best_checkpoint:
            record.best_checkpoint = str(best_checkpoint)
        stopped = self._stop_requested and self._config.stop_on_nan
        record.status = COMPLETED
        record.end_reason = end_reason or infer_end_reason(record, self._last_step, stopped)
        monitors = self._background.summary()
        summary = summary_of(
            record,
            duration=self._duration(),
            steps=self._steps,
            monitor=self._metric.name,
            best=self._metric.best,
            best_epoch=self._metric.best_epoch,
            extra_lines=self._background.lines(),
        )
        text = messages.training_completed(
            self.model_name, self._run_id, summary, nan_seen=self._nan_reported, stopped_on_nan=stopped
        )
        if record.extra.get("smoke_run"):
            text = smoke(text)
        record.summary_text = text.body
        fields: dict[str, Any] = {
            "duration": summary.duration,
            "steps": self._steps,
            "step": self._last_step,
            "epoch": record.epochs_done,
            "epochs_run": record.epochs_done,
            "steps_per_second": summary.steps_per_second,
            "samples_per_second": summary.samples_per_second,
            "end_reason": record.end_reason,
            "best_checkpoint": record.best_checkpoint,
            **monitors,
        }
        if self._metric.best is not None:
            fields["best"] = {
                self._metric.name or "metric": self._metric.best,
                "epoch": self._metric.best_epoch,
            }
        event = self._event(
            EventType.TRAINING_COMPLETED,
            text,
            level=NotificationLevel.WARNING if self._nan_reported else None,
            metrics=dict(record.last_metrics),
            **fields,
        )
        if event is not None:
            sink = self.manager
            if self._config.chart and self.is_global_zero:
                # Drawing takes a second or more: not on the training thread (see _pending).
                # The event keeps the time the run ended; only its attachment comes later.
                pending.start(
                    lambda: sink.emit(event.with_changes(attachments=self._chart_attachment())),
                    "afs-completion-chart",
                    owner=sink,
                )
            else:
                sink.emit(event)
        self._finish(flush=False)

    def _chart_attachment(self) -> tuple[Attachment, ...]:
        """The loss chart, or nothing when it cannot be drawn (the message goes anyway)."""
        try:
            chart = self._chart()
        except Exception:
            log.warning("afs-callbacks: the loss chart could not be drawn", exc_info=True)
            return ()
        return (chart,) if chart is not None else ()

    @_guarded
    def close(self) -> None:
        """Stop the watchdog and monitors without reporting anything."""
        self._background.stop()

    def _begin_end(self) -> bool:
        """Mark the run ended; False when it already was (the first end wins). The
        watchdog stops here, before anything else, so no stall follows an end."""
        with self._lock:
            if self._finished:
                return False
            self._finished = True
        self._background.stop_watchdog()
        self._read_window(wait=True)
        return True

    def _finish(self, *, flush: bool) -> None:
        """The end was reported: stop what runs beside the run and send the final state.

        ``flush`` (failures and interruptions, after which the process usually exits):
        wait up to ``flush_timeout`` for delivery. A completed run never waits: delivery
        goes on in the background and, at the latest, at process exit.
        """
        registry.unregister(self)
        if self._update_run is None and not self.is_global_zero:
            self._update_run = getattr(self.manager, "update_run", None)  # its own end
        self._snapshot()
        self._background.stop()
        if flush:
            flush_now = getattr(self.manager, "flush", None)
            if callable(flush_now):
                flush_now(self._config.flush_timeout)


__all__ = ["RunEnds"]
