"""The fault-handling half of the manager's store: noticing, reporting and resting.

:class:`FaultTolerantOutbox` is the base of :class:`~afs_callbacks.delivery.store.Store`.
It holds what every storage fault goes through: running an outbox step with a fallback
instead of raising, saying once per new cause what went wrong and with which file, moving
a corrupted file aside, and pacing the next try. It lives apart from ``store.py`` so that
module reads as the outbox's steps (write, claim, mark, read) and this one as the one
place a fault is handled.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from afs_callbacks._log import get_logger
from afs_callbacks.delivery.faults import describe_fault, is_corruption, move_aside, still_corrupt
from afs_callbacks.delivery.memory import MemoryTable
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.redaction import redact

# The messages keep naming the store's module, as before the split.
log = get_logger("afs_callbacks.delivery.store")

_T = TypeVar("_T")

#: Seconds between two attempts to write to a store that failed.
RETRY_SECONDS = 1.0


class FaultTolerantOutbox(Outbox):
    """An outbox whose steps fall back instead of raising when the file fails.

    Args:
        path: the SQLite file.
        memory_limit: most events kept in memory while the file cannot be written.
        busy_timeout: seconds a write waits for another process's lock before the events
            are kept in memory instead.
    """

    def __init__(self, path: str | os.PathLike[str], *, memory_limit: int, busy_timeout: float) -> None:
        super().__init__(path, connect=False)
        self.busy_timeout = busy_timeout
        self.memory = MemoryTable(memory_limit)
        self.fault: str | None = None
        self._fault_lock = threading.Lock()
        self._next_try = 0.0
        self._opened = False  # once it opened, a failure is "cannot use", before "cannot open"

    def open(self) -> bool:
        """Open (or reopen) the file; False, with the fault noted, when that fails."""
        self._opened = self._safely("open", lambda: self._connection() is not None, False) or self._opened
        return self._opened

    @property
    def healthy(self) -> bool:
        """Whether the file is being written (no fault since the last successful write)."""
        return self.fault is None

    def _safely(self, doing: str, action: Callable[[], _T], fallback: _T) -> _T:
        if doing == "write" and self._resting():
            return fallback
        try:
            return action()
        except (sqlite3.Error, OSError) as error:
            self._on_fault(doing, error)
            return fallback

    def _resting(self) -> bool:
        # While the file fails, writes wait for the writer thread's next retry instead of
        # each sender waiting out a lock or failing on a full disk again and again.
        return self.fault is not None and time.monotonic() < self._next_try

    def _on_fault(self, doing: str, error: BaseException) -> None:
        if is_corruption(error):
            self._move_aside(error)
            return
        cause = describe_fault(error)
        self._next_try = time.monotonic() + RETRY_SECONDS
        self._drop_connection()  # reopened on the next try: a read-only one stays read-only
        with self._fault_lock:
            if self.fault == cause:
                return
            self.fault = cause
        # One line per new cause, never a traceback per event.
        log.error(
            "afs-callbacks: cannot %s the notification history %s: %s. Messages are kept in memory"
            " (up to %d) and still delivered; writing resumes when the file is writable again.",
            "use" if self._opened else "open",
            self.path,
            cause,
            self.memory.limit,
        )

    def _drop_connection(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._conn = None

    def _move_aside(self, error: BaseException) -> None:
        with self._lock:
            self._drop_connection()
            # Another thread may have moved the damaged file aside already: never move a
            # fresh one. A check of the file as it is now decides.
            if still_corrupt(self.path, self.busy_timeout):
                target = move_aside(self.path)
                log.error(
                    "afs-callbacks: the notification history %s is corrupted (%s); it was moved to %s"
                    " and a fresh one started. Messages not yet delivered are kept in memory and"
                    " still sent.",
                    self.path,
                    redact(error),
                    target,
                )

    def due_for_retry(self) -> bool:
        """Whether a faulted store should try its file again now."""
        return self.fault is not None and time.monotonic() >= self._next_try

    def _after_fork(self) -> None:
        super()._after_fork()
        # The parent delivers what it kept in memory; a child sending it too would duplicate.
        self.memory.reset_after_fork()
        self._fault_lock = threading.Lock()
