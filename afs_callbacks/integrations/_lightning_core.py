"""The Lightning adapter's logic, written once for both namespaces.

``lightning.pytorch`` and ``pytorch_lightning`` are two copies of the same code with
distinct ``Callback`` classes, so this module imports neither: :class:`LightningNotifyCore`
holds every hook, and each namespace's module adds one thin subclass that also inherits
that namespace's ``Callback``. Trainer and module objects are used only through the
attributes both copies share.

The hooks translate; the :class:`~afs_callbacks.tracking.RunTracker` decides what is news.
With ``accumulate_grad_batches`` a step is an optimizer step and its loss the real mean of
its batches (Lightning hands each batch's loss divided by the factor). The completion says
why fit ended (``_stops.lightning``) and names ModelCheckpoint's best file; under SLURM
auto-requeue the requeue signal is one "preempted, requeued" message (``_slurm``).
Every hook body is guarded: an error in here is logged once and never reaches Lightning.
"""

from __future__ import annotations

from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.integrations import _lightning_read as read
from afs_callbacks.integrations import _stops
from afs_callbacks.integrations._base import NotifierBase, hook
from afs_callbacks.integrations._guard import hook_failed
from afs_callbacks.integrations._lightning_support import LightningRunSupport

log = get_logger(__name__)

_SIGTERM_REASON = "SIGTERM (preemption or job cancellation)"


class LightningNotifyCore(LightningRunSupport):
    """Tell people what a Lightning run is doing, through the channels you configured.

    Reports the start (or resume), epochs, metric improvements and plateaus, NaN/Inf,
    out-of-memory, crashes, interruptions (Ctrl-C, SIGTERM), checkpoints, evaluations,
    stalls, and a completion summary with a loss chart.

    Channels come from the environment (or ``.env``) unless ``manager`` is given. Secrets
    never go in arguments: LightningCLI writes them to ``config.yaml``. The arguments are
    those of every adapter (:class:`~afs_callbacks.integrations._base.NotifierBase`);
    here ``model_name`` defaults to the LightningModule's class name, ``nan_check_every``
    to the trainer's ``log_every_n_steps``, and under DDP ``stop_on_nan`` makes the ranks
    agree every ``nan_check_every`` steps. ``crash_hook`` changes nothing: Lightning has
    its own exception hook.

    Example::

        from afs_callbacks.integrations.lightning import AFSNotify

        trainer = Trainer(max_epochs=10, callbacks=[AFSNotify(monitor="val_acc", mode="max")])
    """

    __init__ = NotifierBase.__init__  # LightningCLI reads the arguments from here

    _fits = 0  # fit() calls seen: the next one is a new run

    # Setup and start ----------------------------------------------------------------

    @hook
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Learn this process's rank from the trainer and share rank zero's run id.

        A second ``fit`` with the same callback is a new run (unless a tracker was given).
        """
        if stage == "fit" and self._fits:
            self._new_run()
        self._resolve(model_name=type(pl_module).__name__)
        self._bind(
            rank=int(trainer.global_rank),
            world_size=int(trainer.world_size),
            is_global_zero=bool(trainer.is_global_zero),
        )
        self._warn_if_manager_dropped()
        if trainer.world_size > 1:
            # Every rank calls setup, so this collective cannot leave a rank waiting.
            self._share_run_id(lambda run_id: trainer.strategy.broadcast(run_id, src=0))

    @hook
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """TRAINING_STARTED, or TRAINING_RESUMED when fit was given a checkpoint."""
        self._reset_run()
        self._fits += 1
        self._stop_on_nan = self.tracker.config.stop_on_nan  # read on every step
        self._step_counter = read.step_counter(trainer, pl_module)
        self._seen_step = int(trainer.global_step)
        self._loss_scale = read.loss_scale(trainer, pl_module)
        self._requeue.install(trainer)
        self._resolve(nan_check_every=max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50)))
        tracker = self.tracker
        self._checkpoints_seen = {
            index: read.checkpoint_marker(callback)
            for index, callback in enumerate(read.checkpointers(trainer))
        }
        ckpt_path = getattr(trainer, "ckpt_path", None)
        tracker.start(
            resumed_from=None if ckpt_path is None else str(ckpt_path), **read.plan(trainer, pl_module)
        )

    # Training steps and epochs ------------------------------------------------------

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """The hot path: hand the loss tensor over as is (no ``.item()``, no metric reads).

        With gradient accumulation only the batch that ends an optimizer step counts as a
        step, with the real mean loss of the step's batches. Guarded inline, not with
        :func:`~afs_callbacks.integrations._base.hook`: a wrapper's frame is a fifth of
        this hook's cost."""
        try:
            tracker = self.tracker
            if self._requeue.signalled:
                self._report_requeue()
            counter = self._step_counter
            step = trainer.global_step if counter is None else counter.completed
            loss = read.loss_of(outputs)
            if self._loss_scale != 1:
                loss = self._accumulated_loss(loss, ends_step=step != self._seen_step)
            if step == self._seen_step:  # a batch accumulated into the coming step
                tracker.heartbeat()
                return
            self._seen_step = step
            stop = tracker.on_step(step, loss=loss)
            self._steps += 1
            if self._checkpoint_pending:
                self._report_checkpoints(trainer)
            if self._stop_on_nan:
                self._agree_to_stop(trainer, stop)
        except Exception:
            hook_failed(self, "on_train_batch_end")

    def _agree_to_stop(self, trainer: Any, stop: bool) -> None:
        if trainer.world_size > 1:
            # Stopping one rank alone would hang the others in their next collective:
            # agree at the steps where every rank has just read its NaN flag.
            if self._steps % self.tracker.config.nan_check_every == 0:
                self._stop_if_any_rank(trainer, stop)
        elif stop:
            trainer.should_stop = True

    @hook
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Report the previous epoch, now that the module's own epoch-end logging is in."""
        counter = self._step_counter
        if counter is not None and counter.completed != trainer.global_step:
            self._step_counter = None  # Lightning moved its counter: back to the property
        self._report_pending_epoch(trainer)
        self.tracker.epoch_started(int(trainer.current_epoch))
        if self._checkpoint_pending:
            self._report_checkpoints(trainer)

    @hook
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Mark the epoch for reporting at the next hook.

        Lightning runs callbacks' ``on_train_epoch_end`` before the module's, so metrics the
        module logs there are only visible from the next hook on.
        """
        if self._checkpoint_pending:
            self._report_checkpoints(trainer)
        epoch = int(trainer.current_epoch)
        self._pending_epoch = (epoch, self._validated_epoch == epoch)

    @hook
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """TRAINING_COMPLETED with the summary (this hook does not run when fit fails)."""
        reported = self._report_pending_epoch(trainer)
        self._report_checkpoints(trainer)
        tracker = self.tracker
        nan_stop = tracker.stop_requested and tracker.config.stop_on_nan
        # Metrics already seen at the last epoch must not count twice towards a plateau.
        tracker.completed(
            None if reported else read.floats(trainer.callback_metrics),
            end_reason=_stops.lightning(trainer, nan_stop=nan_stop),
            best_checkpoint=read.best_checkpoint(trainer),
        )

    @hook
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Stop the tracker's watchdog and monitors."""
        self.tracker.close()

    # Validation and test ------------------------------------------------------------

    @hook
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """An evaluation begins; the sanity check is not one."""
        if trainer.sanity_checking:
            return
        if read.fitting(trainer):
            self._before_validation = read.floats(trainer.callback_metrics)
            self.tracker.evaluation_started(in_training=True)
        else:
            self.tracker.evaluation_started()

    @hook
    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Validation progress keeps the stall watchdog quiet."""
        self.tracker.heartbeat()

    @hook
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """In fit, the metrics join the epoch's report; standalone, they are reported now."""
        if trainer.sanity_checking:
            return
        metrics = read.floats(trainer.callback_metrics)
        if not read.fitting(trainer):
            self.tracker.evaluation_completed(metrics)
            return
        # Remember which metrics validation produces, so an epoch without validation
        # (check_val_every_n_epoch > 1) does not report, or judge, last epoch's values.
        before = self._before_validation
        self._val_keys.update(key for key, value in metrics.items() if before.get(key) != value)
        self._validated_epoch = int(trainer.current_epoch)

    @hook
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        """A test run begins."""
        self.tracker.evaluation_started()

    @hook
    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Test progress keeps the stall watchdog quiet."""
        self.tracker.heartbeat()

    @hook
    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        """A test run finished with its metrics."""
        self.tracker.evaluation_completed(read.floats(trainer.callback_metrics))

    # Failures -----------------------------------------------------------------------

    @hook
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Fit raised: out of memory, interrupted (Ctrl-C, SIGTERM) or failed. Delivered,
        within ``flush_timeout``, before Lightning re-raises and the process exits."""
        stage = read.stage(trainer)
        if stage == "fit" and self._requeue.signalled:
            self._report_requeue()  # the SIGTERM that follows a requeue is part of it
            return
        if stage in ("validate", "test"):
            self.tracker.evaluation_failed(exception)
        elif stage == "fit":
            if getattr(trainer, "received_sigterm", False):
                # Whatever was raised (SIGTERMException, or a collective torn down by a
                # preempted peer), the cause is the signal.
                self.tracker.interrupted(_SIGTERM_REASON)
            else:
                self.tracker.failed(exception)

    # Checkpoints --------------------------------------------------------------------

    @hook
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """A checkpoint is being written; its path is known once ModelCheckpoint has saved
        it, so it is reported from the next hook."""
        self._checkpoint_pending = True

    def state_dict(self) -> dict[str, Any]:
        """Run id, best metric and started marker, kept in checkpoints for resuming."""
        try:
            return self.tracker.state_dict()
        except Exception:
            log.exception("afs-callbacks: AFSNotify.state_dict failed; the checkpoint is saved without it")
            return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from a checkpoint: the run keeps its id and best metric and is reported
        as resumed."""
        try:
            self.tracker.load_state_dict(state_dict)
        except Exception:
            log.exception("afs-callbacks: AFSNotify.load_state_dict failed; training continues")
