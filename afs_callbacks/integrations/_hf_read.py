"""What the Hugging Face adapter reads from Trainer objects and keeps next to checkpoints.

Plain functions over duck-typed ``TrainingArguments``, ``TrainerState`` and models; no
transformers import.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.tracking.values import floats, positive

log = get_logger(__name__)

#: Written next to each checkpoint so that a resumed run keeps its id and best metric.
STATE_FILE = "afs_callbacks_state.json"

# Log entries that are bookkeeping rather than results, left out of the messages.
_NOISE_SUFFIXES = ("_runtime", "_time", "_per_second", "_flos")
_NOISE_KEYS = frozenset({"epoch", "grad_norm", "step"})


def results(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Evaluation metrics without the bookkeeping (runtime, samples per second, epoch)."""
    return {
        key: value
        for key, value in floats(metrics or {}).items()
        if key not in _NOISE_KEYS and not key.endswith(_NOISE_SUFFIXES)
    }


def model_name(model: Any) -> str:
    """The model's ``name_or_path`` (its last part), else its class name."""
    if model is None:
        return "model"
    config = getattr(model, "config", None)
    name = str(getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    return os.path.basename(name.rstrip("/")) or type(model).__name__


def samples_per_step(args: Any, state: Any) -> int | None:
    """Samples one optimizer step consumes in this process: the batch size times
    ``gradient_accumulation_steps``."""
    size = getattr(state, "train_batch_size", None)
    if not isinstance(size, int) or size <= 0:
        return None
    return size * max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))


def monitor_of(args: Any) -> tuple[str, str | None]:
    """The metric the Trainer itself follows and its direction (None: not said)."""
    best = getattr(args, "metric_for_best_model", None)
    if best:
        monitor = best if best.startswith("eval_") else f"eval_{best}"
        greater = getattr(args, "greater_is_better", None)
        return monitor, None if greater is None else ("max" if greater else "min")
    return ("eval_loss" if strategy(args.eval_strategy) != "no" else "loss"), None


def loss_scaled(args: Any) -> bool:
    """Whether fp16 runs with a loss scaler, which skips steps whose gradients overflow.
    accelerate uses none on CPU, where fp16 changes nothing and an Inf norm is news."""
    return bool(args.fp16) and getattr(getattr(args, "device", None), "type", "cpu") != "cpu"


def strategy(value: Any) -> str:
    """An ``IntervalStrategy`` (or its string) as a lower-case string."""
    return str(getattr(value, "value", value)).lower()


def checkpoint_dir(args: Any, state: Any) -> str:
    """The folder the Trainer saves the checkpoint of ``state.global_step`` in."""
    return os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")


def save_run_state(path: str, run_state: Mapping[str, Any]) -> None:
    """Keep the run's id and best metric in checkpoint folder ``path``; never raises."""
    try:
        with open(os.path.join(path, STATE_FILE), "w", encoding="utf-8") as file:
            json.dump(dict(run_state), file)
    except OSError:
        log.warning("afs-callbacks: could not write %s in %s", STATE_FILE, path)


def load_run_state(path: str) -> dict[str, Any]:
    """What :func:`save_run_state` kept in ``path`` (empty when nothing was)."""
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as file:
            loaded = json.load(file)
    except (OSError, ValueError):
        log.debug("afs-callbacks: no saved run state in %s", path)
        return {}
    return dict(loaded) if isinstance(loaded, dict) else {}


def plan(args: Any, state: Any) -> dict[str, Any]:
    """What ``tracker.start`` is told about the run the Trainer starts (besides a resume)."""
    return {
        "epochs": positive(getattr(state, "num_train_epochs", None)),
        "max_steps": positive(state.max_steps),
        "batch_size": positive(getattr(state, "train_batch_size", None)),
        "devices": str(getattr(args, "device", "")) or None,
        "world_size": int(getattr(args, "world_size", 1) or 1),
        "precision": "fp16" if args.fp16 else "bf16" if getattr(args, "bf16", False) else "fp32",
        "samples_per_step": samples_per_step(args, state),
    }


def logged_loss(args: Any, values: Mapping[str, float]) -> tuple[float, float | None]:
    """(loss, grad_norm) of a training log as the run had them: a window of NaN steps that
    the NaN filter logged as 0.0 is NaN again, and a non-finite norm of a step the loss
    scaler skipped on purpose is None (see the adapter's module docstring)."""
    loss, grad_norm = values["loss"], values.get("grad_norm")
    finite_norm = grad_norm is not None and math.isfinite(grad_norm)
    if args.logging_nan_inf_filter and loss == 0.0 and not finite_norm:
        loss = math.nan  # every step of the window was NaN/Inf: the filter logged 0.0
    if not finite_norm and loss_scaled(args):
        grad_norm = None  # a step the loss scaler skipped, as it does now and then
    return loss, grad_norm


def callbacks_of(trainer: Any) -> list[Any]:
    """The callbacks a Trainer runs (empty when it is not known)."""
    return list(getattr(getattr(trainer, "callback_handler", None), "callbacks", None) or [])


def is_trainer(candidate: Any) -> bool:
    """Whether ``candidate`` looks like a ``Trainer`` (a callback handler and ``train``)."""
    return hasattr(candidate, "callback_handler") and callable(getattr(candidate, "train", None))
