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

    Per step a tensor loss costs a ``detach`` and a list append: no tensor arithmetic, so
    no kernel launch on a GPU (benchmarks/bench_hook.py measures it). The window holds at
    most N detached scalars. torch is imported only in :meth:`read`, when tensors were
    given, that is when it is loaded already.
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
        None for a tensor (checked at :meth:`read`)."""
        if self._first_step is None:
            self._first_step = step
        self._last_step = step
        self._count += 1
        if isinstance(value, (int, float)):
            finite = math.isfinite(value)
            if finite:
                self._sum += value
            else:
                self._saw_bad = True
            return not finite
        loss = value.detach()  # keeps no autograd graph alive
        if loss.dim() != 0:
            loss = loss.float().mean()  # queued on the loss's device; nothing waits here
        self._tensors.append(loss)
        return None

    def read(self) -> Window | None:
        """Read and reset. For tensors this is the one device sync of the window: the sum
        is read with NaN written into it when any step was non-finite. None when empty."""
        if self._first_step is None:
            return None
        saw_bad, total = self._saw_bad, self._sum
        if self._tensors:
            value = _reduce(self._tensors)
            saw_bad = saw_bad or math.isnan(value)
            total += 0.0 if math.isnan(value) else value
        window = Window(
            saw_non_finite=saw_bad,
            mean_loss=None if saw_bad or not self._count else total / self._count,
            first_step=self._first_step,
            last_step=self._last_step,
        )
        self._reset()
        return window


def _reduce(tensors: list[Any]) -> float:
    """The sum of the window's losses, NaN when any is NaN/Inf: a few ops on their device
    and one read."""
    torch: Any = importlib.import_module("torch")  # loaded already: the tensors are its own
    try:
        losses = torch.stack(tensors)
    except RuntimeError:  # losses on different devices: gather them on the host
        losses = torch.stack([t.float().cpu() for t in tensors])
    losses = losses.float()
    bad = ~losses.isfinite().all()
    return float(losses.nan_to_num(0.0, 0.0, 0.0).sum().masked_fill(bad, float("nan")).item())
