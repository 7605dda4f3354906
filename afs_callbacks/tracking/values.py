"""Small conversions the tracker applies to what frameworks hand over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afs_callbacks.messages import Message


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


def last_line(text: str) -> str:
    """The last non-blank line of an error text (at most 300 characters)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


def interrupt_reason(error: BaseException) -> str:
    """How an interruption is described: Ctrl-C or SIGTERM."""
    if type(error).__name__ == "KeyboardInterrupt":
        return "KeyboardInterrupt (Ctrl-C)"
    return "SIGTERM (preemption or job cancellation)"


def smoke(text: Message) -> Message:
    """``text`` of a smoke run (Lightning's ``fast_dev_run``): its title says so."""
    return Message(f"{text.title} (smoke run)", text.body)


__all__ = ["floats", "interrupt_reason", "last_line", "positive", "smoke", "to_float"]
