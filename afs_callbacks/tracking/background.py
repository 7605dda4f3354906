"""What runs beside a training: the stall watchdog and the GPU/system/cost monitors.

Both start with the run and stop at every end path (completed, failed, interrupted,
closed), so nothing wakes for a run that has ended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.tracking.watchdog import StallWatchdog

log = get_logger(__name__)


class Background:
    """The watchdog and monitors of one run."""

    def __init__(self) -> None:
        self._watchdog: StallWatchdog | None = None
        self._monitors: Any = None

    def start_watchdog(
        self, timeout: float, last_progress: Callable[[], float], on_stall: Callable[[float], None]
    ) -> None:
        """Watch for a stall of ``timeout`` seconds."""
        self.stop_watchdog()
        self._watchdog = StallWatchdog(timeout, last_progress, on_stall)
        self._watchdog.start()

    def start_monitors(
        self, sink: Any, *, paths: Sequence[str], run_id: str, model: str, gpu_count: int | None
    ) -> None:
        """Start the resource monitors (they report through ``sink``); never raises."""
        try:
            from afs_callbacks.monitors import start_monitors

            self._monitors = start_monitors(
                sink, paths=paths, run_id=run_id, model=model, gpu_count=gpu_count
            )
        except Exception:
            log.debug("afs-callbacks: run monitors not started", exc_info=True)
            self._monitors = None

    def summary(self) -> dict[str, Any]:
        """The monitors' figures for the completion (peak memory, cost...)."""
        try:
            return {} if self._monitors is None else dict(self._monitors.summary().to_dict())
        except Exception:
            return {}

    def lines(self) -> list[str]:
        """The monitors' summary as text lines."""
        try:
            return [] if self._monitors is None else list(self._monitors.summary().lines())
        except Exception:
            return []

    def stop_watchdog(self) -> None:
        """Stop the watchdog (idempotent)."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    def stop(self) -> None:
        """Stop everything (idempotent); never raises."""
        self.stop_watchdog()
        monitors, self._monitors = self._monitors, None
        if monitors is not None:
            try:
                monitors.stop()
            except Exception:
                log.debug("afs-callbacks: stopping monitors failed", exc_info=True)
