"""The Lightning adapter's logic, written once for both namespaces.

``lightning.pytorch`` and ``pytorch_lightning`` are two copies of the same code with
distinct ``Callback`` classes, so this module imports neither: :class:`LightningNotifyCore`
holds every hook, and each namespace's module adds one thin subclass that also inherits
that namespace's ``Callback``. Trainer and module objects are used only through the
attributes both copies share.

The hooks translate; the :class:`~afs_callbacks.tracking.RunTracker` decides what is news.
Every hook body is guarded: an error in here is logged once and never reaches Lightning.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

from afs_callbacks._log import get_logger
from afs_callbacks.integrations import _lightning_read as read
from afs_callbacks.manager import NotificationManager
from afs_callbacks.tracking import RunTracker, TrackerConfig

log = get_logger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])
_SIGTERM_REASON = "SIGTERM (preemption or job cancellation)"


def _hook(method: _F) -> _F:
    """Run a hook body so that no exception reaches the trainer; log each hook's first failure."""

    @functools.wraps(method)
    def guarded(self: LightningNotifyCore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            name = method.__name__
            if name not in self._failed_hooks:  # a per-step hook would flood the log
                self._failed_hooks.add(name)
                log.exception("afs-callbacks: AFSNotify.%s failed; training continues", name)
            return None

    return cast(_F, guarded)


class LightningNotifyCore:
    """Tell people what a Lightning run is doing, through the channels you configured.

    Reports the start (or resume), epochs, metric improvements and plateaus, NaN/Inf,
    out-of-memory, crashes, interruptions (Ctrl-C, SIGTERM), checkpoints, evaluations,
    stalls, and a completion summary with a loss chart.

    Channels come from the environment (or ``.env``) unless ``manager`` is given. Secrets
    never go in arguments: LightningCLI writes them to ``config.yaml``.

    Args:
        manager: where notifications go (default: ``NotificationManager.from_env()``, built
            in each process on first use).
        model_name: shown in every message (default: the LightningModule's class name).
        run_id: identifies the run (default: generated on global rank zero, shared with
            every rank in ``setup``, and kept across resumes).
        monitor: metric whose improvement/plateau is reported (default: ``val_loss``, then
            ``loss``/``train_loss``, whichever is logged).
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
        min_delta: smallest change of ``monitor`` that counts as an improvement.
        patience: epochs without improvement before a "not improving" warning.
        epoch_every: report every N epochs (default: about ten reports per run).
        batch_every: report every N steps (0, the default: never).
        nan_check_every: steps between reads of the on-device NaN/Inf flag, one device sync
            each (default: the trainer's ``log_every_n_steps``).
        stop_on_nan: stop training at the first NaN/Inf loss, like ``TerminateOnNaN``
            (under DDP the ranks agree on it every ``nan_check_every`` steps).
        stall_timeout: seconds without a finished step before "training stalled" (None: off).
        monitors: watch GPU/host memory, temperature and cost during the run.
        chart: attach a loss-curve PNG to the completion message (needs ``matplotlib``).
        flush_timeout: seconds to wait for delivery when the run ends, fails or is stopped.
        tracker: a ready :class:`~afs_callbacks.tracking.RunTracker` to report through
            (the other arguments except ``manager`` are then ignored).

    Raises:
        ValueError: an argument out of range; the message quotes it.

    Example::

        from afs_callbacks.integrations.lightning import AFSNotify

        trainer = Trainer(max_epochs=10, callbacks=[AFSNotify(monitor="val_acc", mode="max")])
    """

    def __init__(
        self,
        manager: NotificationManager | None = None,
        *,
        model_name: str | None = None,
        run_id: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        min_delta: float = 0.0,
        patience: int = 3,
        epoch_every: int | None = None,
        batch_every: int = 0,
        nan_check_every: int | None = None,
        stop_on_nan: bool = False,
        stall_timeout: float | None = 1800.0,
        monitors: bool = True,
        chart: bool = True,
        flush_timeout: float = 5.0,
        tracker: RunTracker | None = None,
    ) -> None:
        super().__init__()
        try:
            config = TrackerConfig(
                model_name=model_name,
                run_id=run_id,
                monitor=monitor,
                mode=mode,
                min_delta=min_delta,
                patience=patience,
                epoch_every=epoch_every,
                batch_every=batch_every,
                nan_check_every=50 if nan_check_every is None else nan_check_every,
                stop_on_nan=stop_on_nan,
                stall_timeout=stall_timeout,
                monitors=monitors,
                chart=chart,
                flush_timeout=flush_timeout,
            )
        except ValueError as error:
            raise ValueError(str(error).replace("TrackerConfig(", f"{type(self).__name__}(")) from None
        self._config = config
        self._manager = manager
        self._tracker = tracker
        self._own_tracker = tracker is None
        self._own_nan_cadence = nan_check_every is None and tracker is None
        self._fits = 0
        self._manager_dropped = False
        self._run_id_shared = False
        self._failed_hooks: set[str] = set()
        self._reset_fit_state()

    def _reset_fit_state(self) -> None:
        self._steps = 0
        self._pending_epoch: tuple[int, bool] | None = None  # (epoch, validated during it)
        self._validated_epoch: int | None = None
        self._val_keys: set[str] = set()
        self._before_validation: dict[str, float] = {}
        self._checkpoint_pending = False
        self._checkpoints_seen: dict[int, tuple[Any, Any]] = {}

    @property
    def tracker(self) -> RunTracker:
        """The run tracker this callback reports through (built on first use)."""
        if self._tracker is None:
            self._tracker = RunTracker(manager=self._manager, config=self._config)
        return self._tracker

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks to its workers; a manager holds threads and a database
        # connection that cannot travel, so each worker builds its own from the environment.
        state = self.__dict__.copy()
        state["_manager_dropped"] = self._manager is not None or self._manager_dropped
        state["_manager"] = None
        return state

    # Setup and start ----------------------------------------------------------------

    @_hook
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Learn this process's rank from the trainer and share rank zero's run id.

        A second ``fit`` with the same callback is a new run (unless a tracker was given).
        """
        if stage == "fit" and self._fits and self._own_tracker and self._tracker is not None:
            self._tracker.close()
            self._tracker, self._run_id_shared = None, False
        if self._config.model_name is None:
            name = type(pl_module).__name__
            if self._tracker is None:  # the run id is then named after the model too
                self._config = dataclasses.replace(self._config, model_name=name)
            elif self._tracker.config.model_name is None:
                self._tracker.model_name = name
        tracker = self.tracker
        tracker.is_global_zero = bool(trainer.is_global_zero)
        tracker.rank = int(trainer.global_rank)
        if self._manager_dropped and tracker.is_global_zero:
            self._manager_dropped = False
            log.warning(
                "afs-callbacks: the manager given to AFSNotify(manager=...) cannot be sent to"
                " spawned worker processes; each worker takes its channels from the environment"
            )
        if trainer.world_size > 1 and not self._run_id_shared:
            # Every rank calls setup, so this collective cannot leave a rank waiting. Ranks
            # that share the run id make one message of a failure several of them report.
            tracker.run_id = str(trainer.strategy.broadcast(tracker.run_id, src=0))
            self._run_id_shared = True

    @_hook
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """TRAINING_STARTED, or TRAINING_RESUMED when fit was given a checkpoint."""
        self._reset_fit_state()
        self._fits += 1
        tracker = self.tracker
        if self._own_nan_cadence:
            every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))
            tracker.config = dataclasses.replace(tracker.config, nan_check_every=every)
        self._checkpoints_seen = {
            index: read.checkpoint_marker(callback)
            for index, callback in enumerate(read.checkpointers(trainer))
        }
        ckpt_path = getattr(trainer, "ckpt_path", None)
        tracker.start(
            epochs=read.positive(trainer.max_epochs),
            max_steps=read.positive(trainer.max_steps),
            batch_size=read.batch_size(trainer),
            devices=read.devices(trainer),
            world_size=trainer.world_size,
            resumed_from=None if ckpt_path is None else str(ckpt_path),
            strategy=type(trainer.strategy).__name__,
            precision=str(getattr(trainer, "precision", "")) or None,
        )

    # Training steps and epochs ------------------------------------------------------

    @_hook
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """The hot path: hand the loss tensor over as is (no ``.item()``, no metric reads)."""
        stop = self.tracker.on_step(trainer.global_step, loss=read.loss_of(outputs))
        self._steps += 1
        if self._checkpoint_pending:
            self._report_checkpoints(trainer)
        if self.tracker.config.stop_on_nan:
            if trainer.world_size > 1:
                # Stopping one rank alone would hang the others in their next collective:
                # agree at the steps where every rank has just read its NaN flag.
                if self._steps % self.tracker.config.nan_check_every == 0:
                    self._stop_if_any_rank(trainer, stop)
            elif stop:
                trainer.should_stop = True

    @_hook
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Report the previous epoch, now that the module's own epoch-end logging is in."""
        self._report_pending_epoch(trainer)
        if self._checkpoint_pending:
            self._report_checkpoints(trainer)

    @_hook
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Mark the epoch for reporting at the next hook.

        Lightning runs callbacks' ``on_train_epoch_end`` before the module's, so metrics the
        module logs there are only visible from the next hook on.
        """
        if self._checkpoint_pending:
            self._report_checkpoints(trainer)
        epoch = int(trainer.current_epoch)
        self._pending_epoch = (epoch, self._validated_epoch == epoch)

    @_hook
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """TRAINING_COMPLETED with the summary (this hook does not run when fit fails)."""
        reported = self._report_pending_epoch(trainer)
        self._report_checkpoints(trainer)
        # Metrics already seen at the last epoch must not count twice towards a plateau.
        self.tracker.completed(None if reported else read.floats(trainer.callback_metrics))

    @_hook
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Stop the tracker's watchdog and monitors."""
        self.tracker.close()

    # Validation and test ------------------------------------------------------------

    @_hook
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """An evaluation begins; the sanity check is not one."""
        if trainer.sanity_checking:
            return
        if read.fitting(trainer):
            self._before_validation = read.floats(trainer.callback_metrics)
            self.tracker.evaluation_started(in_training=True)
        else:
            self.tracker.evaluation_started()

    @_hook
    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Validation progress keeps the stall watchdog quiet."""
        self.tracker.heartbeat()

    @_hook
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

    @_hook
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        """A test run begins."""
        self.tracker.evaluation_started()

    @_hook
    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Test progress keeps the stall watchdog quiet."""
        self.tracker.heartbeat()

    @_hook
    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        """A test run finished with its metrics."""
        self.tracker.evaluation_completed(read.floats(trainer.callback_metrics))

    # Failures -----------------------------------------------------------------------

    @_hook
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Fit raised: out of memory, interrupted (Ctrl-C, SIGTERM) or failed. Delivered,
        within ``flush_timeout``, before Lightning re-raises and the process exits."""
        stage = read.stage(trainer)
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

    @_hook
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

    # Helpers ------------------------------------------------------------------------

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
