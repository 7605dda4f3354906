"""The stall watchdog: a daemon thread that notices a run that stopped making progress.

A hung data loader or a collective waiting on a dead rank raises nothing; only the absence
of steps tells. The watchdog fires once per stall and re-arms when progress resumes. It
lives only while its run does (every end path stops it) and wakes at most once a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: The watchdog never wakes more often than this (seconds).
MIN_PERIOD = 1.0

#: How long :meth:`StallWatchdog.stop` waits for the thread to end (seconds). It ends at
#: once unless a stall report is being handed over; that report only queues a message.
STOP_TIMEOUT = 1.0


class StallWatchdog:
    """Calls ``on_stall(idle_seconds)`` when ``last_progress()`` is older than ``timeout``.

    Args:
        timeout: seconds without progress that make a stall.
        last_progress: returns the ``time.monotonic()`` of the latest progress.
        on_stall: called on the watchdog thread, once per stall.
    """

    def __init__(
        self,
        timeout: float,
        last_progress: Callable[[], float],
        on_stall: Callable[[float], None],
    ) -> None:
        self.timeout = timeout
        self._last_progress = last_progress
        self._on_stall = on_stall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def period(self) -> float:
        """Seconds between checks: a few per timeout, at least one second, at most 30."""
        return min(max(self.timeout / 4, MIN_PERIOD), 30.0)

    def start(self) -> None:
        """Start watching (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="afs-stall-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop, and wait (up to :data:`STOP_TIMEOUT`) for the thread to end, so that a run
        whose end has returned leaves no thread of its own behind. Called on the watchdog's
        own thread (a run collected there), it only asks: a thread cannot wait for itself."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def _run(self) -> None:
        reported = False
        while not self._stop.wait(self.period):
            idle = time.monotonic() - self._last_progress()
            if idle < self.timeout:
                reported = False  # progress resumed: re-arm
            elif not reported and not self._stop.is_set():
                reported = True
                self._on_stall(idle)
