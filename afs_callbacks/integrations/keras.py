"""Notifications from Keras 3 ``fit()`` runs, on any backend (torch, JAX, TensorFlow).

Example::

    from afs_callbacks.integrations.keras import AFSNotify

    model.fit(x, y, epochs=10, validation_split=0.1, callbacks=[AFSNotify()])

Cost per step: overriding a batch-level hook makes Keras run every batch synchronously
unless the callback declares ``async_safe = True``. This one does: its batch hooks only
read the host floats Keras already prepares for its progress bar (on a worker thread,
off the training loop where the backend allows it) and update counters under a lock.

Keras has no exception hook: when ``fit()`` raises, ``on_train_end`` never runs. The
callback installs a ``sys.excepthook`` fallback that reports an uncaught crash (and lets
SIGTERM be reported while training runs); for a crash your code catches, or in a
notebook, wrap the call: ``with afs_callbacks.watch(): model.fit(...)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar, cast

from afs_callbacks._log import get_logger
from afs_callbacks.manager import NotificationManager
from afs_callbacks.tracking import RunTracker, TrackerConfig
from afs_callbacks.watch import install_excepthook, install_sigterm_handler

try:
    import keras
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "afs_callbacks.integrations.keras needs Keras 3 and a backend: pip install 'afs-callbacks[keras]'"
        " and torch, jax or tensorflow (set KERAS_BACKEND=torch|jax|tensorflow before importing keras)"
    ) from error

log = get_logger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _hook(method: _F) -> _F:
    """Run a hook body so that no exception reaches Keras; log each hook's first failure."""

    @functools.wraps(method)
    def guarded(self: AFSNotify, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            if method.__name__ not in self._failed_hooks:  # a per-batch hook would flood the log
                self._failed_hooks.add(method.__name__)
                log.exception("afs-callbacks: AFSNotify.%s failed; training continues", method.__name__)
            return None

    return cast(_F, guarded)


class AFSNotify(keras.callbacks.Callback):  # type: ignore[misc]
    """Tell people what a Keras ``fit()`` run is doing, through your channels.

    Reports the start (a resume when ``fit`` starts past epoch 0), epochs, metric
    improvements and plateaus, NaN/Inf (at the batch it appears, like
    ``TerminateOnNaN``), stalls, crashes and interruptions (through the excepthook
    fallback or :func:`afs_callbacks.watch`), standalone ``evaluate()`` results, and a
    completion summary with a loss chart.

    Args:
        manager: where notifications go (default: ``NotificationManager.from_env()``,
            built on first use, channels from the environment or ``.env``).
        model_name: shown in every message (default: the model's ``name``).
        run_id: identifies the run (default: generated). Under multi-process training
            give every process the same one (a job id), so that a failure several
            processes report is delivered once.
        monitor: metric whose improvement/plateau is reported (default: ``val_loss``,
            else ``loss``).
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
        min_delta: smallest change of ``monitor`` that counts as an improvement.
        patience: epochs without improvement before a "not improving" warning.
        epoch_every: report every N epochs (default: about ten reports per run).
        batch_every: report every N batches (0, the default: never).
        nan_check_every: batches per point of the loss chart (the NaN check itself is
            free: Keras hands over floats).
        stop_on_nan: stop training at the first NaN/Inf loss, like ``TerminateOnNaN``.
        stall_timeout: seconds without a finished batch before "training stalled"
            (None: off).
        monitors: watch GPU/host memory, temperature and cost during the run.
        chart: attach a loss-curve PNG to the completion message (needs ``matplotlib``).
        flush_timeout: seconds to wait for delivery when the run ends, fails or is stopped.
        crash_hook: install the ``sys.excepthook`` fallback and the SIGTERM handler while
            training runs (each only where nobody installed one).
        tracker: a ready :class:`~afs_callbacks.tracking.RunTracker` to report through
            (the other arguments except ``crash_hook`` are then ignored).

    Raises:
        ValueError: an argument out of range; the message quotes it.

    Example::

        model.fit(x, y, epochs=50, callbacks=[AFSNotify(monitor="val_accuracy", mode="max")])
    """

    #: Batch hooks may run on Keras' worker thread: they only touch floats and counters.
    async_safe: ClassVar[bool] = True

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
        nan_check_every: int = 50,
        stop_on_nan: bool = False,
        stall_timeout: float | None = 1800.0,
        monitors: bool = True,
        chart: bool = True,
        flush_timeout: float = 5.0,
        crash_hook: bool = True,
        tracker: RunTracker | None = None,
    ) -> None:
        super().__init__()
        try:
            self._config = TrackerConfig(
                model_name=model_name,
                run_id=run_id,
                monitor=monitor,
                mode=mode,
                min_delta=min_delta,
                patience=patience,
                epoch_every=epoch_every,
                batch_every=batch_every,
                nan_check_every=nan_check_every,
                stop_on_nan=stop_on_nan,
                stall_timeout=stall_timeout,
                monitors=monitors,
                chart=chart,
                flush_timeout=flush_timeout,
            )
        except ValueError as error:
            raise ValueError(str(error).replace("TrackerConfig(", "AFSNotify(")) from None
        self._manager = manager
        self._tracker = tracker
        self._given_tracker = tracker is not None
        self.crash_hook = crash_hook
        self._failed_hooks: set[str] = set()
        self._restore_sigterm: Callable[[], None] | None = None
        self._batch_lock = threading.Lock()
        self._training = False
        self._announced = False
        self._step_base = 0  # batches of the epochs before this one
        self._last_batch = -1  # the highest batch index seen in this epoch

    @property
    def tracker(self) -> RunTracker:
        """The run tracker this callback reports through (built on first use)."""
        if self._tracker is None:
            self._tracker = RunTracker(manager=self._manager, config=self._config)
        return self._tracker

    def __repr__(self) -> str:
        return f"AFSNotify(model_name={self._config.model_name!r}, monitor={self._config.monitor!r})"

    # Start and end ------------------------------------------------------------------

    @_hook
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Prepare the run; it is announced at the first epoch, which tells a resume."""
        if self._tracker is not None and self._tracker.finished and not self._given_tracker:
            self._tracker = None  # the same callback in a second fit() call: a new run
        if self._config.model_name is None and not self._given_tracker:
            name = getattr(self.model, "name", None) or type(self.model).__name__
            self._config = dataclasses.replace(self._config, model_name=str(name))
        tracker = self.tracker
        rank, processes = _process_rank()
        if processes > 1:
            tracker.is_global_zero, tracker.rank = rank == 0, rank
        self._training, self._announced = True, False
        self._step_base, self._last_batch = 0, -1
        if self.crash_hook:
            install_excepthook()
            if self._restore_sigterm is None:
                self._restore_sigterm = install_sigterm_handler()

    @_hook
    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """The first epoch announces the run: TRAINING_STARTED, or TRAINING_RESUMED when
        ``fit`` starts past epoch 0 (``initial_epoch``, ``BackupAndRestore``)."""
        if self._announced:
            return
        self._announced = True
        tracker = self.tracker
        params = self.params or {}
        epochs, steps = _positive(params.get("epochs")), _positive(params.get("steps"))
        if epoch > 0 and not tracker.started:
            tracker.load_state_dict({**tracker.state_dict(), "started": True})
        self._step_base = epoch * steps if steps else 0
        tracker.start(
            epochs=epochs,
            max_steps=epochs * steps if epochs and steps else None,
            world_size=_process_rank()[1],
            initial_epoch=epoch or None,
            backend=keras.backend.backend(),
        )

    @_hook
    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """TRAINING_COMPLETED with the summary (Keras skips this hook on a crash)."""
        self._training = False
        if self._restore_sigterm is not None:
            self._restore_sigterm()
            self._restore_sigterm = None
        # The last epoch's metrics were judged at its end: they must not count twice.
        self.tracker.completed(None)

    # Batches and epochs -------------------------------------------------------------

    @_hook
    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """A batch (or ``steps_per_execution`` batches) finished; ``logs["loss"]`` is the
        epoch's running mean, so a NaN stays visible until the epoch ends."""
        loss = (logs or {}).get("loss")
        loss = float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None
        with self._batch_lock:  # async dispatch may run two of these at once
            self._last_batch = max(self._last_batch, int(batch))
            stop = self.tracker.on_step(self._step_base + int(batch) + 1, loss=loss)
        if stop and self.tracker.config.stop_on_nan:
            self.model.stop_training = True

    @_hook
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """EPOCH_COMPLETED at the configured cadence, with the epoch's metrics."""
        with self._batch_lock:  # Keras has waited for the batch hooks already
            self._step_base += self._last_batch + 1
            self._last_batch = -1
        metrics = _floats(logs)
        tracker = self.tracker
        loss = metrics.get("loss")
        if loss is not None and not math.isfinite(loss):
            tracker.nan_detected(self._step_base, "loss")
        tracker.epoch_end(epoch, metrics)
        if tracker.stop_requested and tracker.config.stop_on_nan:
            self.model.stop_training = True

    # Evaluation ---------------------------------------------------------------------

    @_hook
    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """A standalone ``evaluate()`` is announced; validation inside ``fit`` is not."""
        if self._in_training():
            self.tracker.heartbeat()
        else:
            self.tracker.evaluation_started()

    @_hook
    def on_test_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Evaluation progress keeps the stall watchdog quiet."""
        self.tracker.heartbeat()

    @_hook
    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """A standalone ``evaluate()`` reports its metrics; validation joins the epoch."""
        if self._in_training():
            self.tracker.heartbeat()
        else:
            self.tracker.evaluation_completed(_floats(logs))

    def _in_training(self) -> bool:
        """Inside ``fit()``: begun, and neither ended nor crashed (a crash skips
        ``on_train_end`` but ends the run)."""
        return self._training and self._tracker is not None and not self._tracker.finished


def _process_rank() -> tuple[int, int]:
    """(this process's index, process count) from Keras' distribution, when one is set."""
    try:
        distribution = keras.distribution.distribution()
    except Exception:
        return 0, 1
    if distribution is None:
        return 0, 1
    count = int(getattr(distribution, "num_processes", 1) or 1)
    return int(getattr(distribution, "_process_id", 0) or 0), count


def _floats(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric entries of ``logs`` as a new dict (Keras hands over Python floats)."""
    values: dict[str, float] = {}
    for key, value in (logs or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[str(key)] = float(value)
    return values


def _positive(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and value > 0 else None


__all__ = ["AFSNotify"]
