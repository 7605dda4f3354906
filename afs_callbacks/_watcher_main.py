"""The death watcher process: ``python -m afs_callbacks._watcher_main STATE_DIR PID [LABEL]``.

Started by :func:`afs_callbacks.delivery.deathwatch.ensure_watcher`. One per state dir and
host (an exclusive ``flock`` on ``deathwatch.lock``; a second one exits at once). Every
second it reads the ``runs`` table, notes each live run's process (start time, memory
cgroup, OOM-kill count) and reports those that vanished, and sends the stored ends that a
process ended right after training left unsent (Ray Tune, ``os._exit``), through a
:class:`~afs_callbacks.manager.NotificationManager` of its own (the channels the
environment configures). It leaves once no run of this host has been running for a grace
period and no run asked for watching in that time.

It sits above the manager it delivers through; :mod:`~afs_callbacks.delivery.deathwatch`,
which the manager uses to start it, sits below.

``AFS_DEATHWATCH_INTERVAL`` (seconds between checks, default 1) and
``AFS_DEATHWATCH_GRACE`` (default 60: long enough for a new run's first row to be written
after its ensure_watcher(), and for a process that runs one fit after another, a sweep or
a notebook, to keep one watcher instead of starting one per run: a start costs about
0.2 s of CPU beside the training) tune it; tests shorten them. It also leaves at once when the
state dir is deleted.

It names itself, so that the process left in ``ps`` for a minute after a run says what it
is: ``afs-callbacks death watcher for /home/me/.local/state/afs-callbacks (lingers 60 s
after the last run)`` as its command line (written over its own arguments, which the
spawner pads with a label for the room; Linux), and ``afs-deathwatch`` as its process name
(``prctl(PR_SET_NAME)``, what ``top`` and ``pgrep`` show). No dependency: ``ctypes`` only,
and where that fails the label argument still says what it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import sqlite3
import sys
import time
from typing import TYPE_CHECKING

from afs_callbacks._files import open_private
from afs_callbacks.delivery import deathwatch as dw
from afs_callbacks.delivery import sweep_end
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox
from afs_callbacks.runstate import RUNNING, RunState

if TYPE_CHECKING:
    from afs_callbacks.events import NotificationEvent
    from afs_callbacks.manager import NotificationManager

DELIVERY_BOUND = 15.0  # seconds a notice may take to leave before the loop goes on


def acquire(state_dir: str) -> int | None:
    """Take the watcher lock (and write our pid in it), or None when another watcher has it."""
    fd = open_private(os.path.join(state_dir, dw.LOCK_NAME))
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
        self.outbox: Outbox | None = None
        self.manager: NotificationManager | None = None
        self.idle_since = time.monotonic()
        self.sent_ends: set[str] = set()  # unsent ends of gone processes this watcher sent

    def note(self, pid: int) -> None:
        """Remember a live process (its OOM-kill count now is the run's baseline)."""
        if pid not in self.seen:
            sighting = dw.sight(pid)
            if sighting is not None:
                self.seen[pid] = sighting

    def check(self) -> bool:
        """One round: report vanished runs; return whether any run of this host still runs."""
        if self.outbox is None:
            path = os.path.join(self.state_dir, OUTBOX_FILE)
            if not os.path.exists(path):
                return False  # no run wrote anything yet
            try:
                self.outbox = Outbox(path, busy_timeout=5.0)
            except sqlite3.Error:
                return True  # a busy or half-made file: open it again next round
        try:
            for state in self.outbox.runs(status=RUNNING, host=self.host, limit=None):
                if state.pid is not None and not dw.process_gone(state.pid, state.updated_at):
                    self.note(state.pid)
            notices = dw.find_and_claim(
                self.outbox, host=self.host, seen=self.seen, detected_by="the death watcher"
            )
            running = bool(self.outbox.runs(status=RUNNING, host=self.host, limit=1))
            unsent = dw.unsent_ends(self.outbox, host=self.host, tried=self.sent_ends)
            notices += sweep_end.quiet_summaries(self.outbox, self.state_dir, show=self.show_card)  # sweeps
        except sqlite3.Error:
            self.outbox.close()  # a busy or replaced file: open it again next round
            self.outbox = None
            return True
        if notices or unsent:
            self.sent_ends.update(unsent)
            self.deliver(notices)
        return running

    def deliver(self, notices: list[NotificationEvent]) -> None:
        """Send the notices through the channels the environment configures (and queue
        them for the run's own channels, which may have been set up in code); the flush
        also sends the ends that processes gone meanwhile stored but did not send."""
        manager = self.open_manager()
        for notice in notices:
            manager.emit(notice)
        manager.flush(DELIVERY_BOUND)
        if self.outbox is not None:
            for notice in notices:
                if notice.run_id is not None:
                    self.outbox.route_like_run(notice.id, notice.run_id)

    def open_manager(self) -> NotificationManager:
        """The manager the watcher delivers through (the channels the environment
        configures), made once there is news."""
        if self.manager is None:
            from afs_callbacks.manager import NotificationManager  # only once there is news

            self.manager = NotificationManager.from_env(state_dir=self.state_dir)
        return self.manager

    def show_card(self, state: RunState) -> None:
        """A sweep's live card (``sweep_end``): stored and edited like a run's."""
        self.open_manager().update_run(state)

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
            if busy or self.wanted_recently() or sweep_end.awaiting_summary(self.state_dir):
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
        """Close the outbox and the manager (sending what is left within a bound)."""
        if self.outbox is not None:
            self.outbox.close()
        if self.manager is not None:
            with contextlib.suppress(Exception):
                self.manager.close(timeout=5.0)


#: The process name (15 bytes at most: the kernel's limit for ``comm``).
PROCESS_NAME = "afs-deathwatch"


def process_title(state_dir: str, grace: float) -> str:
    """What the watcher is, for ``ps``: which state dir, and why it is still there."""
    return f"afs-callbacks death watcher for {state_dir} (lingers {grace:g} s after the last run)"


def name_process(title: str) -> None:
    """Show ``title`` as this process's command line and :data:`PROCESS_NAME` as its name
    (Linux; elsewhere, or on any failure, nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(PROCESS_NAME.encode()), 0, 0, 0)  # PR_SET_NAME
    with contextlib.suppress(Exception):
        _write_command_line(title)


def _write_command_line(title: str) -> None:
    # The kernel serves /proc/PID/cmdline from the argument area of the process's memory
    # (arg_start..arg_end in /proc/self/stat). Python keeps its own copies of the
    # arguments, so the area can be written over: the title, then NULs to its end (the
    # last byte stays NUL, so the kernel reads no further).
    with open("/proc/self/stat", "rb") as stat:
        text = stat.read().decode()
    fields = text[text.rindex(")") + 2 :].split()
    start, end = int(fields[45]), int(fields[46])  # fields 48 and 49, counted from 1
    size = end - start
    if size <= 1:
        return
    data = title.encode()[: size - 1]
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.05, float(os.environ.get(name, default)))
    except ValueError:
        return default


def main(argv: list[str]) -> int:
    """Entry point: ``STATE_DIR PID`` (the process that asked, noted at once), then a label
    for ``ps`` that the process title replaces."""
    state_dir = argv[1]
    lock_fd = acquire(state_dir)
    if lock_fd is None:
        return 0
    grace = _seconds("AFS_DEATHWATCH_GRACE", 60.0)
    name_process(process_title(state_dir, grace))
    watcher = Watcher(state_dir, _seconds("AFS_DEATHWATCH_INTERVAL", 1.0), grace)
    if len(argv) > 2 and argv[2].isdigit():
        watcher.note(int(argv[2]))
    watcher.run(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
