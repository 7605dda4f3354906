"""NaN/Inf detection without a device sync on every step.

A loss that lives on the GPU costs a synchronisation to read (``.item()``). The
:class:`LossAccumulator` keeps the window's loss tensors where they are and, every N
steps, reduces them on their device to a "saw a non-finite value" flag and the sum of the
finite ones, read with one transfer. A Python float (HF and Keras hand those over) is
checked at once, for free.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    """What one read of the accumulator found: a NaN/Inf, and the mean of finite losses."""

    saw_non_finite: bool
    mean_loss: float | None
    first_step: int
    last_step: int


class LossAccumulator:
    """Accumulates losses (tensors or floats) and reports per window of steps.

    Per step a tensor loss costs a list append (and a ``detach`` when it still has a
    graph): no tensor arithmetic, so no kernel launch on a GPU (benchmarks/bench_hook.py
    measures it). The window holds at most N detached tensors. torch is imported only when
    a window with tensors is read, that is when it is loaded already.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._saw_bad = False
        self._sum = 0.0
        self._tensors: list[Any] = []
        self._count = 0
        self._first_step: int | None = None
        self._last_step = 0

    def add(self, step: int, value: Any) -> bool | None:
        """Record one loss. Returns whether it is NaN/Inf for a Python number (checked now),
        None for a tensor (checked when its window is read)."""
        if self._first_step is None:
            self._first_step = step
        self._last_step = step
        self._count += 1
        if type(value) is float or isinstance(value, (int, float)):
            finite = math.isfinite(value)
            if finite:
                self._sum += value
            else:
                self._saw_bad = True
            return not finite
        # Only a loss that still carries its graph is detached (Lightning hands over a
        # detached copy): the list must not keep an autograd graph alive. Shapes are
        # settled at read time, off the per-step path.
        self._tensors.append(value.detach() if value.requires_grad else value)
        return None

    def take(self) -> PendingWindow | None:
        """The window so far, handed over as is, and a fresh one begun (no tensor is read:
        the caller decides where :meth:`PendingWindow.window` runs). None when empty."""
        if self._first_step is None:
            return None
        pending = PendingWindow(
            self._tensors, self._sum, self._saw_bad, self._count, self._first_step, self._last_step
        )
        self._reset()
        return pending

    def read(self) -> Window | None:
        """Read and reset, here and now (see :meth:`PendingWindow.window`)."""
        pending = self.take()
        return None if pending is None else pending.window()


@dataclass(frozen=True)
class PendingWindow:
    """A window taken from the accumulator and not read yet."""

    tensors: list[Any]
    float_sum: float
    saw_bad: bool
    count: int
    first_step: int
    last_step: int

    @property
    def needs_device(self) -> bool:
        """Whether reading it touches tensors (a device sync on a GPU)."""
        return bool(self.tensors)

    def window(self) -> Window:
        """Read it. For tensors this is the window's one device sync: the sum is read with
        NaN written into it when any step was non-finite. Safe on any thread: the tensors
        are detached and nothing writes them any more."""
        saw_bad, total = self.saw_bad, self.float_sum
        if self.tensors:
            value = _reduce(self.tensors)
            saw_bad = saw_bad or math.isnan(value)
            total += 0.0 if math.isnan(value) else value
        return Window(
            saw_non_finite=saw_bad,
            mean_loss=None if saw_bad or not self.count else total / self.count,
            first_step=self.first_step,
            last_step=self.last_step,
        )


def _reduce(tensors: list[Any]) -> float:
    """The sum of the window's losses, NaN when any is NaN/Inf: one stack on their device,
    one copy to the host (the window's one sync), the rest in Python over N numbers."""
    torch: Any = importlib.import_module("torch")  # loaded already: the tensors are its own
    try:
        stacked = torch.stack(tensors)
        if stacked.dim() > 1:  # per-sample losses: each step's mean
            stacked = stacked.float().flatten(1).mean(1)
        values = stacked.tolist()
    except RuntimeError:  # different devices or shapes: read them one by one
        values = [t.float().mean().item() for t in tensors]
    total = 0.0
    for value in values:
        if not math.isfinite(value):
            return math.nan
        total += value
    return total
