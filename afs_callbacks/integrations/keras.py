"""Notifications from Keras 3 ``fit()`` runs, on any backend (torch, JAX, TensorFlow).

Example::

    from afs_callbacks.integrations.keras import AFSNotify

    model.fit(x, y, epochs=10, validation_split=0.1, callbacks=[AFSNotify()])

Cost per step: overriding a batch-level hook makes Keras run every batch synchronously
unless the callback declares ``async_safe = True``. This one does: its batch hooks only
read the host floats Keras already prepares for its progress bar (on a worker thread,
off the training loop where the backend allows it) and update counters under a lock.

Keras has no exception hook: when ``fit()`` raises, ``on_train_end`` never runs. So the
callback wraps, on the model instance only, the training step function of the running
``fit()`` and ``model.fit`` itself for the later calls: an exception escaping them closes
the run at once as failed (then goes on, unchanged), even when your code catches it (a
notebook, a retry loop); see ``_caller.wrap_call``. It also installs a ``sys.excepthook``
fallback and lets SIGTERM be reported while training runs. ``with afs_callbacks.watch():
model.fit(...)`` still works and reports instead.

Keras gives callbacks no view of the others; at the start of ``fit()`` the callback list is
looked up the call stack once, to tell why a run ended (``EarlyStopping``,
``TerminateOnNaN``) and where ``ModelCheckpoint`` saved.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from afs_callbacks.integrations._base import (
    MAX_EPOCHS,
    SHOULD_STOP,
    TERMINATE_ON_NAN,
    NotifierBase,
    early_stopping,
    hook,
    named,
)
from afs_callbacks.integrations._caller import holder_in_stack, holds, wrap_call
from afs_callbacks.tracking.values import floats, positive

try:
    import keras
except ImportError as error:  # pragma: no cover - depends on what is installed
    from afs_callbacks._install import install_hint

    raise ImportError(
        f"afs_callbacks.integrations.keras needs Keras 3 and a backend: {install_hint('keras')}"
        " and torch, jax or tensorflow (set KERAS_BACKEND=torch|jax|tensorflow before importing keras)"
    ) from error


class FitAbandoned(RuntimeError):
    """What a run is closed with when its ``fit()`` raised outside the training step before
    the callback could watch it, and the caller started another ``fit()``."""

    def __init__(self) -> None:
        super().__init__("the previous fit() raised before it ended (caught by the caller)")


class AFSNotify(NotifierBase, keras.callbacks.Callback):  # type: ignore[misc]
    """Tell people what a Keras ``fit()`` run is doing, through your channels.

    Reports the start (a resume when ``fit`` starts past epoch 0), epochs, metric
    improvements and plateaus, NaN/Inf (at the batch it appears, like
    ``TerminateOnNaN``), stalls, crashes and interruptions (through the excepthook
    fallback or :func:`afs_callbacks.watch`), standalone ``evaluate()`` results, and a
    completion summary with a loss chart.

    The arguments are those of every adapter
    (:class:`~afs_callbacks.integrations._base.NotifierBase`); here ``model_name``
    defaults to the model's ``name``, and ``run_id`` should be given (a job id) under
    multi-process training so that every process shares it.

    Example::

        model.fit(x, y, epochs=50, callbacks=[AFSNotify(monitor="val_accuracy", mode="max")])
    """

    #: Batch hooks may run on Keras' worker thread: they only touch floats and counters.
    async_safe: ClassVar[bool] = True

    # Per-fit state, set again by each on_train_begin (evaluate() alone uses none of it).
    _training = False
    _announced = False
    _step_base = 0  # batches of the epochs before this one
    _last_batch = -1  # the highest batch index seen in this epoch
    _peers: tuple[Any, ...] = ()  # the fit's callbacks (this one included)
    _epochs_done = 0
    _fit_wall = 0.0  # time.time() at the start of fit: older files are not its saves
    _pending_save: tuple[int, dict[str, Any]] | None = None  # the epoch ModelCheckpoint may save
    # Asks from outside waiting for a safe point: a checkpoint is saved at the next batch's
    # start (on the training thread, between steps); a stop's save at the end of fit.
    _save_ask: Any = None
    _stop_ask: Any = None

    # Start and end ------------------------------------------------------------------

    @hook
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Prepare the run; it is announced at the first epoch, which tells a resume."""
        if self._in_training():
            # The previous fit() never reached on_train_end: it raised where no wrapper saw
            # it (a data pipeline or callback error in the first fit). Close it now.
            self._caller_caught(sys.exc_info()[1] or FitAbandoned())
        if self._tracker_ended():
            self._new_run()  # the same callback in a second fit() call: a new run
        self._name_model()
        self._peers = tuple(getattr(holder_in_stack(holds(self)), "callbacks", None) or ())
        self._epochs_done, self._pending_save = 0, None
        self._saves_seen: set[tuple[str, float]] = set()
        self._fit_wall = time.time()
        # This fit's step function, and the later fits whole: see the module docstring.
        wrap_call(self.model, "train_function", self._caller_caught)
        wrap_call(self.model, "fit", self._caller_caught)
        rank, processes = _process_rank()
        self._bind(rank=rank, world_size=processes)
        self._batch_lock = threading.Lock()  # async dispatch may run two batch hooks at once
        self._training, self._announced = True, False
        self._step_base, self._last_batch = 0, -1
        self._save_ask = self._stop_ask = None
        self._install_crash_hooks()

    @hook
    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """The first epoch announces the run: TRAINING_STARTED, or TRAINING_RESUMED when
        ``fit`` starts past epoch 0 (``initial_epoch``, ``BackupAndRestore``)."""
        self._report_saves()
        if self._announced:
            self.tracker.epoch_started(epoch)
            return
        self._announced = True
        tracker = self.tracker
        params = self.params or {}
        epochs, steps = positive(params.get("epochs")), positive(params.get("steps"))
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
        self._attach_control(_process_rank()[1])
        tracker.epoch_started(epoch)

    @hook
    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """TRAINING_COMPLETED with the summary (Keras skips this hook on a crash)."""
        self._training = False
        self._remove_sigterm_handler()
        self._report_saves()
        self._save_if_asked(final=True)
        tracker = self.tracker
        loss = floats(logs or {}).get("loss")
        reason = _end_reason(
            self.model,
            self._peers,
            epochs_done=self._epochs_done,
            epochs=positive((self.params or {}).get("epochs")),
            nan_seen=loss is not None and not math.isfinite(loss),
            nan_stop=tracker.stop_requested and tracker.config.stop_on_nan,
        )
        self._peers = ()
        # The last epoch's metrics were judged at its end: they must not count twice.
        tracker.completed(None, end_reason=reason)

    # Batches and epochs -------------------------------------------------------------

    @hook
    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """A batch (or ``steps_per_execution`` batches) finished; ``logs["loss"]`` is the
        epoch's running mean, so a NaN stays visible until the epoch ends."""
        loss = logs.get("loss") if logs else None
        if loss is not None and type(loss) is not float:  # a float is what Keras hands over
            loss = _batch_loss(logs)
        batch = int(batch)
        with self._batch_lock:  # async dispatch may run two of these at once
            if batch > self._last_batch:
                self._last_batch = batch
            attention = self.tracker.on_step(self._step_base + batch + 1, loss=loss)
            if attention:
                self._take_asks()
        if attention and (self._stop_asked(attention) or self._stop_ask is not None):
            self.model.stop_training = True

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """A checkpoint asked from outside is saved here: on the training thread, between
        two steps (the batch-end hook may run on Keras' worker thread)."""
        if self._save_ask is not None:
            self._save_if_asked(final=False)

    def _take_asks(self) -> None:
        """Hold what was asked for the safe points (called under the batch lock)."""
        asked = self.tracker.asked()
        if asked.checkpoint is not None:
            self._save_ask = asked.checkpoint
        if asked.stop is not None:
            self._stop_ask = asked.stop

    @hook
    def _save_if_asked(self, *, final: bool) -> None:
        """Save the checkpoint asked for (and, at the end of fit, the one a stop saves where
        the run has a ModelCheckpoint), then answer the asks with its path."""
        asks = [self._save_ask] if self._save_ask is not None else []
        self._save_ask = None
        if final and self._stop_ask is not None:
            asks.append(self._stop_ask)  # the weights are final now
            self._stop_ask = None
        if not asks:
            return
        tracker = self.tracker
        kind = "checkpoint" if any(ask.action == "checkpoint" for ask in asks) else "stop"
        target = _command_checkpoint(self._peers, kind, tracker.steps)
        if target is None:
            for ask in asks:
                if ask.action == "checkpoint":
                    tracker.answered(ask, error="no checkpoint location: add keras.callbacks.ModelCheckpoint")
            return
        path, weights_only = target
        if weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        tracker.checkpoint_saved(path, step=self._step_base)
        for ask in asks:
            tracker.answered(ask, checkpoint=path)

    @hook
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """EPOCH_COMPLETED at the configured cadence, with the epoch's metrics."""
        with self._batch_lock:  # Keras has waited for the batch hooks already
            self._step_base += self._last_batch + 1
            self._last_batch = -1
        metrics = floats(logs or {})
        tracker = self.tracker
        loss = metrics.get("loss")
        if loss is not None and not math.isfinite(loss):
            tracker.nan_detected(self._step_base, "loss")
        tracker.epoch_end(epoch, metrics)
        self._epochs_done = epoch + 1
        self._pending_save = (epoch, dict(logs or {}))
        self._report_saves()  # a ModelCheckpoint listed before this callback has saved
        if self._stop_asked(tracker.stop_requested):
            self.model.stop_training = True

    # Evaluation ---------------------------------------------------------------------

    @hook
    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """A standalone ``evaluate()`` is announced; validation inside ``fit`` is not."""
        if self._in_training():
            self.tracker.heartbeat()
        else:
            self._name_model()
            self.tracker.evaluation_started()

    @hook
    def on_test_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Evaluation progress keeps the stall watchdog quiet."""
        self.tracker.heartbeat()

    @hook
    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """A standalone ``evaluate()`` reports its metrics; validation joins the epoch."""
        if self._in_training():
            self.tracker.heartbeat()
        else:
            self.tracker.evaluation_completed(floats(logs or {}))

    def _name_model(self) -> None:
        """The model's ``name`` (else its class), unless ``model_name`` was given."""
        self._resolve(model_name=str(getattr(self.model, "name", None) or type(self.model).__name__))

    def _report_saves(self) -> None:
        """CHECKPOINT_SAVED for what ModelCheckpoint wrote for the last epoch. It has no
        hook of its own: the file it names for that epoch is looked for after each epoch
        (epoch-level saves; ``save_freq`` in batches is not followed)."""
        if self._pending_save is None:
            return
        epoch, logs = self._pending_save
        for path, best in _new_saves(self._peers, epoch, logs, since=self._fit_wall, seen=self._saves_seen):
            self.tracker.checkpoint_saved(path, step=self._step_base, best=best)


# Why fit() ended ------------------------------------------------------------------------


def _end_reason(
    model: Any,
    callbacks: Iterable[Any],
    *,
    epochs_done: int,
    epochs: int | None,
    nan_seen: bool,
    nan_stop: bool,
) -> str | None:
    """Why ``model.fit`` ended (None: the tracker infers it)."""
    if nan_stop:
        return None
    callbacks = list(callbacks)
    if not getattr(model, "stop_training", False):
        return MAX_EPOCHS if epochs and epochs_done >= epochs else None
    for stopper in named(callbacks, "EarlyStopping"):
        if getattr(stopper, "stopped_epoch", 0):
            return early_stopping(stopper.monitor, stopper.patience, getattr(stopper, "best", None))
    if nan_seen and named(callbacks, "TerminateOnNaN"):
        return TERMINATE_ON_NAN
    return SHOULD_STOP


# What the adapter reads from Keras objects (duck-typed) ----------------------------------


def _batch_loss(logs: Mapping[str, Any] | None) -> float | None:
    """The host float Keras prepared for its progress bar, if the logs hold one."""
    loss = (logs or {}).get("loss")
    return float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None


def _new_saves(
    peers: Iterable[Any],
    epoch: int,
    logs: Mapping[str, Any],
    *,
    since: float,
    seen: set[tuple[str, float]],
) -> list[tuple[str, bool]]:
    """(path, best) of each file a ModelCheckpoint among ``peers`` wrote for ``epoch``,
    modified after ``since`` (``time.time()``) and not in ``seen`` (which records it)."""
    found: list[tuple[str, bool]] = []
    for saver in named(peers, "ModelCheckpoint"):
        path = _checkpoint_path(saver, epoch, logs)
        try:
            written = os.path.getmtime(path) if path else None
        except OSError:
            continue
        if path is None or written is None or written + 1 < since:
            continue
        if (path, written) in seen:
            continue
        seen.add((path, written))
        found.append((str(path), bool(getattr(saver, "save_best_only", False))))
    return found


def _checkpoint_path(saver: Any, epoch: int, logs: Mapping[str, Any]) -> str | None:
    """The file ModelCheckpoint writes for ``epoch`` (0-based) with these logs."""
    try:
        return str(saver._get_file_path(epoch, None, dict(logs)))  # how it names it itself
    except Exception:
        try:
            return str(saver.filepath).format(epoch=epoch + 1, **logs)
        except Exception:
            return None


def _command_checkpoint(peers: Iterable[Any], kind: str, step: int) -> tuple[str, bool] | None:
    """Where a checkpoint asked from outside goes, and whether it holds weights only:
    beside the first ModelCheckpoint's file, in its format (``.weights.h5`` or
    ``.keras``); None without a ModelCheckpoint (Keras has no folder of its own)."""
    for saver in named(peers, "ModelCheckpoint"):
        filepath = str(getattr(saver, "filepath", "") or "")
        if not filepath:
            continue
        folder = os.path.dirname(os.path.abspath(filepath))
        weights_only = filepath.endswith(".weights.h5") or bool(getattr(saver, "save_weights_only", False))
        suffix = ".weights.h5" if weights_only else ".keras"
        return os.path.join(folder, f"afs-{kind}-step{step}{suffix}"), weights_only
    return None


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


__all__ = ["AFSNotify", "FitAbandoned"]
