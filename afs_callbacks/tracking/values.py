"""Numbers from what frameworks hand over: metrics that may be tensors, counts that may
mean "no limit". The tracker and the adapters read framework values through these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are numbers, as floats (0-d tensors read at epoch granularity)."""
    values: dict[str, float] = {}
    for key, raw in metrics.items():
        number = to_float(raw)
        if number is not None:
            values[str(key)] = number
    return values


def to_float(value: Any) -> float | None:
    """A number as a float; None for booleans and non-numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return float(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def positive(value: Any) -> int | None:
    """A count that means something (frameworks say "no limit" with None, 0 or -1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value)


__all__ = ["floats", "positive", "to_float"]
