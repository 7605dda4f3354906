"""The Lightning adapter's work between hooks: its per-run state, the epoch report a
hook defers, the mean loss of accumulated batches, checkpoints, SLURM requeues and the
ranks' agreement to stop.

A base of :class:`~afs_callbacks.integrations._lightning_core.LightningNotifyCore`, kept
apart so the adapter itself only translates hooks; imports no Lightning namespace.
"""

from __future__ import annotations

from typing import Any

from afs_callbacks.integrations import _lightning_read as read
from afs_callbacks.integrations._base import NotifierBase
from afs_callbacks.integrations._slurm import RequeueWatch


class LightningRunSupport(NotifierBase):
    """What the Lightning adapter does besides translating hooks (internal)."""

    def _reset_run(self) -> None:
        """The per-run state, set again by each ``on_train_start``."""
        self._steps = 0
        self._stop_on_nan = False  # settled by on_train_start from the tracker's config
        self._step_counter: Any = None  # Lightning's record behind global_step, when found
        self._pending_epoch: tuple[int, bool] | None = None  # (epoch, validated during it)
        self._validated_epoch: int | None = None
        self._val_keys: set[str] = set()
        self._before_validation: dict[str, float] = {}
        self._checkpoint_pending = False
        self._checkpoints_seen: dict[int, tuple[Any, Any]] = {}
        # Gradient accumulation: the optimizer step seen last, and the loss of the batches
        # accumulated into the next one (a sum on the loss's device).
        self._seen_step = -1
        self._loss_scale = 1
        self._window_loss: Any = None
        self._window_batches = 0
        self._requeue = RequeueWatch()

    def _report_pending_epoch(self, trainer: Any) -> bool:
        if self._pending_epoch is None:
            return False
        epoch, validated = self._pending_epoch
        self._pending_epoch = None
        metrics = read.floats(trainer.callback_metrics)
        if not validated:
            metrics = {key: value for key, value in metrics.items() if key not in self._val_keys}
        self.tracker.epoch_end(epoch, metrics)
        if self.tracker.config.stop_on_nan:
            if trainer.world_size > 1:
                self._stop_if_any_rank(trainer, self.tracker.stop_requested)
            elif self.tracker.stop_requested:
                trainer.should_stop = True
        return True

    def _accumulated_loss(self, loss: Any, *, ends_step: bool) -> Any:
        """Add a batch's loss to the step being accumulated; when the batch ends the step,
        return the step's real mean loss. Lightning divided each batch's loss by
        ``accumulate_grad_batches``; rescaling by the batches actually seen keeps a short
        last window at an epoch's end right too. Tensors stay on their device."""
        if loss is not None:
            self._window_loss = loss if self._window_loss is None else self._window_loss + loss
            self._window_batches += 1
        if not ends_step:
            return None
        total, batches = self._window_loss, self._window_batches
        self._window_loss, self._window_batches = None, 0
        return None if total is None else total * (self._loss_scale / batches)

    def _report_requeue(self) -> None:
        """SLURM asked for the job to be requeued: one message, before the scheduler stops
        the process; the requeued job resumes this run from Lightning's HPC checkpoint."""
        self._requeue.signalled = False
        self.tracker.interrupted(self._requeue.reason())

    def _stop_if_any_rank(self, trainer: Any, local: bool) -> None:
        if trainer.strategy.reduce_boolean_decision(bool(local), all=False):
            trainer.should_stop = True

    def _report_checkpoints(self, trainer: Any) -> None:
        self._checkpoint_pending = False
        for index, callback in enumerate(read.checkpointers(trainer)):
            marker = read.checkpoint_marker(callback)
            if marker[0] and marker != self._checkpoints_seen.get(index):
                self._checkpoints_seen[index] = marker
                step = marker[1] if isinstance(marker[1], int) else None
                self.tracker.checkpoint_saved(str(marker[0]), step=step)


__all__ = ["LightningRunSupport"]
