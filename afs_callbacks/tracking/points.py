"""A run's curves: the chart's data and the points handed to the sink with each snapshot.

Training loss is one point per NaN-check window (step axis); metrics are one point per
epoch or evaluation (epoch axis, 1-based). Memory and what is sent stay bounded: the chart
keeps at most :data:`MAX_POINTS` per series by halving, and each series sends at most
:data:`MAX_POINTS` points over a whole run, by doubling its stride as it grows (recent
points get sparser, the early shape stays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from afs_callbacks.runstate import MetricPoint

#: Most points kept (chart) and sent (snapshots) per series.
MAX_POINTS = 2000
_FIRST_LEVEL = MAX_POINTS // 2  # points sent at stride 1; each later level sends half as many


@dataclass
class _Sent:
    """How one series thins what it sends: stride 2**level, ``left`` points at this level."""

    seen: int = 0
    sent: int = 0
    level: int = 0
    left: int = _FIRST_LEVEL

    def admit(self) -> bool:
        self.seen += 1
        if self.sent >= MAX_POINTS or (self.seen - 1) % (1 << self.level):
            return False
        self.sent += 1
        self.left -= 1
        if self.left <= 0:
            self.level += 1
            self.left = max(1, _FIRST_LEVEL >> self.level)
        return True


@dataclass
class Curves:
    """The loss and metric curves of one run."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    _pending: list[MetricPoint] = field(default_factory=list)
    _sent: dict[str, _Sent] = field(default_factory=dict)

    def add_loss(self, step: int, value: float) -> None:
        """The mean training loss of the window ending at ``step`` (NaN: the step where
        the loss first went NaN/Inf, which the dashboard's chart marks)."""
        self.losses.append((step, value))
        if len(self.losses) > MAX_POINTS:
            self.losses = self.losses[::2]  # keep the shape, halve the memory
        self._queue("loss", step, value, "step")

    def add_metric(self, name: str, x: int, value: float, axis: str = "epoch") -> None:
        """A metric's value at epoch (or step) ``x``."""
        series = self.metrics.setdefault(name, [])
        series.append((x, value))
        if len(series) > MAX_POINTS:
            self.metrics[name] = series[::2]
        if math.isfinite(value):  # a NaN is news for a message, not a point of a curve
            self._queue(name, x, value, axis)

    def take_pending(self) -> list[MetricPoint]:
        """The points gathered since the previous call."""
        pending, self._pending = self._pending, []
        return pending

    def _queue(self, series: str, x: int, y: float, axis: str) -> None:
        if self._sent.setdefault(series, _Sent()).admit():
            self._pending.append(MetricPoint(series, float(x), y, axis))


__all__ = ["MAX_POINTS", "Curves"]
