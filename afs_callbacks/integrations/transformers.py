"""Notifications from Hugging Face ``Trainer`` runs.

Example::

    from transformers import Trainer
    from afs_callbacks.integrations.transformers import AFSNotify

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[AFSNotify()])
    trainer.train()

The Trainer has no exception hook: when ``train()`` raises, no callback hears of it. The
callback installs a ``sys.excepthook`` fallback that reports an uncaught crash (and lets
SIGTERM be reported while training runs); for a crash that your code catches, or in a
notebook, wrap the call: ``with afs_callbacks.watch(): trainer.train()``.

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

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, cast

from afs_callbacks._log import get_logger
from afs_callbacks.manager import NotificationManager
from afs_callbacks.tracking import RunTracker, TrackerConfig
from afs_callbacks.watch import install_excepthook, install_sigterm_handler

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "afs_callbacks.integrations.transformers needs transformers with torch:"
        " pip install 'afs-callbacks[transformers]'"
    ) from error

log = get_logger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Written next to each checkpoint so that a resumed run keeps its id and best metric.
STATE_FILE = "afs_callbacks_state.json"

# Log entries that are bookkeeping rather than results, left out of the messages.
_NOISE_SUFFIXES = ("_runtime", "_time", "_per_second", "_flos")
_NOISE_KEYS = frozenset({"epoch", "grad_norm", "step"})


def _hook(method: _F) -> _F:
    """Run a hook body so that no exception reaches the Trainer; log each hook's first failure."""

    @functools.wraps(method)
    def guarded(self: AFSNotify, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            if method.__name__ not in self._failed_hooks:  # a per-step hook would flood the log
                self._failed_hooks.add(method.__name__)
                log.exception("afs-callbacks: AFSNotify.%s failed; training continues", method.__name__)
            return None  # the Trainer keeps its control object as it was

    return cast(_F, guarded)


class AFSNotify(TrainerCallback):  # type: ignore[misc]
    """Tell people what a Hugging Face Trainer run is doing, through your channels.

    Reports the start (or resume from a checkpoint), epochs, evaluations, improvements and
    plateaus of the monitored metric, NaN/Inf, checkpoints, stalls, crashes and
    interruptions (through the excepthook fallback or :func:`afs_callbacks.watch`), and a
    completion summary with a loss chart.

    Args:
        manager: where notifications go (default: ``NotificationManager.from_env()``,
            built on first use, channels from the environment or ``.env``).
        model_name: shown in every message (default: the model's ``name_or_path``, else
            its class name).
        run_id: identifies the run (default: generated on the main process and shared
            with the other processes; kept across resumes).
        monitor: metric whose improvement/plateau is reported (default: the Trainer's
            ``metric_for_best_model``, else ``eval_loss`` when evaluating, else ``loss``).
        mode: ``"min"`` or ``"max"`` for ``monitor`` (default: from ``greater_is_better``
            when the monitor is ``metric_for_best_model``, else ``"min"``).
        min_delta: smallest change of ``monitor`` that counts as an improvement.
        patience: evaluations without improvement before a "not improving" warning.
        epoch_every: report every N epochs (default: about ten reports per run).
        batch_every: report every N optimisation steps (0, the default: never).
        nan_check_every: steps between NaN reads (default: ``logging_steps``, when the
            Trainer reads the loss anyway).
        stop_on_nan: stop training at the first NaN/Inf, like ``TerminateOnNaN``.
        stall_timeout: seconds without a finished step before "training stalled" (None: off).
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

        trainer = Trainer(model=model, args=args, train_dataset=data,
                          callbacks=[AFSNotify(model_name="bert-ft", stop_on_nan=True)])
        with afs_callbacks.watch():
            trainer.train()
    """

    def __init__(
        self,
        manager: NotificationManager | None = None,
        *,
        model_name: str | None = None,
        run_id: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
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
        crash_hook: bool = True,
        tracker: RunTracker | None = None,
    ) -> None:
        try:
            self._config = TrackerConfig(
                model_name=model_name,
                run_id=run_id,
                monitor=monitor,
                mode=mode or "min",
                min_delta=min_delta,
                patience=patience,
                epoch_every=epoch_every,
                batch_every=batch_every,
                nan_check_every=nan_check_every or 50,
                stop_on_nan=stop_on_nan,
                stall_timeout=stall_timeout,
                monitors=monitors,
                chart=chart,
                flush_timeout=flush_timeout,
            )
        except ValueError as error:
            raise ValueError(str(error).replace("TrackerConfig(", "AFSNotify(")) from None
        if nan_check_every is not None and nan_check_every < 1:
            raise ValueError(f"AFSNotify(nan_check_every={nan_check_every!r}) must be >= 1")
        self._manager = manager
        self._tracker = tracker
        self._given_tracker = tracker is not None
        self._mode_given = mode is not None
        self._own_nan_cadence = nan_check_every is None
        self.crash_hook = crash_hook
        self._failed_hooks: set[str] = set()
        self._restore_sigterm: Callable[[], None] | None = None
        self._training = False
        self._eval_announced = False
        self._reset_run()

    def _reset_run(self) -> None:
        self._pending_step: int | None = None  # a step whose loss the coming log brings
        self._pending_epoch: int | None = None  # an epoch waiting for its evaluation
        self._epoch_metrics: dict[str, float] = {}
        self._final_metrics: dict[str, float] = {}

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
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """TRAINING_STARTED (TRAINING_RESUMED from a checkpoint). ``auto_find_batch_size``
        calls this again after an OOM it recovered from: that only updates the plan."""
        if self._tracker is not None and self._tracker.finished and not self._given_tracker:
            self._tracker = None  # the same callback in a second train() call: a new run
        first = self._tracker is None or not self._tracker.started
        if first:
            self._prepare_run(args, state, model)
        tracker = self.tracker
        tracker.is_global_zero = bool(state.is_world_process_zero)
        self._training = True
        resumed_from = None
        if first and state.global_step > 0:
            resumed_from = self._restore(args, state)
        tracker.start(
            epochs=_positive(getattr(state, "num_train_epochs", None)),
            max_steps=_positive(state.max_steps),
            batch_size=_positive(getattr(state, "train_batch_size", None)),
            devices=str(getattr(args, "device", "")) or None,
            world_size=int(getattr(args, "world_size", 1) or 1),
            resumed_from=resumed_from,
            precision="fp16" if args.fp16 else "bf16" if getattr(args, "bf16", False) else "fp32",
        )

    @_hook
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """TRAINING_COMPLETED with the summary (the Trainer skips this hook on a crash)."""
        self._report_step()
        self._report_epoch()
        self._training = False
        if self._restore_sigterm is not None:
            self._restore_sigterm()
            self._restore_sigterm = None
        self.tracker.completed(self._final_metrics or None)

    # Steps, logs, epochs ----------------------------------------------------------------

    @_hook
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Count the step. Its loss is known only if a log follows: then on_log reports it."""
        self._report_step()
        if control.should_log:  # DefaultFlowCallback, always first, has decided already
            self._pending_step = int(state.global_step)
            return None
        return self._stop_if_asked(control, self.tracker.on_step(int(state.global_step)))

    @_hook
    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        """Read the logged floats (a copy: ``logs`` is shared with other callbacks)."""
        values = _floats(logs)
        if "train_runtime" in values:  # the summary log train() ends with
            self._final_metrics = {k: v for k, v in values.items() if k == "train_loss"}
            return None
        if "loss" not in values:
            return None
        step = int(state.global_step)
        loss, grad_norm = values["loss"], values.get("grad_norm")
        finite_norm = grad_norm is not None and math.isfinite(grad_norm)
        if args.logging_nan_inf_filter and loss == 0.0 and not finite_norm:
            loss = math.nan  # every step of the window was NaN/Inf: the filter logged 0.0
        if not finite_norm and _loss_scaled(args):
            grad_norm = None  # a step the loss scaler skipped, as it does now and then
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

    @_hook
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Report the previous epoch if its evaluation has not done so."""
        self._report_epoch()

    @_hook
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Hold the epoch's report: the Trainer logs, evaluates and saves after this hook."""
        self._report_step()
        epoch = getattr(state, "epoch", None) or 0.0
        self._pending_epoch = max(0, math.ceil(float(epoch) - 1e-6) - 1)

    # Evaluation -------------------------------------------------------------------------

    @_hook
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluation progress keeps the stall watchdog quiet; a standalone one is announced."""
        tracker = self.tracker
        tracker.heartbeat()
        if not self._in_training() and not self._eval_announced:
            self._eval_announced = True
            tracker.is_global_zero = bool(state.is_world_process_zero)
            tracker.evaluation_started()

    @_hook
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> Any:
        """In training, per-epoch evaluations join the epoch's report and step-based ones
        are reported at the epoch cadence; ``trainer.evaluate()`` alone always reports."""
        values = _results(metrics)
        tracker = self.tracker
        if not self._in_training():
            self._eval_announced = False
            tracker.is_global_zero = bool(state.is_world_process_zero)
            tracker.evaluation_completed(values)
            return None
        if _strategy(args.eval_strategy) == "epoch" and self._pending_epoch is not None:
            self._epoch_metrics.update(values)
            self._report_epoch()
        else:
            tracker.evaluation_completed(values, in_training=True)
        return self._stop_if_asked(control, tracker.stop_requested)

    @_hook
    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        """``trainer.predict()`` on labelled data reports its metrics like an evaluation."""
        self._eval_announced = False
        tracker = self.tracker
        tracker.is_global_zero = bool(state.is_world_process_zero)
        tracker.evaluation_completed(_results(metrics))

    # Checkpoints ------------------------------------------------------------------------

    @_hook
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """CHECKPOINT_SAVED; the run's id and best metric are kept next to the checkpoint."""
        self._report_epoch()  # so the saved best metric includes this epoch's evaluation
        tracker = self.tracker
        path = os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(path):
            try:
                with open(os.path.join(path, STATE_FILE), "w", encoding="utf-8") as file:
                    json.dump(tracker.state_dict(), file)
            except OSError:
                log.warning("afs-callbacks: could not write %s in %s", STATE_FILE, path)
        tracker.checkpoint_saved(path, step=int(state.global_step))

    # Helpers ----------------------------------------------------------------------------

    def _prepare_run(self, args: Any, state: Any, model: Any) -> None:
        """Settle, before the tracker exists, what the Trainer's arguments decide."""
        changes: dict[str, Any] = {}
        if self._config.model_name is None:
            changes["model_name"] = _model_name(model)
        if self._config.monitor is None:
            best = getattr(args, "metric_for_best_model", None)
            if best:
                changes["monitor"] = best if best.startswith("eval_") else f"eval_{best}"
                if not self._mode_given and args.greater_is_better is not None:
                    changes["mode"] = "max" if args.greater_is_better else "min"
            else:
                evaluating = _strategy(args.eval_strategy) != "no"
                changes["monitor"] = "eval_loss" if evaluating else "loss"
        if self._own_nan_cadence:
            changes["nan_check_every"] = max(1, int(getattr(state, "logging_steps", 0) or 50))
        if self._given_tracker:
            tracker = self.tracker
            if tracker.config.model_name is None and "model_name" in changes:
                tracker.model_name = changes["model_name"]
        else:
            self._config = dataclasses.replace(self._config, **changes)
        self._reset_run()
        tracker = self.tracker
        tracker.rank = int(getattr(args, "process_index", 0) or 0)
        if int(getattr(args, "world_size", 1) or 1) > 1:
            tracker.run_id = _shared_run_id(tracker.run_id)
        if self.crash_hook:
            install_excepthook()
            if self._restore_sigterm is None:
                self._restore_sigterm = install_sigterm_handler()

    def _restore(self, args: Any, state: Any) -> str:
        """Resuming at ``state.global_step``: reload what :meth:`on_save` kept."""
        path = os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")
        saved: dict[str, Any] = {"run_id": self.tracker.run_id, "started": True}
        try:
            with open(os.path.join(path, STATE_FILE), encoding="utf-8") as file:
                saved.update(json.load(file))
        except (OSError, ValueError):
            log.debug("afs-callbacks: no saved run state in %s", path)
        self.tracker.load_state_dict(saved)
        return path if os.path.isdir(path) else f"global step {state.global_step}"

    def _in_training(self) -> bool:
        """Inside ``train()``: begun, and neither ended nor crashed (a crash skips
        ``on_train_end`` but ends the run)."""
        return self._training and self._tracker is not None and not self._tracker.finished

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

    def _stop_if_asked(self, control: Any, stop: bool) -> Any:
        if stop and self.tracker.config.stop_on_nan:
            control.should_training_stop = True
            return control
        return None


def _shared_run_id(run_id: str) -> str:
    """Rank zero's run id on every rank, so that a failure several ranks report is one
    message. Every rank runs ``on_train_begin``, so the collective cannot hang."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [run_id]
            dist.broadcast_object_list(box, src=0)
            return str(box[0])
    except Exception:
        log.warning("afs-callbacks: could not share the run id between processes", exc_info=True)
    return run_id


def _floats(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric entries of ``logs`` as a new dict (the Trainer's are Python floats)."""
    values: dict[str, float] = {}
    for key, value in (logs or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[str(key)] = float(value)
    return values


def _results(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Evaluation metrics without the bookkeeping (runtime, samples per second, epoch)."""
    return {
        key: value
        for key, value in _floats(metrics).items()
        if key not in _NOISE_KEYS and not key.endswith(_NOISE_SUFFIXES)
    }


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    name = str(getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    if model is None:
        return "model"
    return os.path.basename(name.rstrip("/")) or type(model).__name__


def _loss_scaled(args: Any) -> bool:
    """Whether fp16 runs with a loss scaler, which skips steps whose gradients overflow.
    accelerate uses none on CPU, where fp16 changes nothing and an Inf norm is news."""
    return bool(args.fp16) and getattr(getattr(args, "device", None), "type", "cpu") != "cpu"


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def _positive(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


__all__ = ["STATE_FILE", "AFSNotify"]
