"""The Lightning adapter, written once for both namespaces.

``lightning.pytorch`` and ``pytorch_lightning`` are two copies of the same code with
distinct ``Callback`` classes, so this module imports neither: :class:`LightningNotifyCore`
holds every hook and the work between them, and each namespace's module
(:mod:`~afs_callbacks.integrations.lightning`,
:mod:`~afs_callbacks.integrations.pytorch_lightning`) adds one thin subclass that also
inherits that namespace's ``Callback``. Trainer, module, callback and output objects are
used only through the attributes both copies share (the readers at the bottom).

The hooks translate; the :class:`~afs_callbacks.tracking.RunTracker` decides what is news.
With ``accumulate_grad_batches`` a step is an optimizer step and its loss the real mean of
its batches (Lightning hands each batch's loss divided by the factor). The completion says
why fit ended (:func:`end_reason`) and names ModelCheckpoint's best file.
Every hook body is guarded: an error in here is logged once and never reaches Lightning.

SLURM auto-requeue: with ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default on
SLURM), the requeue signal (``SIGUSR1`` unless set otherwise) makes Lightning save an HPC
checkpoint and run ``scontrol requeue``; the scheduler then stops the job (SIGTERM) and
starts it again later, and Lightning resumes from that checkpoint. People want one message
for all of it: "preempted, requeued", and the resumed job under the same run.
:class:`RequeueWatch` puts a small handler in front of Lightning's for the requeue signal.
The handler only sets a flag (a signal handler must not take locks the interrupted code
may hold); the adapter reports when it next counts steps (within about 0.1 s of training)
or at its next hook, whichever comes first. Lightning's own teardown puts back the
handlers it found, which removes this one too.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from afs_callbacks._log import get_logger
from afs_callbacks.integrations._base import (
    FAST_DEV_RUN,
    MAX_EPOCHS,
    MAX_STEPS,
    MAX_TIME,
    SHOULD_STOP,
    NotifierBase,
    config_signature,
    early_stopping,
    early_stopping_not_finite,
    hook,
    hook_failed,
    named,
)
from afs_callbacks.tracking.cluster import slurm_job
from afs_callbacks.tracking.values import floats, positive

log = get_logger(__name__)

_SIGTERM_REASON = "SIGTERM (preemption or job cancellation)"


class LightningNotifyCore(NotifierBase):
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

    if TYPE_CHECKING:
        __init__ = NotifierBase.__init__
    else:

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            NotifierBase.__init__(self, *args, **kwargs)

        # LightningCLI (jsonargparse) builds its options and the config.yaml it saves from
        # this signature: the arguments a YAML file can give, not manager and tracker.
        __init__.__signature__ = config_signature()

    _fits = 0  # fit() calls seen: the next one is a new run

    # Hooks Lightning calls for every callback at every batch, each through a profiler
    # context (~2 µs a call, five calls a training step: ~0.7 % of a fast run's 1.2 ms step;
    # `benchmarks/bench_wall_clock.py --in-situ`), and that this callback has nothing to do in.
    # Lightning's dispatch skips an attribute that is not callable, so None here costs
    # nothing at all (issue #27). A subclass may still define any of them.
    on_train_batch_start = None
    on_before_backward = None
    on_after_backward = None
    on_before_optimizer_step = None
    on_before_zero_grad = None
    on_validation_batch_start = None
    on_test_batch_start = None
    on_predict_batch_start = None
    on_predict_batch_end = None

    def _reset_run(self) -> None:
        """The per-run state, set again by each ``on_train_start``."""
        self._steps = 0
        # Steps handed to the tracker and not counted yet (the tracker's list, from the
        # start on), how many are counted at once, and whether more than one ever is.
        self._handed: list[Any] = []
        self._count_at = 1
        self._steps_at_once = False
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
        if self.tracker.is_global_zero:
            # The manager (reading the environment), its threads, the store's open and the
            # death watcher's spawn, here rather than in on_train_start: inside the loop
            # they cost the run's first steps ~10 ms, more on a loaded machine (issue #27).
            prepare = getattr(self.tracker.manager, "prepare", None)
            if prepare is not None:
                prepare()

    @hook
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """TRAINING_STARTED, or TRAINING_RESUMED when fit was given a checkpoint."""
        self._reset_run()
        self._fits += 1
        self._step_counter = step_counter(trainer, pl_module)
        self._seen_step = int(trainer.global_step)
        self._loss_scale = loss_scale(trainer, pl_module)
        self._requeue.install(trainer)
        self._resolve(nan_check_every=max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50)))
        tracker = self.tracker
        self._checkpoints_seen = {
            index: checkpoint_marker(callback) for index, callback in enumerate(checkpointers(trainer))
        }
        ckpt_path = getattr(trainer, "ckpt_path", None)
        tracker.start(resumed_from=None if ckpt_path is None else str(ckpt_path), **plan(trainer, pl_module))
        self._attach_control(int(trainer.world_size))
        self._handed = tracker.handed
        # Manual optimization steps when the module says: a window could not tell its steps.
        automatic = bool(getattr(pl_module, "automatic_optimization", True))
        self._steps_at_once = automatic and self._loss_scale == 1 and not self._agree

    # Training steps and epochs ------------------------------------------------------

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """The hot path: keep the batch's loss as it is (no ``.item()``, no metric reads;
        only the loss, whatever else ``training_step`` returned) and count the steps kept
        every few, at the tracker's
        :meth:`~afs_callbacks.tracking.RunTracker.steps_to_count` (:meth:`_count_steps`).
        Guarded inline, not with :func:`~afs_callbacks.integrations._base.hook`: a wrapper's
        frame would cost more than the hook's own work."""
        try:
            handed = self._handed
            handed.append(loss_of(outputs))
            if len(handed) >= self._count_at:
                self._count_steps(trainer)
        except Exception:
            hook_failed(self, "on_train_batch_end")

    def _count_steps(self, trainer: Any) -> None:
        """Count the steps handed over since the last count, then act on what the tracker
        asks for (a NaN stop, a stop or a checkpoint from outside).

        A window of several batches is counted only where each batch is one optimizer step
        of its own loss (``_steps_at_once``); with gradient accumulation, or ranks that
        must agree at the same steps, every batch is counted as it ends."""
        if self._requeue.signalled:
            self._report_requeue()
        handed = self._handed
        if not handed:
            return
        losses = handed[:]
        handed.clear()
        tracker = self.tracker
        counter = self._step_counter
        step = trainer.global_step if counter is None else counter.completed
        if len(losses) == 1:
            loss = losses[0]
            if self._loss_scale != 1:
                loss = self._accumulated_loss(loss, ends_step=step != self._seen_step)
            first, losses = step, [] if step == self._seen_step else [loss]
        else:
            first, losses = self._window_steps(losses, step)
        self._seen_step = step
        if not losses:  # batches accumulated into the coming step, or skipped
            tracker.heartbeat()
            return
        attention = tracker.on_steps(first, losses)
        self._steps += len(losses)
        self._count_at = tracker.steps_to_count() if self._steps_at_once else 1
        if self._checkpoint_pending:
            self._report_checkpoints(trainer)
        if self._agree:
            # Stopping or saving on one rank alone would hang the others in their next
            # collective: the ranks agree at the steps where each has just read its NaN
            # flag, and rank zero tells the asks it holds.
            if self._steps % self._agree_every == 0:
                nan_stop, stop, checkpoint = self._agreed_asks(lambda flags: _reduce_max(trainer, flags))
                self._act(trainer, nan_stop=nan_stop, stop=stop, checkpoint=checkpoint)
        elif attention:
            stop, checkpoint = tracker.asks_waiting()
            self._act(trainer, nan_stop=tracker.stop_requested, stop=stop, checkpoint=checkpoint)

    def _window_steps(self, losses: list[Any], step: int) -> tuple[int, list[Any]]:
        """The first step and the losses of a window of batches that ended at ``step``.

        Each batch of a window is one optimizer step (``_steps_at_once``: automatic
        optimization without accumulation; a ``training_step`` that returns None makes a
        step without a loss). Should the count disagree all the same, the last batches take
        the steps, and from here on every batch is counted as it ends, which needs no guess."""
        advanced = step - self._seen_step
        if advanced != len(losses):
            self._steps_at_once = False
            losses = losses[max(0, len(losses) - max(advanced, 0)) :]
        return step - len(losses) + 1, losses

    def _act(self, trainer: Any, *, nan_stop: bool, stop: bool, checkpoint: bool) -> None:
        """At a step's end, with every rank agreeing: save a checkpoint (asked, or before a
        stop where the run has a checkpointer), then stop."""
        tracker = self.tracker
        asked = tracker.asked(stop=stop, checkpoint=checkpoint) if (stop or checkpoint) else None
        if checkpoint or (stop and checkpointers(trainer)):
            ask = asked.save if asked is not None else None
            try:
                path = command_checkpoint_path(trainer, "stop" if stop and not checkpoint else "checkpoint")
                trainer.save_checkpoint(path)  # every rank calls it; rank zero writes
            except Exception as error:
                log.warning("afs-callbacks: the checkpoint asked for could not be saved: %s", error)
                if ask is not None:
                    tracker.answered(ask, error=f"the checkpoint could not be saved: {type(error).__name__}")
            else:
                tracker.checkpoint_saved(path, step=int(trainer.global_step))
                if asked is not None:
                    for answered in {
                        id(a): a for a in (asked.checkpoint, asked.stop) if a is not None
                    }.values():
                        tracker.answered(answered, checkpoint=path)
        if stop or nan_stop:
            trainer.should_stop = True

    @hook
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Report the previous epoch, now that the module's own epoch-end logging is in."""
        self._count_steps(trainer)
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
        self._count_steps(trainer)
        if self._checkpoint_pending:
            self._report_checkpoints(trainer)
        epoch = int(trainer.current_epoch)
        self._pending_epoch = (epoch, self._validated_epoch == epoch)

    @hook
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """TRAINING_COMPLETED with the summary (this hook does not run when fit fails)."""
        reported = True
        try:
            self._count_steps(trainer)
            reported = self._report_pending_epoch(trainer)
            self._report_checkpoints(trainer)
        finally:
            # The end is what a person waits for: a failing epoch report (logged by the
            # hook guard) must not leave the run without one.
            tracker = self.tracker
            nan_stop = tracker.stop_requested and tracker.config.stop_on_nan
            # Metrics already seen at the last epoch must not count twice towards a plateau.
            tracker.completed(
                None if reported else floats(trainer.callback_metrics or {}),
                end_reason=end_reason(trainer, nan_stop=nan_stop),
                best_checkpoint=best_checkpoint(trainer),
            )

    @hook
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Stop the tracker's watchdog and monitors."""
        self._count_steps(trainer)
        self.tracker.close()

    # Validation and test ------------------------------------------------------------

    @hook
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """An evaluation begins; the sanity check is not one."""
        self._count_steps(trainer)
        if trainer.sanity_checking:
            return
        if fitting(trainer):
            self._before_validation = floats(trainer.callback_metrics or {})
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
        metrics = floats(trainer.callback_metrics or {})
        if not fitting(trainer):
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
        self.tracker.evaluation_completed(floats(trainer.callback_metrics or {}))

    # Failures -----------------------------------------------------------------------

    @hook
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Fit raised: out of memory, interrupted (Ctrl-C, SIGTERM) or failed. Delivered,
        within ``flush_timeout``, before Lightning re-raises and the process exits."""
        stage = stage_of(trainer)
        requeued = stage == "fit" and self._requeue.signalled
        # The steps before the failure (a NaN among them), and a requeue signalled, reported.
        self._count_steps(trainer)
        if requeued:
            return  # the SIGTERM that follows a requeue is part of it
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
        it, so it is reported from the next hook (the next batch's end counts its steps:
        a checkpoint saved while they are being counted must not count them again)."""
        self._checkpoint_pending = True
        self._count_at = 1

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

    # Between hooks ------------------------------------------------------------------

    def _report_pending_epoch(self, trainer: Any) -> bool:
        if self._pending_epoch is None:
            return False
        epoch, validated = self._pending_epoch
        self._pending_epoch = None
        metrics = floats(trainer.callback_metrics or {})
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
        # Only here for a NaN: every rank reaches the epoch's end at the same point.
        if trainer.strategy.reduce_boolean_decision(bool(local), all=False):
            trainer.should_stop = True

    def _report_checkpoints(self, trainer: Any) -> None:
        self._checkpoint_pending = False
        for index, callback in enumerate(checkpointers(trainer)):
            marker = checkpoint_marker(callback)
            if marker[0] and marker != self._checkpoints_seen.get(index):
                self._checkpoints_seen[index] = marker
                step = marker[1] if isinstance(marker[1], int) else None
                self.tracker.checkpoint_saved(str(marker[0]), step=step)


def _reduce_max(trainer: Any, flags: tuple[bool, ...]) -> tuple[bool, ...]:
    """Each flag true on any rank, through the trainer's strategy (a collective)."""
    import torch  # the Lightning adapter's framework brings it

    values = torch.tensor([int(flag) for flag in flags], device=trainer.strategy.root_device)
    total = trainer.strategy.reduce(values, reduce_op="sum")
    return tuple(bool(value > 0) for value in total.tolist())


def command_checkpoint_path(trainer: Any, kind: str) -> str:
    """Where a checkpoint asked from outside goes: beside ModelCheckpoint's files (its
    ``dirpath``), else in the trainer's ``default_root_dir``; the name says why and when
    (``afs-stop-step=120.ckpt``)."""
    folder = None
    for callback in checkpointers(trainer):
        folder = getattr(callback, "dirpath", None)
        if folder:
            break
    folder = str(folder or getattr(trainer, "default_root_dir", None) or os.getcwd())
    return os.path.join(folder, f"afs-{kind}-step={int(trainer.global_step)}.ckpt")


# SLURM requeue ----------------------------------------------------------------------


def requeue_signal(trainer: Any) -> int | None:
    """The signal Lightning requeues the SLURM job on, when it does (else None)."""
    environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    if environment is None:
        environment = getattr(getattr(trainer, "strategy", None), "cluster_environment", None)
    if type(environment).__name__ != "SLURMEnvironment" or not getattr(environment, "auto_requeue", False):
        return None
    number = getattr(environment, "requeue_signal", None)
    return int(number) if number is not None else None


class RequeueWatch:
    """Notices the SLURM requeue signal for one fit."""

    def __init__(self) -> None:
        self.signalled = False

    def install(self, trainer: Any) -> None:
        """Chain a flag-setting handler in front of Lightning's (main thread only)."""
        self.signalled = False
        number = requeue_signal(trainer)
        if number is None or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(number)
        if getattr(previous, "_afs_requeue_watch", False):
            return  # already in front (a second fit with the same callback)

        def on_requeue(signum: int, frame: FrameType | None) -> None:
            self.signalled = True
            if callable(previous):
                previous(signum, frame)

        on_requeue._afs_requeue_watch = True  # type: ignore[attr-defined]
        try:
            signal.signal(number, on_requeue)
        except (ValueError, OSError):
            log.debug("afs-callbacks: could not watch the SLURM requeue signal", exc_info=True)

    def reason(self) -> str:
        """What the interruption message says."""
        job = slurm_job()
        return f"preempted, requeued (SLURM job {job})" if job else "preempted, requeued"


# Why fit ended ------------------------------------------------------------------------


def end_reason(trainer: Any, *, nan_stop: bool) -> str | None:
    """Why ``trainer.fit`` ended, in the order Lightning's fit loop checks (None: the
    tracker infers it; see :mod:`afs_callbacks.integrations._base`)."""
    if getattr(trainer, "fast_dev_run", False):
        return FAST_DEV_RUN
    if nan_stop:
        return None
    max_steps = getattr(trainer, "max_steps", -1)
    if isinstance(max_steps, int) and max_steps > 0 and int(trainer.global_step) >= max_steps:
        return MAX_STEPS
    max_epochs = getattr(trainer, "max_epochs", None)
    if isinstance(max_epochs, int) and max_epochs > 0 and int(trainer.current_epoch) >= max_epochs:
        return MAX_EPOCHS
    if not getattr(trainer, "should_stop", False):
        return None
    callbacks = list(getattr(trainer, "callbacks", None) or [])
    for timer in named(callbacks, "Timer"):
        remaining = timer.time_remaining()
        if remaining is not None and remaining <= 0:
            return MAX_TIME
    for stopper in named(callbacks, "EarlyStopping"):
        reason = getattr(getattr(stopper, "stopping_reason", None), "name", "")
        if getattr(stopper, "stopped_epoch", 0) or (reason and reason != "NOT_STOPPED"):
            if reason == "NON_FINITE_METRIC":
                return early_stopping_not_finite(stopper.monitor)
            return early_stopping(stopper.monitor, stopper.patience, getattr(stopper, "best_score", None))
    return SHOULD_STOP


# What the adapter reads from trainer objects (duck-typed, both namespaces) -------------


def checkpointers(trainer: Any) -> list[Any]:
    """The trainer's checkpoint callbacks (ModelCheckpoint and friends)."""
    return list(getattr(trainer, "checkpoint_callbacks", None) or [])


def checkpoint_marker(callback: Any) -> tuple[Any, Any]:
    """The file a checkpoint callback wrote last, and at which step.

    ModelCheckpoint keeps the last file it wrote in ``_last_checkpoint_saved`` (set right
    after writing it); the public ``last_model_path``/``best_model_path`` are the fallback.
    """
    path = getattr(callback, "_last_checkpoint_saved", None) or (
        getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    )
    return path, getattr(callback, "_last_global_step_saved", None)


def step_counter(trainer: Any, pl_module: Any) -> Any | None:
    """Lightning's own progress record behind ``trainer.global_step`` (its ``completed`` is
    the global step), so that the step hook reads one attribute, not a chain of properties;
    None where it cannot be found or does not agree with ``global_step`` right now."""
    try:
        loop = trainer.fit_loop.epoch_loop
        if getattr(pl_module, "automatic_optimization", True):
            total = loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            total = loop.manual_optimization.optim_step_progress.total
        if isinstance(total.completed, int) and total.completed == trainer.global_step:
            return total
    except Exception:  # another layout: the property it is
        pass
    return None


def loss_of(outputs: Any) -> Any:
    """The loss from ``training_step``'s outputs, left on its device."""
    if type(outputs) is dict:  # what Lightning hands over: no ABC check on the hot path
        return outputs.get("loss")
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    if isinstance(outputs, (int, float)) and not isinstance(outputs, bool):
        return float(outputs)
    if hasattr(outputs, "isfinite") and hasattr(outputs, "detach"):
        return outputs
    return None


def batch_size(trainer: Any) -> int | None:
    """The training loader's batch size, when it has a plain one."""
    loader = getattr(trainer, "train_dataloader", None)
    size = getattr(loader, "batch_size", None)
    return size if isinstance(size, int) else None


def devices(trainer: Any) -> str | None:
    """This process's device (``cuda:0``, ``cpu``), or ``4x cuda`` for several per node."""
    try:
        device = trainer.strategy.root_device
        count = int(trainer.num_devices)
    except Exception:  # an exotic strategy without these: the start message goes without
        return None
    return str(device) if count == 1 else f"{count}x {device.type}"


def loss_scale(trainer: Any, pl_module: Any) -> int:
    """What a batch's loss in ``outputs`` was divided by: Lightning's automatic
    optimization divides it by ``accumulate_grad_batches`` (1: as the module returned it)."""
    if not getattr(pl_module, "automatic_optimization", True):
        return 1
    factor = getattr(trainer, "accumulate_grad_batches", 1)
    return factor if isinstance(factor, int) and factor > 1 else 1


def samples_per_step(trainer: Any, pl_module: Any) -> int | None:
    """Samples one optimizer step consumes in this process (batch size times the
    batches accumulated into it), when the loader has a plain batch size."""
    size = batch_size(trainer)
    return None if size is None else size * loss_scale(trainer, pl_module)


def best_checkpoint(trainer: Any) -> str | None:
    """The best checkpoint's path as ModelCheckpoint chose it (one that monitors a
    metric first), never just ``last.ckpt``."""
    callbacks = checkpointers(trainer)
    ordered = [cb for cb in callbacks if getattr(cb, "monitor", None)] + callbacks
    for callback in ordered:
        path = getattr(callback, "best_model_path", "")
        if path:
            return str(path)
    return None


def stage_of(trainer: Any) -> str | None:
    """What the trainer is doing: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"``."""
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    return None if fn is None else str(getattr(fn, "value", fn))


def fitting(trainer: Any) -> bool:
    """Whether the trainer runs ``fit`` (validation inside it included)."""
    return stage_of(trainer) == "fit"


def plan(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """What ``tracker.start`` is told about the run ``fit`` starts (besides a resume)."""
    return {
        "epochs": positive(trainer.max_epochs),
        "max_steps": positive(trainer.max_steps),
        "batch_size": batch_size(trainer),
        "devices": devices(trainer),
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(getattr(trainer, "precision", "")) or None,
        "samples_per_step": samples_per_step(trainer, pl_module),
        "smoke_run": bool(getattr(trainer, "fast_dev_run", False)),
    }


__all__ = ["LightningNotifyCore", "RequeueWatch", "end_reason", "requeue_signal", "step_counter"]
