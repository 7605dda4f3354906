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

import json
import math
import os
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.integrations._base import (
    MAX_EPOCHS,
    MAX_STEPS,
    SHOULD_STOP,
    NotifierBase,
    agree_across_ranks,
    broadcast_run_id,
    early_stopping,
    hook,
    hook_failed,
    named,
)
from afs_callbacks.integrations._caller import holder_in_stack, holds, method_in_stack, wrap_call
from afs_callbacks.tracking.values import floats, positive

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on what is installed
    from afs_callbacks._install import install_hint

    raise ImportError(
        "afs_callbacks.integrations.transformers needs transformers with torch:"
        f" {install_hint('transformers')}"
    ) from error

log = get_logger(__name__)

#: Written next to each checkpoint so that a resumed run keeps its id and best metric.
STATE_FILE = "afs_callbacks_state.json"

# Log entries that are bookkeeping rather than results, left out of the messages.
_NOISE_SUFFIXES = ("_runtime", "_time", "_per_second", "_flos")
_NOISE_KEYS = frozenset({"epoch", "grad_norm", "step"})


class AFSNotify(NotifierBase, TrainerCallback):  # type: ignore[misc]
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

    _trainer_ref: weakref.ref[Any] | None = None  # the Trainer running this callback

    # Until a train() starts (evaluate() alone uses none of these).
    _training = False
    _eval_announced = False
    _predicting = False

    def _reset_run(self) -> None:
        self._save_asks: list[Any] = []  # asks a checkpoint the Trainer is about to save answers
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
            self._resolve(model_name=_model_name(model))
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
        tracker.start(resumed_from=resumed_from, trial=state, **_plan(args, state))
        if first:
            self._attach_control(int(getattr(args, "world_size", 1) or 1))

    @hook
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """TRAINING_COMPLETED with the summary (the Trainer skips this hook on a crash)."""
        try:
            self._report_step()
            self._report_epoch()
        finally:
            # The end is what a person waits for: a failing step or epoch report (logged by
            # the hook guard) must not leave the run without one.
            self._training = False
            self._remove_sigterm_handler()
            tracker = self.tracker
            trainer = self._find_trainer()
            callbacks = _callbacks_of(trainer)
            nan_stop = tracker.stop_requested and tracker.config.stop_on_nan
            if method_in_stack(_is_trainer, ("_report_to_hp_search",)):
                # HF's hyperparameter search ends a pruned trial so, then raises TrialPruned.
                tracker.pruned("pruned by the hyperparameter search's pruner")
            else:
                tracker.completed(
                    self._final_metrics or None,
                    end_reason=_end_reason(args, state, control, callbacks, nan_stop=nan_stop),
                )

    # Steps, logs, epochs ----------------------------------------------------------------

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Count the step. Its loss is known only if a log follows: then on_log reports it.

        Guarded inline (see :func:`~afs_callbacks.integrations._base.hook_failed`): this
        runs every step with the Trainer's keyword arguments."""
        try:
            if self._pending_step is not None:
                self._report_step()
            if self._agree and state.global_step % self._agree_every == 0:
                # Under DDP the ranks agree at the same steps (a NaN stop, rank zero's asks).
                self._act(control, *self._agreed_asks(agree_across_ranks))
            if control.should_log:  # DefaultFlowCallback, always first, has decided already
                self._pending_step = int(state.global_step)
                return None
            attention = self.tracker.on_step(int(state.global_step))
            return self._stop_if_asked(control, attention) if attention else None
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
        loss, grad_norm = _logged_loss(args, values)
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
            self._predicting = method_in_stack(_is_trainer, ("predict", "evaluate")) == "predict"
            if not self._predicting:
                tracker.bind(is_global_zero=bool(state.is_world_process_zero))
                tracker.evaluation_started()

    @hook
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> Any:
        """In training, per-epoch evaluations join the epoch's report and step-based ones
        are progress (``validation_completed``, at the epoch cadence: pushed only at
        ``verbose``), as every framework's in-training evaluations are; ``trainer.evaluate()``
        alone is a result and always reported."""
        values = _results(metrics)
        tracker = self.tracker
        if not self._in_training():
            self._eval_announced = False
            tracker.bind(is_global_zero=bool(state.is_world_process_zero))
            tracker.evaluation_completed(values)
            return None
        if _strategy(args.eval_strategy) == "epoch" and self._pending_epoch is not None:
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
        path = _checkpoint_dir(args, state)
        if state.is_world_process_zero and os.path.isdir(path):
            _save_run_state(path, tracker.state_dict())
        tracker.checkpoint_saved(path, step=int(state.global_step))
        asks, self._save_asks = self._save_asks, []
        for ask in asks:  # the checkpoint a command asked for (control.should_save)
            tracker.answered(ask, checkpoint=path)

    # Between hooks --------------------------------------------------------------------

    def _prepare_run(self, args: Any, state: Any, model: Any) -> None:
        """Settle what the Trainer's arguments decide, where the user did not."""
        monitor, mode = _monitor_of(args)
        self._resolve(
            model_name=_model_name(model),
            monitor=monitor,
            mode=None if self._given["monitor"] else mode,  # greater_is_better is about its own metric
            nan_check_every=max(1, int(getattr(state, "logging_steps", 0) or 50)),
        )
        self._reset_run()
        world_size = int(getattr(args, "world_size", 1) or 1)
        self._bind(rank=int(getattr(args, "process_index", 0) or 0), world_size=world_size)
        if world_size > 1:
            self._share_run_id(broadcast_run_id)
        self._install_crash_hooks()

    def _find_trainer(self) -> Any:
        """The Trainer running this callback (looked up the call stack once, then held
        weakly) with its ``train`` wrapped to report an exception the caller catches."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            runs_us = holds(self)
            trainer = holder_in_stack(lambda o: _is_trainer(o) and runs_us(o.callback_handler), skip=2)
            if trainer is not None:
                self._trainer_ref = weakref.ref(trainer)
                wrap_call(trainer, "train", self._caller_caught)
        return trainer

    def _restore(self, args: Any, state: Any) -> str:
        """Resuming at ``state.global_step``: reload what :meth:`on_save` kept."""
        path = _checkpoint_dir(args, state)
        saved = {"run_id": self.tracker.run_id, "started": True, **_load_run_state(path)}
        self.tracker.load_state_dict(saved)
        return path if os.path.isdir(path) else f"global step {state.global_step}"

    def _report_step(self) -> None:
        """A step that expected a log which never came is counted without its loss."""
        if self._pending_step is not None:
            step, self._pending_step = self._pending_step, None
            self.tracker.on_step(step)

    def _report_epoch(self) -> None:
        if self._pending_epoch is None:
            return
        epoch, self._pending_epoch = self._pending_epoch, None
        metrics, self._epoch_metrics = self._epoch_metrics, {}
        self.tracker.epoch_end(epoch, metrics)

    def _stop_if_asked(self, control: Any, attention: bool) -> Any:
        """The step hook's answer: a NaN stop, or asks from outside (single process; under
        DDP the ranks act together in on_step_end)."""
        if not attention or self._agree:
            return None
        stop, checkpoint = self.tracker.asks_waiting()
        return self._act(control, self.tracker.stop_requested, stop, checkpoint)

    def _act(self, control: Any, nan_stop: bool, stop: bool, checkpoint: bool) -> Any:
        """Set the Trainer's flags: save (asked, or before a stop: the Trainer always has
        its ``output_dir``), then stop. The save's path answers the asks in on_save."""
        if not (nan_stop or stop or checkpoint):
            return None
        if stop or checkpoint:
            asked = self.tracker.asked(stop=stop, checkpoint=checkpoint)
            control.should_save = True
            self._save_asks = [a for a in {id(a): a for a in (asked.checkpoint, asked.stop) if a}.values()]
        if stop or nan_stop:
            control.should_training_stop = True
        return control


# Why train() ended ----------------------------------------------------------------------


def _end_reason(
    args: Any, state: Any, control: Any, callbacks: Iterable[Any], *, nan_stop: bool
) -> str | None:
    """Why ``Trainer.train`` ended (None: the tracker infers it). ``should_training_stop``
    is also set at the planned end (DefaultFlowCallback), so the plan is checked before it."""
    if nan_stop:
        return None
    for stopper in named(callbacks, "EarlyStoppingCallback"):
        patience = getattr(stopper, "early_stopping_patience", None)
        waited = getattr(stopper, "early_stopping_patience_counter", 0)
        if isinstance(patience, int) and waited >= patience:
            metric = str(getattr(args, "metric_for_best_model", "") or "loss")
            monitor = metric if metric.startswith("eval_") else f"eval_{metric}"
            return early_stopping(monitor, patience, getattr(state, "best_metric", None))
    max_steps = getattr(state, "max_steps", 0) or 0
    if max_steps and int(state.global_step) >= max_steps:
        return MAX_STEPS if (getattr(args, "max_steps", -1) or -1) > 0 else MAX_EPOCHS
    if getattr(control, "should_training_stop", False):
        return SHOULD_STOP
    return None


# What the adapter reads from Trainer objects (duck-typed) --------------------------------


def _results(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Evaluation metrics without the bookkeeping (runtime, samples per second, epoch)."""
    return {
        key: value
        for key, value in floats(metrics or {}).items()
        if key not in _NOISE_KEYS and not key.endswith(_NOISE_SUFFIXES)
    }


def _model_name(model: Any) -> str:
    """The model's ``name_or_path`` (its last part), else its class name."""
    if model is None:
        return "model"
    config = getattr(model, "config", None)
    name = str(getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    return os.path.basename(name.rstrip("/")) or type(model).__name__


def _samples_per_step(args: Any, state: Any) -> int | None:
    """Samples one optimizer step consumes in this process: the batch size times
    ``gradient_accumulation_steps``."""
    size = getattr(state, "train_batch_size", None)
    if not isinstance(size, int) or size <= 0:
        return None
    return size * max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))


def _monitor_of(args: Any) -> tuple[str, str | None]:
    """The metric the Trainer itself follows and its direction (None: not said)."""
    best = getattr(args, "metric_for_best_model", None)
    if best:
        monitor = best if best.startswith("eval_") else f"eval_{best}"
        greater = getattr(args, "greater_is_better", None)
        return monitor, None if greater is None else ("max" if greater else "min")
    return ("eval_loss" if _strategy(args.eval_strategy) != "no" else "loss"), None


def _loss_scaled(args: Any) -> bool:
    """Whether fp16 runs with a loss scaler, which skips steps whose gradients overflow.
    accelerate uses none on CPU, where fp16 changes nothing and an Inf norm is news."""
    return bool(args.fp16) and getattr(getattr(args, "device", None), "type", "cpu") != "cpu"


def _strategy(value: Any) -> str:
    """An ``IntervalStrategy`` (or its string) as a lower-case string."""
    return str(getattr(value, "value", value)).lower()


def _checkpoint_dir(args: Any, state: Any) -> str:
    """The folder the Trainer saves the checkpoint of ``state.global_step`` in."""
    return os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")


def _save_run_state(path: str, run_state: Mapping[str, Any]) -> None:
    """Keep the run's id and best metric in checkpoint folder ``path``; never raises."""
    try:
        with open(os.path.join(path, STATE_FILE), "w", encoding="utf-8") as file:
            json.dump(dict(run_state), file)
    except OSError:
        log.warning("afs-callbacks: could not write %s in %s", STATE_FILE, path)


def _load_run_state(path: str) -> dict[str, Any]:
    """What :func:`_save_run_state` kept in ``path`` (empty when nothing was)."""
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as file:
            loaded = json.load(file)
    except (OSError, ValueError):
        log.debug("afs-callbacks: no saved run state in %s", path)
        return {}
    return dict(loaded) if isinstance(loaded, dict) else {}


def _plan(args: Any, state: Any) -> dict[str, Any]:
    """What ``tracker.start`` is told about the run the Trainer starts (besides a resume)."""
    return {
        "epochs": positive(getattr(state, "num_train_epochs", None)),
        "max_steps": positive(state.max_steps),
        "batch_size": positive(getattr(state, "train_batch_size", None)),
        "devices": str(getattr(args, "device", "")) or None,
        "world_size": int(getattr(args, "world_size", 1) or 1),
        "precision": "fp16" if args.fp16 else "bf16" if getattr(args, "bf16", False) else "fp32",
        "samples_per_step": _samples_per_step(args, state),
    }


def _logged_loss(args: Any, values: Mapping[str, float]) -> tuple[float, float | None]:
    """(loss, grad_norm) of a training log as the run had them: a window of NaN steps that
    the NaN filter logged as 0.0 is NaN again, and a non-finite norm of a step the loss
    scaler skipped on purpose is None (see the adapter's module docstring)."""
    loss, grad_norm = values["loss"], values.get("grad_norm")
    finite_norm = grad_norm is not None and math.isfinite(grad_norm)
    if args.logging_nan_inf_filter and loss == 0.0 and not finite_norm:
        loss = math.nan  # every step of the window was NaN/Inf: the filter logged 0.0
    if not finite_norm and _loss_scaled(args):
        grad_norm = None  # a step the loss scaler skipped, as it does now and then
    return loss, grad_norm


def _callbacks_of(trainer: Any) -> list[Any]:
    """The callbacks a Trainer runs (empty when it is not known)."""
    return list(getattr(getattr(trainer, "callback_handler", None), "callbacks", None) or [])


def _is_trainer(candidate: Any) -> bool:
    """Whether ``candidate`` looks like a ``Trainer`` (a callback handler and ``train``)."""
    return hasattr(candidate, "callback_handler") and callable(getattr(candidate, "train", None))


__all__ = ["STATE_FILE", "AFSNotify"]
