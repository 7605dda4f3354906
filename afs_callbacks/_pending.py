"""Work that will still hand over events: a run's completion whose chart is being drawn.

Drawing the loss chart takes a second or more (importing matplotlib, rendering a PNG), too
long for the training thread at the end of ``fit()``. The tracker draws it on a thread of
its own, started here for the sink (the manager) that will receive the completion, and
hands the completion over when the chart is ready. That manager's flush or close first
waits (within its own deadline) for its threads, so "flush after fit" still includes the
completion; another manager's flush never waits for them. The threads are not daemons: a
process that exits right after training waits for them before the exit-time flush runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from afs_callbacks._log import get_logger

log = get_logger(__name__)

#: Seconds a thread started here waits before its work. ``Thread.start()`` returns only
#: once the caller has the GIL back, and the chart's rendering holds it in long C calls:
#: the training thread, ending its ``fit()``, waited ~16 ms for it (issue #27).
LET_CALLER_GO_SECONDS = 0.05

_lock = threading.Lock()
_threads: dict[int, set[threading.Thread]] = {}  # id(owner) -> its threads


def start(work: Callable[[], object], name: str, *, owner: object) -> None:
    """Run ``work`` on a new thread that ``owner``'s flushes and closes wait for."""
    key = id(owner)

    def run() -> None:
        try:
            time.sleep(LET_CALLER_GO_SECONDS)
            work()
        except Exception:
            log.exception("afs-callbacks: %s failed", name)
        finally:
            with _lock:
                mine = _threads.get(key, set())
                mine.discard(threading.current_thread())
                if not mine:
                    _threads.pop(key, None)

    thread = threading.Thread(target=run, name=name, daemon=False)
    with _lock:
        _threads.setdefault(key, set()).add(thread)
    thread.start()


def wait(timeout: float | None, *, owner: object) -> None:
    """Wait until ``owner``'s threads have finished, or ``timeout`` seconds have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _lock:
        threads = list(_threads.get(id(owner), ()))
    for thread in threads:
        if thread is threading.current_thread():
            continue
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        thread.join(remaining)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _threads.clear()  # threads do not survive fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
