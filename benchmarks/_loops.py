"""Tiny real trainings for the benchmarks: Lightning, the HF Trainer and Keras 3 (torch).

Each loop trains the same small MLP (32 → 64 → 1, batch 32, MSE) with the callbacks it is
given and returns a :class:`Run`: the wall time of the framework's fit call, and the moment
each training forward started. The steady state between two forwards holds everything the
framework and its callbacks do per step, so per-step overhead is read from those stamps,
away from the start and end of the run (where AFSNotify sends its first message and renders
its chart).

The callbacks compared are built here too: the framework's empty ``Callback``,
``AFSNotify``, and a synchronous notifier that posts with ``requests.post`` in its hooks,
as most community callbacks do. Frameworks are imported only when a loop runs.
"""

from __future__ import annotations

import contextlib
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

FRAMEWORKS = ("lightning", "transformers", "keras")
BATCH = 32
FEATURES = 32


@dataclass
class Run:
    """One training: the fit call's wall time and the start of every training forward."""

    wall_s: float
    stamps: list[float] = field(default_factory=list)

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
) -> Run:
    """Train the tiny model with ``framework`` and ``callbacks``; see :class:`Run`."""
    loops: dict[str, Callable[..., Run]] = {
        "lightning": _lightning,
        "transformers": _transformers,
        "keras": _keras,
    }
    return loops[framework](callbacks, steps_per_epoch=steps_per_epoch, epochs=epochs, device=device)


def empty_callback(framework: str) -> Any:
    """A subclass of the framework's callback base class that overrides nothing."""
    base = callback_base(framework)
    return type("EmptyCallback", (base,), {})()


def afs_callback(framework: str, manager: Any, **options: Any) -> Any:
    """``AFSNotify(manager=manager, **options)`` of the framework's integration."""
    if framework == "lightning":
        from afs_callbacks.integrations.lightning import AFSNotify as LightningNotify

        return LightningNotify(manager, **options)
    if framework == "transformers":
        from afs_callbacks.integrations.transformers import AFSNotify as TrainerNotify

        return TrainerNotify(manager, **options)
    from afs_callbacks.integrations.keras import AFSNotify as KerasNotify

    return KerasNotify(manager, **options)


def sync_callback(framework: str, url: str) -> Any:
    """The usual community notifier: ``requests.post`` in the hooks, at start, at every
    epoch end and at the end, waiting for each answer (timeout 10 s)."""
    import requests

    def post(text: str) -> None:
        # The polite ones at least do not crash the run when the service is down.
        with contextlib.suppress(requests.RequestException):
            requests.post(url, json={"text": text}, timeout=10)

    base = callback_base(framework)
    if framework == "lightning":
        hooks: dict[str, Any] = {
            "on_train_start": lambda self, trainer, module: post("training started"),
            "on_train_epoch_end": lambda self, trainer, module: post(
                f"epoch {trainer.current_epoch} done: {_floats(trainer.callback_metrics)}"
            ),
            "on_train_end": lambda self, trainer, module: post("training finished"),
        }
    elif framework == "transformers":
        hooks = {
            "on_train_begin": lambda self, args, state, control, **kw: post("training started"),
            "on_epoch_end": lambda self, args, state, control, **kw: post(f"epoch {state.epoch} done"),
            "on_train_end": lambda self, args, state, control, **kw: post("training finished"),
        }
    else:
        hooks = {
            "on_train_begin": lambda self, logs=None: post("training started"),
            "on_epoch_end": lambda self, epoch, logs=None: post(f"epoch {epoch} done: {logs}"),
            "on_train_end": lambda self, logs=None: post("training finished"),
        }
    return type("SyncPostCallback", (base,), hooks)()


class HookClock:
    """Times the hook methods a callback overrides (wrapping them on the instance).

    Only for an instrumented run: the wrapper itself costs a fraction of a microsecond.
    """

    def __init__(self, callback: Any, framework: str) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        base = callback_base(framework)
        for name in dir(type(callback)):
            method = getattr(type(callback), name)
            if name.startswith("on_") and callable(method) and method is not getattr(base, name, None):
                setattr(callback, name, self._wrap(name, getattr(callback, name)))

    def _wrap(self, name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
        self.seconds[name], self.calls[name] = 0.0, 0

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed

    def per_step_s(self, steps: int) -> float:
        """Seconds per step spent in the hooks called about once a step or more."""
        per_step = [name for name, calls in self.calls.items() if calls >= steps // 2]
        return sum(self.seconds[name] for name in per_step) / max(steps, 1)


# Frameworks --------------------------------------------------------------------------


def callback_base(framework: str) -> Any:
    """The framework's callback base class."""
    if framework == "lightning":
        from lightning.pytorch.callbacks import Callback

        return Callback
    if framework == "transformers":
        from transformers import TrainerCallback

        return TrainerCallback
    import keras

    return keras.callbacks.Callback


def _floats(metrics: Any) -> dict[str, float]:
    return {key: round(float(value), 4) for key, value in dict(metrics).items()}


def _data(samples: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(samples, FEATURES, generator=generator)
    return x, x.sum(dim=1, keepdim=True) * 0.1


def _net() -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 1))


def _lightning(callbacks: list[Any], *, steps_per_epoch: int, epochs: int, device: str) -> Run:
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

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x, y = _data(steps_per_epoch * BATCH)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
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
    start = time.perf_counter()
    trainer.fit(Tiny(), loader)
    return Run(time.perf_counter() - start, stamps)


def _transformers(callbacks: list[Any], *, steps_per_epoch: int, epochs: int, device: str) -> Run:
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
        def __init__(self) -> None:
            self.x, self.y = _data(steps_per_epoch * BATCH)

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
    )
    trainer = Trainer(model=Tiny(), args=args, train_dataset=Points(), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout
    start = time.perf_counter()
    trainer.train()
    return Run(time.perf_counter() - start, stamps)


def _keras(callbacks: list[Any], *, steps_per_epoch: int, epochs: int, device: str) -> Run:
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
    start = time.perf_counter()
    model.fit(
        x.numpy(), y.numpy(), batch_size=BATCH, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks
    )
    return Run(time.perf_counter() - start, stamps)
