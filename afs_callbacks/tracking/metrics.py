"""Following the monitored metric: its best value and how long it has not improved.

With no metric named, the best-ranked of the usual names seen so far is followed
(``val_loss`` before ``eval_loss`` before ``loss`` ...). When a better-ranked one appears
(validation starts after a few epochs of training loss only), the watch switches to it and
starts over, so a training loss is never compared with a validation loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

#: Metric names tried, in order, when no metric to monitor is named.
MONITOR_CANDIDATES = ("val_loss", "eval_loss", "valid_loss", "loss", "train_loss")


class Change(str, Enum):
    """What one observation of the monitored metric means."""

    ABSENT = "absent"  # the metric was not among the values
    FIRST = "first"  # the first value: nothing to compare with
    IMPROVED = "improved"
    STALE = "stale"  # no better, patience not yet exhausted
    DEGRADED = "degraded"  # no better for `patience` observations (reported once)
    NON_FINITE = "non_finite"


@dataclass(frozen=True)
class Verdict:
    """The outcome of :meth:`MetricWatch.observe`."""

    change: Change
    name: str | None = None
    value: float | None = None
    previous_best: float | None = None
    stale_count: int = 0


class MetricWatch:
    """Best value and plateau length of one metric.

    Args:
        monitor: the metric's name, or None to pick from :data:`MONITOR_CANDIDATES`.
        mode: ``"min"`` or ``"max"``.
        min_delta: smallest change that counts as an improvement.
        patience: observations without improvement before :attr:`Change.DEGRADED`.
    """

    def __init__(self, monitor: str | None, mode: str, min_delta: float, patience: int) -> None:
        self.fixed = monitor
        self.mode = mode
        self.min_delta = min_delta
        self.patience = patience
        self.name: str | None = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stale = 0

    def observe(self, values: Mapping[str, float], epoch: int | None) -> Verdict:
        """Take one set of metrics and say what the monitored one did."""
        self._maybe_switch(values)
        if self.name is None or self.name not in values:
            return Verdict(Change.ABSENT)
        value = values[self.name]
        if not math.isfinite(value):
            return Verdict(Change.NON_FINITE, self.name, value)
        previous = self.best
        if previous is None or self._better(value, previous):
            self.best, self.best_epoch, self.stale = value, epoch, 0
            change = Change.FIRST if previous is None else Change.IMPROVED
            return Verdict(change, self.name, value, previous)
        self.stale += 1
        change = Change.DEGRADED if self.stale == self.patience else Change.STALE
        return Verdict(change, self.name, value, previous, self.stale)

    def _better(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def _maybe_switch(self, values: Mapping[str, float]) -> None:
        if self.fixed is not None:
            return
        present = [name for name in MONITOR_CANDIDATES if name in values]
        if not present:
            return
        candidate = present[0]
        if self.name is None or _rank(candidate) < _rank(self.name):
            self.name, self.best, self.best_epoch, self.stale = candidate, None, None, 0

    def state_dict(self) -> dict[str, Any]:
        """The watch's state for a checkpoint."""
        return {
            "monitor": self.name,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_evaluations": self.stale,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a fixed monitor keeps its name)."""
        if self.fixed is None and state.get("monitor"):
            self.name = str(state["monitor"])
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_epoch = state.get("best_epoch")
        self.stale = int(state.get("bad_evaluations") or 0)


def _rank(name: str) -> int:
    return MONITOR_CANDIDATES.index(name) if name in MONITOR_CANDIDATES else len(MONITOR_CANDIDATES)
