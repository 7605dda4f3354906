"""What the Keras adapter reads from Keras objects: batch losses, ModelCheckpoint's files
and the process's place in a distribution.

Plain functions over duck-typed callbacks, logs and the ``keras`` module the adapter
passes in; no keras import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any


class FitAbandoned(RuntimeError):
    """What a run is closed with when its ``fit()`` raised outside the training step before
    the callback could watch it, and the caller started another ``fit()``."""

    def __init__(self) -> None:
        super().__init__("the previous fit() raised before it ended (caught by the caller)")


def batch_loss(logs: Mapping[str, Any] | None) -> float | None:
    """The host float Keras prepared for its progress bar, if the logs hold one."""
    loss = (logs or {}).get("loss")
    return float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None


def new_saves(
    peers: Iterable[Any],
    epoch: int,
    logs: Mapping[str, Any],
    *,
    since: float,
    seen: set[tuple[str, float]],
) -> list[tuple[str, bool]]:
    """(path, best) of each file a ModelCheckpoint among ``peers`` wrote for ``epoch``,
    modified after ``since`` (``time.time()``) and not in ``seen`` (which records it)."""
    found: list[tuple[str, bool]] = []
    for saver in peers:
        if type(saver).__name__ != "ModelCheckpoint":
            continue
        path = checkpoint_path(saver, epoch, logs)
        try:
            written = os.path.getmtime(path) if path else None
        except OSError:
            continue
        if path is None or written is None or written + 1 < since:
            continue
        if (path, written) in seen:
            continue
        seen.add((path, written))
        found.append((str(path), bool(getattr(saver, "save_best_only", False))))
    return found


def checkpoint_path(saver: Any, epoch: int, logs: Mapping[str, Any]) -> str | None:
    """The file ModelCheckpoint writes for ``epoch`` (0-based) with these logs."""
    try:
        return str(saver._get_file_path(epoch, None, dict(logs)))  # how it names it itself
    except Exception:
        try:
            return str(saver.filepath).format(epoch=epoch + 1, **logs)
        except Exception:
            return None


def process_rank(keras: Any) -> tuple[int, int]:
    """(this process's index, process count) from Keras' distribution, when one is set."""
    try:
        distribution = keras.distribution.distribution()
    except Exception:
        return 0, 1
    if distribution is None:
        return 0, 1
    count = int(getattr(distribution, "num_processes", 1) or 1)
    return int(getattr(distribution, "_process_id", 0) or 0), count


__all__ = ["FitAbandoned", "batch_loss", "checkpoint_path", "new_saves", "process_rank"]
