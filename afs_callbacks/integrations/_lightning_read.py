"""What the Lightning adapter reads from trainer objects, written for both namespaces.

Plain functions over duck-typed trainer, callback and output objects; no Lightning import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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


def floats(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Scalar metrics as host floats (one device read each: epoch granularity only)."""
    values: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            if hasattr(value, "numel"):
                if value.numel() != 1:
                    continue
                number = float(value.item())
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                number = float(value)
            else:
                continue
        except (TypeError, ValueError, RuntimeError):
            continue
        values[str(key)] = number  # NaN stays: a NaN metric is news for the tracker
    return values


def positive(value: Any) -> int | None:
    """Lightning's "no limit" values (None, -1, 0) as None."""
    return int(value) if isinstance(value, int) and value > 0 else None


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


def stage(trainer: Any) -> str | None:
    """What the trainer is doing: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"``."""
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    return None if fn is None else str(getattr(fn, "value", fn))


def fitting(trainer: Any) -> bool:
    """Whether the trainer runs ``fit`` (validation inside it included)."""
    return stage(trainer) == "fit"


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
