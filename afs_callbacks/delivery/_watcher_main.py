"""The death watcher process: ``python -m afs_callbacks.delivery._watcher_main STATE_DIR PID``.

Started by :func:`afs_callbacks.delivery.deathwatch.ensure_watcher`. One per state dir and
host (an exclusive ``flock`` on ``deathwatch.lock``; a second one exits at once). Every
second it reads the ``runs`` table, notes each live run's process (start time, memory
cgroup, OOM-kill count) and reports those that vanished. It leaves once no run of this host
has been running for a grace period and no run asked for watching in that time.

``AFS_DEATHWATCH_INTERVAL`` (seconds between checks, default 1) and
``AFS_DEATHWATCH_GRACE`` (default 60: long enough for a new run's first row to be written
after its ensure_watcher(), and for a process that runs one fit after another, a sweep or
a notebook, to keep one watcher instead of starting one per run: a start costs about
0.2 s of CPU beside the training) tune it; tests shorten them. It also leaves at once when the
state dir is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
import sys
import time
from typing import TYPE_CHECKING

from afs_callbacks.delivery import deathwatch as dw

if TYPE_CHECKING:
    from afs_callbacks.events import NotificationEvent
    from afs_callbacks.manager import NotificationManager

DELIVERY_BOUND = 15.0  # seconds a notice may take to leave before the loop goes on


def acquire(state_dir: str) -> int | None:
    """Take the watcher lock (and write our pid in it), or None when another watcher has it."""
    fd = os.open(os.path.join(state_dir, dw.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Watcher:
    """The loop of one watcher process over one state dir."""

    def __init__(self, state_dir: str, interval: float, grace: float) -> None:
        self.state_dir = state_dir
        self.interval = interval
        self.grace = grace
        self.host = socket.gethostname()
        self.seen: dict[int, dw.Sighting] = {}
        self.conn: sqlite3.Connection | None = None
        self.manager: NotificationManager | None = None
        self.idle_since = time.monotonic()

    def note(self, pid: int) -> None:
        """Remember a live process (its OOM-kill count now is the run's baseline)."""
        if pid not in self.seen:
            sighting = dw.sight(pid)
            if sighting is not None:
                self.seen[pid] = sighting

    def check(self) -> bool:
        """One round: report vanished runs; return whether any run of this host still runs."""
        if self.conn is None:
            self.conn = dw.open_db(self.state_dir)
            if self.conn is None:
                return False
        try:
            for state in dw.running_here(self.conn, self.host):
                if state.pid is not None and not dw.process_gone(state.pid, state.updated_at):
                    self.note(state.pid)
            notices = dw.find_and_claim(
                self.conn, host=self.host, seen=self.seen, detected_by="the death watcher"
            )
            running = bool(dw.running_here(self.conn, self.host))
        except sqlite3.Error:
            self.conn.close()  # a busy or replaced file: open it again next round
            self.conn = None
            return True
        if notices:
            self.deliver(notices)
        return running

    def deliver(self, notices: list[NotificationEvent]) -> None:
        """Send the notices through the channels the environment configures (and queue
        them for the run's own channels, which may have been set up in code)."""
        if self.manager is None:
            from afs_callbacks.manager import NotificationManager

            self.manager = NotificationManager.from_env(state_dir=self.state_dir)
        for notice in notices:
            self.manager.emit(notice)
        self.manager.flush(DELIVERY_BOUND)
        if self.conn is not None:
            for notice in notices:
                if notice.run_id is not None:
                    dw.route_like_the_run(self.conn, notice.id, notice.run_id)

    def wanted_recently(self) -> bool:
        """Whether some run asked for watching within the grace period."""
        try:
            touched = os.path.getmtime(os.path.join(self.state_dir, dw.WANTED_NAME))
        except OSError:
            return False
        return time.time() - touched < self.grace

    def run(self, lock_fd: int) -> None:
        """Watch until nothing is left to watch; hand the lock back on the way out."""
        while os.path.isdir(self.state_dir):
            try:
                busy = self.check()
            except Exception:
                busy = True  # a failed delivery or an odd row: keep watching, try again
            if busy or self.wanted_recently():
                self.idle_since = time.monotonic()
            elif time.monotonic() - self.idle_since >= self.grace:
                os.close(lock_fd)
                # A run may have started between the last round and the release, while its
                # ensure_watcher() still saw this watcher: look once more after letting go.
                if not self.check():
                    break
                reacquired = acquire(self.state_dir)
                if reacquired is None:
                    break  # another watcher took over
                lock_fd = reacquired
                self.idle_since = time.monotonic()
            time.sleep(self.interval)
        self.close()

    def close(self) -> None:
        """Close the database and the manager (sending what is left within a bound)."""
        if self.conn is not None:
            self.conn.close()
        if self.manager is not None:
            with contextlib.suppress(Exception):
                self.manager.close(timeout=5.0)


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.05, float(os.environ.get(name, default)))
    except ValueError:
        return default


def main(argv: list[str]) -> int:
    """Entry point: ``STATE_DIR PID`` (the process that asked, noted at once)."""
    state_dir = argv[1]
    lock_fd = acquire(state_dir)
    if lock_fd is None:
        return 0
    watcher = Watcher(
        state_dir, _seconds("AFS_DEATHWATCH_INTERVAL", 1.0), _seconds("AFS_DEATHWATCH_GRACE", 60.0)
    )
    if len(argv) > 2 and argv[2].isdigit():
        watcher.note(int(argv[2]))
    watcher.run(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
