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


#: Lightning's names for one metric logged both per step and per epoch.
_STEP, _EPOCH = "_step", "_epoch"


def one_per_metric(metrics: Mapping[str, float], keep: str | None = None) -> dict[str, float]:
    """One value per metric: Lightning's ``x`` / ``x_step`` / ``x_epoch`` (a metric logged
    with ``on_step=True, on_epoch=True``) as one ``x``, the epoch's value first, then
    ``x``, then the last step's. A lone ``x_step`` (no sibling) stays as it is. ``keep``
    (the monitored metric) names its group when it is one of them (``train_loss_epoch``).

    Order follows the first name of each group in ``metrics``.
    """
    groups: dict[str, str] = {}
    for name in metrics:
        base = _base_name(name)
        siblings = [base, base + _STEP, base + _EPOCH]
        if sum(sibling in metrics for sibling in siblings) >= 2:
            groups[name] = keep if keep in siblings else base
    shown: dict[str, float] = {}
    for name, value in metrics.items():
        target = groups.get(name)
        if target is None:
            shown[name] = value
            continue
        if target in shown:
            continue
        base = _base_name(name)
        for candidate in (base + _EPOCH, base, base + _STEP):
            if candidate in metrics:
                shown[target] = metrics[candidate]
                break
    return shown


def _base_name(name: str) -> str:
    for suffix in (_EPOCH, _STEP):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def positive(value: Any) -> int | None:
    """A count that means something (frameworks say "no limit" with None, 0 or -1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value)


__all__ = ["floats", "one_per_metric", "positive", "to_float"]
