"""Tiny real trainings for the benchmarks: Lightning, the HF Trainer and Keras 3 (torch).

Each loop trains the same small MLP (32 → 64 → 1, batch 32, MSE) with the callbacks it is
given and returns a :class:`Run`: the wall time of the framework's fit call, and the moment
each training forward started. The steady state between two forwards holds everything the
framework and its callbacks do per step, so per-step overhead is read from those stamps,
away from the start and end of the run (where AFSNotify sends its first message and renders
its chart). A run can also have a validation pass after every epoch, be timed from the
train-start hook to the train-end hook, and have its fit call wrapped (knockknock).

The callbacks compared live in ``_peers.py`` and are re-exported here. Frameworks are
imported only when a loop runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _peers import (  # noqa: F401  (re-exported: the benchmark scripts import them from here)
    HookClock,
    LoopTimer,
    Wrap,
    afs_callback,
    afs_class,
    callback_base,
    empty_callback,
    knockknock_wrap,
    same_hooks_callback,
    sync_callback,
)

FRAMEWORKS = ("lightning", "transformers", "keras")
BATCH = 32
FEATURES = 32


@dataclass
class Run:
    """One training: the fit call's wall time, the start of every training forward, and
    (when timed) the seconds from the framework's train-start hook to its train-end hook."""

    wall_s: float
    stamps: list[float] = field(default_factory=list)
    hooks_loop_s: float = float("nan")

    def per_step_s(self, skip: int, trim: float = 0.05) -> float:
        """Seconds per step after ``skip`` warm-up steps (forward to forward): the mean
        without the ``trim`` fastest and slowest fractions, so that another process taking
        the CPU for a moment does not decide the figure, while the steady costs (a
        callback's own background threads included) still count."""
        usable = self.stamps[skip:]
        durations = sorted(b - a for a, b in itertools.pairwise(usable))
        if not durations:
            return float("nan")
        cut = int(len(durations) * trim)
        kept = durations[cut : len(durations) - cut] or durations
        return sum(kept) / len(kept)

    @property
    def loop_s(self) -> float:
        """Seconds from the first training forward to the last."""
        return self.stamps[-1] - self.stamps[0] if len(self.stamps) > 1 else float("nan")


def available(framework: str) -> str | None:
    """None when ``framework`` can run here, else why not (one line)."""
    module = {"lightning": "lightning.pytorch", "transformers": "transformers", "keras": "keras"}[framework]
    try:
        __import__(module)
    except ImportError as error:
        return f"not installed ({error.name})"
    return None


def quiet() -> None:
    """Silence the frameworks' banners and advice so the tables stay readable (again after
    each import: Lightning sets its loggers' levels when it is imported)."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def fit(
    framework: str,
    callbacks: list[Any],
    *,
    steps_per_epoch: int,
    epochs: int = 1,
    device: str = "cpu",
    validate: bool = False,
    timed: bool = False,
    wrap: Wrap | None = None,
    timer: Any = None,
) -> Run:
    """Train the tiny model with ``framework`` and ``callbacks``; see :class:`Run`.

    ``validate``: a validation pass after every epoch (a tenth of the epoch's batches, at
    least 2). ``timed``: a first callback times train start to train end
    (``Run.hooks_loop_s``). ``wrap``: a decorator put around the framework's fit call (as
    knockknock's is); ``Run.wall_s`` is then the wrapped call's time. ``timer``: a
    :meth:`LoopTimer.make` instance to use as that first callback (implies ``timed``).
    """
    loops: dict[str, Callable[..., Run]] = {
        "lightning": _lightning,
        "transformers": _transformers,
        "keras": _keras,
    }
    if timer is None and timed:
        timer = LoopTimer.make(framework)
    run: Run = loops[framework](
        ([timer] if timer is not None else []) + list(callbacks),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        device=device,
        validate=validate,
        wrap=wrap or (lambda call: call),
    )
    if timer is not None:
        run.hooks_loop_s = timer.ended - timer.started
    return run


# Frameworks --------------------------------------------------------------------------


def _data(samples: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(samples, FEATURES, generator=generator)
    return x, x.sum(dim=1, keepdim=True) * 0.1


def _net() -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 1))


def _val_batches(steps_per_epoch: int) -> int:
    return max(2, steps_per_epoch // 10)


def _lightning(
    callbacks: list[Any], *, steps_per_epoch: int, epochs: int, device: str, validate: bool, wrap: Wrap
) -> Run:
    import lightning.pytorch as pl
    import torch

    quiet()
    stamps: list[float] = []

    class Tiny(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            stamps.append(time.perf_counter())
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x, y = _data(steps_per_epoch * BATCH)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    val = None
    if validate:
        xv, yv = _data(_val_batches(steps_per_epoch) * BATCH)
        val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=BATCH)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(prefix="afs-bench-pl-"),
    )
    model = Tiny()
    start = time.perf_counter()
    wrap(lambda: trainer.fit(model, loader, val))()
    return Run(time.perf_counter() - start, stamps)


def _transformers(
    callbacks: list[Any], *, steps_per_epoch: int, epochs: int, device: str, validate: bool, wrap: Wrap
) -> Run:
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments

    quiet()
    stamps: list[float] = []

    class Tiny(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x: Any, labels: Any = None) -> Any:
            if self.training:
                stamps.append(time.perf_counter())
            prediction = self.net(x)
            return (torch.nn.functional.mse_loss(prediction, labels), prediction)

    class Points(torch.utils.data.Dataset):  # type: ignore[misc]
        def __init__(self, batches: int) -> None:
            self.x, self.y = _data(batches * BATCH)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return {"x": self.x[index], "labels": self.y[index]}

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="afs-bench-hf-"),
        num_train_epochs=epochs,
        per_device_train_batch_size=BATCH,
        learning_rate=0.01,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        use_cpu=device != "cuda",
        disable_tqdm=True,
        seed=0,
        eval_strategy="epoch" if validate else "no",
        per_device_eval_batch_size=BATCH,
    )
    trainer = Trainer(
        model=Tiny(),
        args=args,
        train_dataset=Points(steps_per_epoch),
        eval_dataset=Points(_val_batches(steps_per_epoch)) if validate else None,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout
    start = time.perf_counter()
    wrap(trainer.train)()
    return Run(time.perf_counter() - start, stamps)


def _keras(
    callbacks: list[Any], *, steps_per_epoch: int, epochs: int, device: str, validate: bool, wrap: Wrap
) -> Run:
    import keras

    quiet()
    stamps: list[float] = []

    class Stamp(keras.layers.Layer):  # type: ignore[misc]
        def call(self, inputs: Any, training: bool = False) -> Any:
            if training:
                stamps.append(time.perf_counter())
            return inputs

    x, y = _data(steps_per_epoch * BATCH)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            Stamp(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    xv, yv = _data(_val_batches(steps_per_epoch) * BATCH)
    options = {"validation_data": (xv.numpy(), yv.numpy())} if validate else {}
    start = time.perf_counter()
    wrap(
        lambda: model.fit(
            x.numpy(),
            y.numpy(),
            batch_size=BATCH,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=callbacks,
            **options,
        )
    )()
    return Run(time.perf_counter() - start, stamps)
