"""Why a run ended, as each framework tells it: read at the end of a run, duck-typed (no
framework import), so the completion can say "max_epochs", "early_stopping (val_loss,
patience 3, best 0.21)", "max_time", "terminate_on_nan", "fast_dev_run" or "should_stop"
(the user's own code asked to stop).

Each reader returns None when it cannot tell; the tracker then infers the reason from the
run's plan, or from its own NaN stop (``stop_on_nan``), which the readers leave to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from afs_callbacks.formatting import format_value

MAX_EPOCHS = "max_epochs"
MAX_STEPS = "max_steps"
MAX_TIME = "max_time"
SHOULD_STOP = "should_stop"
TERMINATE_ON_NAN = "terminate_on_nan"
FAST_DEV_RUN = "fast_dev_run"


def early_stopping(monitor: Any, patience: Any, best: Any) -> str:
    """``early_stopping (val_loss, patience 3, best 0.21)`` (parts that are known)."""
    parts = [str(monitor)] if monitor else []
    if isinstance(patience, int):
        parts.append(f"patience {patience}")
    number = _number(best)
    if number is not None:
        parts.append(f"best {format_value(number)}")
    return f"early_stopping ({', '.join(parts)})" if parts else "early_stopping"


def _number(value: Any) -> float | None:
    try:
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError, RuntimeError):
        pass
    return None


def _named(callbacks: Iterable[Any], *names: str) -> list[Any]:
    return [callback for callback in callbacks if type(callback).__name__ in names]


# Lightning ------------------------------------------------------------------------------


def lightning(trainer: Any, *, nan_stop: bool) -> str | None:
    """Why ``trainer.fit`` ended, in the order Lightning's fit loop checks."""
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
    for timer in _named(callbacks, "Timer"):
        remaining = timer.time_remaining()
        if remaining is not None and remaining <= 0:
            return MAX_TIME
    for stopper in _named(callbacks, "EarlyStopping"):
        reason = getattr(getattr(stopper, "stopping_reason", None), "name", "")
        if getattr(stopper, "stopped_epoch", 0) or (reason and reason != "NOT_STOPPED"):
            if reason == "NON_FINITE_METRIC":
                return f"early_stopping ({stopper.monitor} not finite)"
            return early_stopping(stopper.monitor, stopper.patience, getattr(stopper, "best_score", None))
    return SHOULD_STOP


# Hugging Face ---------------------------------------------------------------------------


def transformers(
    args: Any, state: Any, control: Any, callbacks: Iterable[Any], *, nan_stop: bool
) -> str | None:
    """Why ``Trainer.train`` ended. ``should_training_stop`` is also set at the planned
    end (DefaultFlowCallback), so the plan is checked before it."""
    if nan_stop:
        return None
    for stopper in _named(callbacks, "EarlyStoppingCallback"):
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


# Keras ----------------------------------------------------------------------------------


def keras(
    model: Any,
    callbacks: Iterable[Any],
    *,
    epochs_done: int,
    epochs: int | None,
    nan_seen: bool,
    nan_stop: bool,
) -> str | None:
    """Why ``model.fit`` ended."""
    if nan_stop:
        return None
    callbacks = list(callbacks)
    if not getattr(model, "stop_training", False):
        return MAX_EPOCHS if epochs and epochs_done >= epochs else None
    for stopper in _named(callbacks, "EarlyStopping"):
        if getattr(stopper, "stopped_epoch", 0):
            return early_stopping(stopper.monitor, stopper.patience, getattr(stopper, "best", None))
    if nan_seen and _named(callbacks, "TerminateOnNaN"):
        return TERMINATE_ON_NAN
    return SHOULD_STOP


__all__ = [
    "FAST_DEV_RUN",
    "MAX_EPOCHS",
    "MAX_STEPS",
    "MAX_TIME",
    "SHOULD_STOP",
    "TERMINATE_ON_NAN",
    "early_stopping",
    "keras",
    "lightning",
    "transformers",
]
