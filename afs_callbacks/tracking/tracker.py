"""The framework-free run tracker: training semantics in, events and run snapshots out.

Framework adapters translate their hooks into the calls below and hold no logic of their
own. The tracker knows what a run is (started, steps, epochs, a monitored metric getting
better or worse, NaN, OOM, interruption, stall, end) and nothing about channels: it hands
events to a sink (:class:`~afs_callbacks.tracking.sink.EventSink`, the
:class:`~afs_callbacks.manager.NotificationManager` by default) and, when the sink has
``update_run``, snapshots of the run (:class:`~afs_callbacks.runstate.RunState`).

Every public method is safe to call from a framework hook: it never raises and never
waits on a network. :meth:`RunTracker.on_step` is the hot path: a few counters and a
clock read. The loss windows are read on a reader thread (:mod:`.reader`): no device sync
on the training thread, except with ``stop_on_nan`` (once every ``nan_check_every`` steps)
and at the run's end. Events go to the sink's ``post`` where it has one (the manager's
admits them on its writer thread).

Numbering: the ``epoch`` arguments are 0-based indices, as frameworks count; every field
and text shown to people is 1-based ("Epoch 1/3", ``epoch=1``).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Mapping
from typing import Any

from afs_callbacks import messages
from afs_callbacks._log import get_logger
from afs_callbacks.events import EventType
from afs_callbacks.formatting import describe_exception
from afs_callbacks.tracking import registry
from afs_callbacks.tracking.cluster import slurm_context
from afs_callbacks.tracking.config import TrackerConfig, cadence_hit
from afs_callbacks.tracking.ends import RunEnds
from afs_callbacks.tracking.facts import _guarded
from afs_callbacks.tracking.registry import active_tracker
from afs_callbacks.tracking.values import floats, last_line, smoke

log = get_logger(__name__)


class RunTracker(RunEnds):
    """Turns training signals into events and snapshots for one run.

    Args:
        manager: the sink events go to (anything with ``emit(event)``, optionally
            ``update_run(state, points)``); None builds ``NotificationManager.from_env()``
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
        **extra: Any,
    ) -> None:
        """Training begins (TRAINING_STARTED, or TRAINING_RESUMED after a checkpoint).

        ``samples_per_step``: samples one optimizer step consumes (batch size times
        accumulated batches; default ``batch_size``), for samples/s. ``smoke_run``: a
        framework's quick check (Lightning's ``fast_dev_run``), said in the titles. The
        SLURM job, array task and node list join the context (``extra``) by themselves.

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
        record.extra.update({k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool))})
        registry.register(self)
        resumed = self._resumed or resumed_from is not None
        if resumed_from is not None:
            self.checkpoint_loading(resumed_from)
        text = messages.training_started(
            self.model_name,
            self._run_id,
            host=socket.gethostname(),
            plan_text=messages.plan(epochs, max_steps, batch_size, world_size),
            resumed=resumed,
        )
        if smoke_run:
            text = smoke(text)
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
            self._background.start_watchdog(
                self._config.stall_timeout, lambda: self._last_progress, self._stalled
            )
        if self._config.monitors and self.is_global_zero:
            paths = [output_dir] if output_dir else []
            self._background.start_monitors(
                self.manager, paths=paths, run_id=self._run_id, model=self.model_name, gpu_count=world_size
            )
        self._update_run = getattr(self.manager, "update_run", None) if self.is_global_zero else None
        self._snapshot()

    def on_step(self, step: int, loss: Any = None, grad_norm: Any = None) -> bool:
        """One optimisation step finished. Returns True when training should stop.

        The loss may be a device tensor: it is kept as is, and each window of
        ``nan_check_every`` steps is read on the reader thread, never here.
        """
        try:
            now = time.monotonic()
            self._last_progress = now
            self._steps += 1
            self._last_step = step
            if loss is not None and self._accumulator.add(step, loss):
                self._report_nan(step, "loss")
            if grad_norm is not None and isinstance(grad_norm, float) and not math.isfinite(grad_norm):
                self._report_nan(step, "grad_norm")
            if self._steps % self._nan_every == 0:
                self._read_window()
            elif self._reads.landed:  # a window's verdict came in from the reader thread
                self._take_windows(self._reads.ready())
            if self._batch_every and step % self._batch_every == 0:
                self._batch_processed(step)
            if now >= self._next_snapshot:
                self._snapshot()
            return self._stop_requested
        except Exception:
            log.exception("afs-callbacks: on_step failed; training continues")
            return False

    def heartbeat(self) -> None:
        """Progress that is not a training step (an evaluation batch): keeps the stall
        watchdog quiet."""
        self._last_progress = time.monotonic()

    def epoch_started(self, epoch: int) -> None:
        """An epoch (0-based index) begins: messages during it can name it."""
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
        the message follows the epoch cadence; a standalone evaluation (after training, a
        ``validate()`` call) always reports and judges nothing."""
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
            EventType.EVALUATION_COMPLETED,
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
            error=last_line(text),
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
    def nan_detected(self, step: int, what: str = "loss") -> None:
        """``what`` became NaN/Inf at ``step`` (reported once per run)."""
        self._report_nan(step, what)


__all__ = ["RunTracker", "TrackerConfig", "active_tracker"]
