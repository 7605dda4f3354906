"""Notifications from Hugging Face ``Trainer`` runs.

Example::

    from transformers import Trainer
    from afs_callbacks.integrations.transformers import AFSNotify

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[AFSNotify()])
    trainer.train()

The Trainer has no exception hook: when ``train()`` raises, no callback hears of it. So
the callback wraps ``train`` on that one Trainer instance (found up the call stack when
the Trainer is built, see ``_caller.wrap_call``): an exception escaping it closes the run
at once as failed, then goes on unchanged, even when your code catches it (a notebook, a
retry loop); the next ``train()`` is a new run. A callback added later with
``add_callback`` is watched from the next ``train()`` on. It also installs a
``sys.excepthook`` fallback and lets SIGTERM be reported while training runs;
``with afs_callbacks.watch(): trainer.train()`` still works and reports instead.

The completion says why the run ended: ``max_epochs``, ``max_steps``, ``early_stopping
(eval_loss, patience 3, best 0.21)`` (``EarlyStoppingCallback``), ``stop_on_nan``, or
``should_stop`` (another callback set ``control.should_training_stop``). ``predict()``
is inference, not an evaluation: it is not reported.

NaN/Inf: with ``logging_nan_inf_filter=True`` (the default) the Trainer hides a NaN step
loss behind the running average. What still shows, and is read here at no cost since the
Trainer hands over Python floats at each log:

* ``grad_norm`` is never filtered: a NaN loss makes the gradients NaN, and (without a
  loss scaler) the weights, so every later logged norm is NaN. Under ``fp16`` on a GPU a
  non-finite norm is a step the GradScaler skipped on purpose, and is not news.
* a window in which *every* step was NaN is logged as ``loss == 0.0`` exactly, with a
  non-finite gradient norm (a real zero loss has a zero, finite norm). Under ``fp16``
  this is how a run that only produces NaN shows, since the scaler keeps the weights.

Detection therefore happens at the first log at or after the bad step (``logging_steps``);
nothing is read from the device per step.
"""

from __future__ import annotations

import math
import os
from typing import Any

from afs_callbacks.integrations import _hf_read as read
from afs_callbacks.integrations import _stops
from afs_callbacks.integrations._base import hook
from afs_callbacks.integrations._caller import method_in_stack
from afs_callbacks.integrations._guard import hook_failed
from afs_callbacks.integrations._hf_read import STATE_FILE
from afs_callbacks.integrations._hf_support import HFRunSupport
from afs_callbacks.tracking.values import floats

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "afs_callbacks.integrations.transformers needs transformers with torch:"
        " pip install 'afs-callbacks[transformers]'"
    ) from error


class AFSNotify(HFRunSupport, TrainerCallback):  # type: ignore[misc]
    """Tell people what a Hugging Face Trainer run is doing, through your channels.

    Reports the start (or resume from a checkpoint), epochs, evaluations, improvements and
    plateaus of the monitored metric, NaN/Inf, checkpoints, stalls, crashes and
    interruptions (through the excepthook fallback or :func:`afs_callbacks.watch`), and a
    completion summary with a loss chart.

    The arguments are those of every adapter
    (:class:`~afs_callbacks.integrations._base.NotifierBase`); here ``model_name``
    defaults to the model's ``name_or_path`` (else its class name), ``monitor`` to the
    Trainer's ``metric_for_best_model`` (else ``eval_loss`` when evaluating, else
    ``loss``), ``mode`` to ``greater_is_better`` for that metric, and ``nan_check_every``
    to ``logging_steps`` (the Trainer reads the loss then anyway).

    Example::

        trainer = Trainer(model=model, args=args, train_dataset=data,
                          callbacks=[AFSNotify(model_name="bert-ft", stop_on_nan=True)])
        with afs_callbacks.watch():
            trainer.train()
    """

    # Until a train() starts (evaluate() alone uses none of these).
    _training = False
    _eval_announced = False
    _predicting = False

    def _reset_run(self) -> None:
        self._pending_step: int | None = None  # a step whose loss the coming log brings
        self._pending_epoch: int | None = None  # an epoch waiting for its evaluation
        self._epoch_metrics: dict[str, float] = {}
        self._final_metrics: dict[str, float] = {}

    # Start and end ------------------------------------------------------------------

    @hook
    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Name the model (``evaluate()`` alone needs it) and watch ``train()`` for an
        exception the caller catches (see ``_caller.wrap_call``)."""
        if model is not None:
            self._resolve(model_name=read.model_name(model))
        self._find_trainer()

    @hook
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """TRAINING_STARTED (TRAINING_RESUMED from a checkpoint). ``auto_find_batch_size``
        calls this again after an OOM it recovered from: that only updates the plan."""
        if self._tracker_ended():
            self._new_run()  # the same callback in a second train() call: a new run
        self._find_trainer()  # added with add_callback(): watched from the next train() on
        first = self._tracker is None or not self._tracker.started
        if first:
            self._prepare_run(args, state, model)
        tracker = self.tracker
        tracker.bind(is_global_zero=bool(state.is_world_process_zero))
        self._training = True
        resumed_from = None
        if first and state.global_step > 0:
            resumed_from = self._restore(args, state)
        tracker.start(resumed_from=resumed_from, **read.plan(args, state))

    @hook
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """TRAINING_COMPLETED with the summary (the Trainer skips this hook on a crash)."""
        self._report_step()
        self._report_epoch()
        self._training = False
        self._remove_sigterm_handler()
        tracker = self.tracker
        trainer = self._find_trainer()
        callbacks = read.callbacks_of(trainer)
        nan_stop = tracker.stop_requested and tracker.config.stop_on_nan
        tracker.completed(
            self._final_metrics or None,
            end_reason=_stops.transformers(args, state, control, callbacks, nan_stop=nan_stop),
        )

    # Steps, logs, epochs ----------------------------------------------------------------

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Count the step. Its loss is known only if a log follows: then on_log reports it.

        Guarded inline (see :func:`~afs_callbacks.integrations._guard.hook_failed`): this
        runs every step with the Trainer's keyword arguments."""
        try:
            if self._pending_step is not None:
                self._report_step()
            if control.should_log:  # DefaultFlowCallback, always first, has decided already
                self._pending_step = int(state.global_step)
                return None
            stop = self.tracker.on_step(int(state.global_step))
            return self._stop_if_asked(control, stop) if stop else None
        except Exception:
            hook_failed(self, "on_step_end")
            return None

    @hook
    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        """Read the logged floats (a copy: ``logs`` is shared with other callbacks)."""
        values = floats(logs or {})
        if "train_runtime" in values:  # the summary log train() ends with
            self._final_metrics = {k: v for k, v in values.items() if k == "train_loss"}
            return None
        if "loss" not in values:
            return None
        step = int(state.global_step)
        loss, grad_norm = read.logged_loss(args, values)
        self._epoch_metrics["loss"] = loss  # NaN rather than the filter's stand-in 0.0
        if "learning_rate" in values:
            self._epoch_metrics["learning_rate"] = values["learning_rate"]
        tracker = self.tracker
        if self._pending_step == step:
            self._pending_step = None
            return self._stop_if_asked(control, tracker.on_step(step, loss=loss, grad_norm=grad_norm))
        # A log at epoch end: the step was counted already; only NaN is news here.
        if not math.isfinite(loss):
            tracker.nan_detected(step, "loss")
        elif grad_norm is not None and not math.isfinite(grad_norm):
            tracker.nan_detected(step, "grad_norm")
        return self._stop_if_asked(control, tracker.stop_requested)

    @hook
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Report the previous epoch if its evaluation has not done so."""
        self._report_epoch()

    @hook
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Hold the epoch's report: the Trainer logs, evaluates and saves after this hook."""
        self._report_step()
        epoch = getattr(state, "epoch", None) or 0.0
        self._pending_epoch = max(0, math.ceil(float(epoch) - 1e-6) - 1)

    # Evaluation -------------------------------------------------------------------------

    @hook
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluation progress keeps the stall watchdog quiet; a standalone evaluation is
        announced (``predict()`` is not one: which call runs is looked up once per loop)."""
        tracker = self.tracker
        tracker.heartbeat()
        if not self._in_training() and not self._eval_announced:
            self._eval_announced = True
            self._predicting = method_in_stack(read.is_trainer, ("predict", "evaluate")) == "predict"
            if not self._predicting:
                tracker.bind(is_global_zero=bool(state.is_world_process_zero))
                tracker.evaluation_started()

    @hook
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> Any:
        """In training, per-epoch evaluations join the epoch's report and step-based ones
        are reported at the epoch cadence; ``trainer.evaluate()`` alone always reports."""
        values = read.results(metrics)
        tracker = self.tracker
        if not self._in_training():
            self._eval_announced = False
            tracker.bind(is_global_zero=bool(state.is_world_process_zero))
            tracker.evaluation_completed(values)
            return None
        if read.strategy(args.eval_strategy) == "epoch" and self._pending_epoch is not None:
            self._epoch_metrics.update(values)
            self._report_epoch()
        else:
            tracker.evaluation_completed(values, in_training=True)
        return self._stop_if_asked(control, tracker.stop_requested)

    @hook
    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        """``trainer.predict()`` finished: inference, not an evaluation; nothing to report."""
        self._eval_announced = self._predicting = False
        self.tracker.heartbeat()

    # Checkpoints ------------------------------------------------------------------------

    @hook
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """CHECKPOINT_SAVED; the run's id and best metric are kept next to the checkpoint."""
        self._report_epoch()  # so the saved best metric includes this epoch's evaluation
        tracker = self.tracker
        path = read.checkpoint_dir(args, state)
        if state.is_world_process_zero and os.path.isdir(path):
            read.save_run_state(path, tracker.state_dict())
        tracker.checkpoint_saved(path, step=int(state.global_step))


__all__ = ["STATE_FILE", "AFSNotify"]
