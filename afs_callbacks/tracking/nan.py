"""NaN/Inf detection without a device sync on every step.

A loss that lives on the GPU costs a synchronisation to read (``.item()``). The
:class:`LossAccumulator` keeps the window's loss tensors where they are and, every N
steps, reduces them on their device to a "saw a non-finite value" flag and the sum of the
finite ones, read with one transfer. A Python float (HF and Keras hand those over) is
checked at once, for free.

A window that saw a NaN/Inf also says which step was the first bad one and what it was
(NaN, Inf or -Inf): the read has every step's value in hand anyway, so the message can name
the step where the run went wrong, not the later step where the check found it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    """What one read of the accumulator found: a NaN/Inf, and the mean of finite losses.

    ``first_bad_step`` and ``first_bad_value`` name the window's first non-finite loss
    (None when all were finite, or for a window whose step numbers are not known one by
    one); ``finite_mean`` is the mean of the losses before it.
    """

    saw_non_finite: bool
    mean_loss: float | None
    first_step: int
    last_step: int
    first_bad_step: int | None = None
    first_bad_value: float | None = None
    finite_mean: float | None = None


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
        # Step numbers one by one, only once they stop following each other (steps 1, 2,
        # 3... need no list: the n-th value is step first + n).
        self._steps: list[int] | None = None
        self._bad_step: int | None = None
        self._bad_value: float | None = None
        self._good_sum = 0.0  # the float losses before the first bad one

    def add(self, step: int, value: Any) -> bool | None:
        """Record one loss. Returns whether it is NaN/Inf for a Python number (checked now),
        None for a tensor (checked when its window is read)."""
        if self._first_step is None:
            self._first_step = step
        elif step != self._last_step + 1 and self._steps is None:
            self._steps = list(range(self._first_step, self._last_step + 1))
        if self._steps is not None:
            self._steps.append(step)
        self._last_step = step
        self._count += 1
        if type(value) is float or isinstance(value, (int, float)):
            finite = math.isfinite(value)
            if finite:
                self._sum += value
            elif not self._saw_bad:
                self._saw_bad = True
                self._bad_step, self._bad_value, self._good_sum = step, float(value), self._sum
            return not finite
        # Only a loss that still carries its graph is detached (Lightning hands over a
        # detached copy): the list must not keep an autograd graph alive. Shapes are
        # settled at read time, off the per-step path.
        self._tensors.append(value.detach() if value.requires_grad else value)
        return None

    def add_tensors(self, first_step: int, values: Sequence[Any]) -> bool:
        """Record the losses of steps ``first_step``, ``first_step + 1``, ... at once, as
        :meth:`add` would one by one, where that needs no check: every value is a tensor
        (read with its window) and the steps follow the last one recorded. Returns False,
        recording nothing, otherwise (the caller then adds them one by one)."""
        if self._steps is not None or (self._first_step is not None and first_step != self._last_step + 1):
            return False
        for value in values:
            if value is None or isinstance(value, (int, float)):
                return False
        kept = [value.detach() if value.requires_grad else value for value in values]
        if self._first_step is None:
            self._first_step = first_step
        self._last_step = first_step + len(values) - 1
        self._count += len(values)
        self._tensors.extend(kept)
        return True

    def take(self) -> PendingWindow | None:
        """The window so far, handed over as is, and a fresh one begun (no tensor is read:
        the caller decides where :meth:`PendingWindow.window` runs). None when empty."""
        if self._first_step is None:
            return None
        pending = PendingWindow(
            self._tensors,
            self._sum,
            self._saw_bad,
            self._count,
            self._first_step,
            self._last_step,
            self._steps,
            self._bad_step,
            self._bad_value,
            self._good_sum,
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
    steps: list[int] | None = None  # each value's step, where they do not follow each other
    bad_step: int | None = None  # the first non-finite float loss
    bad_value: float | None = None
    good_sum: float = 0.0  # the float losses before it

    @property
    def needs_device(self) -> bool:
        """Whether reading it waits for a device (a sync): tensors that live off the CPU.
        A CPU tensor's value is in host memory already: its read is a few torch calls and
        no wait, cheaper than handing the window to another thread (see ``reader.py``)."""
        if not self.tensors:
            return False
        device = getattr(self.tensors[0], "device", None)
        return getattr(device, "type", "cpu") != "cpu"

    def window(self) -> Window:
        """Read it. For tensors this is the window's one device sync: the sum is read with
        NaN written into it when any step was non-finite. Safe on any thread: the tensors
        are detached and nothing writes them any more."""
        saw_bad, total = self.saw_bad, self.float_sum
        bad_step, bad_value, good_sum, good_count = self.bad_step, self.bad_value, self.good_sum, 0
        if self.tensors:
            values = _values(self.tensors)
            bad_index = next((n for n, value in enumerate(values) if not math.isfinite(value)), None)
            if bad_index is None:
                total += math.fsum(values)
            elif not saw_bad:
                saw_bad, good_count = True, bad_index
                good_sum = math.fsum(values[:bad_index])
                bad_value = values[bad_index]
                # Only a window of tensors alone knows each value's place among the steps.
                if len(values) == self.count:
                    bad_step = self.steps[bad_index] if self.steps else self.first_step + bad_index
        elif saw_bad and bad_step is not None:
            good_count = self.steps.index(bad_step) if self.steps else bad_step - self.first_step
        return Window(
            saw_non_finite=saw_bad,
            mean_loss=None if saw_bad or not self.count else total / self.count,
            first_step=self.first_step,
            last_step=self.last_step,
            first_bad_step=bad_step if saw_bad else None,
            first_bad_value=bad_value if saw_bad else None,
            finite_mean=good_sum / good_count if saw_bad and good_count else None,
        )


def _values(tensors: list[Any]) -> list[float]:
    """Each step's loss as a float: one stack on their device, one copy to the host (the
    window's one sync), the rest in Python over N numbers."""
    torch: Any = importlib.import_module("torch")  # loaded already: the tensors are its own
    try:
        stacked = torch.stack(tensors)
        if stacked.dim() > 1:  # per-sample losses: each step's mean
            stacked = stacked.float().flatten(1).mean(1)
        return [float(value) for value in stacked.tolist()]
    except RuntimeError:  # different devices or shapes: read them one by one
        return [t.float().mean().item() for t in tensors]
