"""NaN/Inf detection without a device sync on every step.

A loss that lives on the GPU costs a synchronisation to read (``.item()``). The
:class:`LossAccumulator` keeps, on the loss's own device, a "saw a non-finite value" flag
and the running sum of finite losses, and reads both with one transfer every N steps. A
Python float (HF and Keras hand those over) is checked at once, for free.
"""

from __future__ import annotations

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

    Only tensor methods are used (``isfinite``, ``nan_to_num``, ``masked_fill``, ``item``),
    so torch is never imported here.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._saw_bad = False
        self._sum = 0.0
        self._bad_tensor: Any = None
        self._sum_tensor: Any = None
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
        loss = value.detach()
        if loss.numel() != 1:
            loss = loss.float().mean()
        # Queued on the loss's device; nothing here waits for the GPU.
        non_finite = ~loss.isfinite()
        clean = loss.float().nan_to_num(0.0, 0.0, 0.0)
        if self._bad_tensor is None:
            self._bad_tensor, self._sum_tensor = non_finite, clean
        else:
            self._bad_tensor = self._bad_tensor | non_finite
            self._sum_tensor = self._sum_tensor + clean
        return None

    def read(self) -> Window | None:
        """Read and reset. For tensors this is the one device sync of the window: the sum
        is read with NaN written into it when any step was non-finite. None when empty."""
        if self._first_step is None:
            return None
        saw_bad, total = self._saw_bad, self._sum
        if self._bad_tensor is not None:
            value = float(self._sum_tensor.masked_fill(self._bad_tensor, float("nan")).item())
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
