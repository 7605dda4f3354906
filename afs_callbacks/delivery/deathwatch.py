"""Death notices for runs that vanish without a word (SIGKILL, the OOM killer, a hard time
limit, a reboot).

A process that is killed outright runs no ``finally``, no ``atexit``, and sends nothing; its
row in the ``runs`` table would say "running" forever. Two things catch it:

* :func:`ensure_watcher` starts one small watcher process per state dir and host (the
  first run starts it; later runs find it through a lock file). It runs in its own session,
  so it outlives the training process, checks every second for ``running`` rows of this
  host whose process is gone, and reports each one within seconds
  (``python -m afs_callbacks.delivery._watcher_main``).
* :func:`report_vanished` lets the next process that opens the store report runs that
  vanished while no watcher could see them (the whole job was killed, the node rebooted).

Either way a run is reported once: whoever turns its row from ``running`` to ``killed`` (a
conditional UPDATE) sends the notice, and the notice has a deterministic id, so DDP ranks,
two watchers or a watcher and the next run never make two. Only this host's runs are judged:
whether a process on another host still lives cannot be known from here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from afs_callbacks._log import get_logger
from afs_callbacks.delivery._procfacts import (
    Sighting,
    cgroup_dir,
    cgroup_memory,
    exit_signal,
    process_gone,
    sight,
)
from afs_callbacks.runstate import KILLED, RUNNING, RunState

if TYPE_CHECKING:
    from afs_callbacks.events import NotificationEvent

log = get_logger(__name__)

DB_NAME = "outbox.sqlite3"
LOCK_NAME = "deathwatch.lock"  # held (flock) by the live watcher; holds its pid as text
WANTED_NAME = "deathwatch.wanted"  # touched by every ensure_watcher(): "a run wants watching"
REASON = "killed without a word"
_FALSE = frozenset({"0", "false", "no", "off"})
_TERMINAL_TYPES = ("training_completed", "training_failed", "training_interrupted")
_TERMINAL_STATUS = {"training_completed": "completed", "training_failed": "failed"}

_spawned: dict[str, subprocess.Popen[bytes]] = {}
_spawn_lock = threading.Lock()


# Starting the watcher ------------------------------------------------------------------


def ensure_watcher(state_dir: str, pid: int) -> None:
    """Make sure one watcher process watches ``state_dir`` on this host; start it if needed.

    Costs the caller a few milliseconds at most (a file touch, a lock probe, one spawn) and
    never raises. Does nothing when ``AFS_ENABLED`` is false.
    """
    try:
        if os.environ.get("AFS_ENABLED", "").strip().lower() in _FALSE:
            return
        key = os.path.realpath(state_dir)
        os.makedirs(key, exist_ok=True)
        with open(os.path.join(key, WANTED_NAME), "a"):
            pass
        os.utime(os.path.join(key, WANTED_NAME))  # the watcher's exit rule reads this time
        with _spawn_lock:
            previous = _spawned.get(key)
            if previous is not None and previous.poll() is None:
                return  # ours is alive: it watches, or it is about to see one that does
            if watcher_alive(key):
                return
            _spawned[key] = _spawn(key, pid)
    except Exception as error:
        log.debug("afs-callbacks: could not start the death watcher: %s", error)


def watcher_alive(state_dir: str) -> bool:
    """Whether some process holds the watcher lock of ``state_dir`` (a dead one holds none)."""
    path = os.path.join(state_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


def _spawn(state_dir: str, pid: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "afs_callbacks.delivery._watcher_main", state_dir, str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,  # not killed with the training process's group or terminal
        env=dict(os.environ),
    )
    # Reap it when it exits, so no zombie lingers while the training process lives.
    threading.Thread(target=process.wait, name="afs-deathwatch-reaper", daemon=True).start()
    return process


# Reporting -----------------------------------------------------------------------------


def running_here(conn: sqlite3.Connection, host: str) -> list[RunState]:
    """Rows of this host that say ``running``."""
    rows = conn.execute("SELECT state FROM runs WHERE status = ? AND host = ?", (RUNNING, host)).fetchall()
    states = []
    for (payload,) in rows:
        with contextlib.suppress(Exception):
            states.append(RunState.from_dict(json.loads(payload)))
    return states


def open_db(state_dir: str) -> sqlite3.Connection | None:
    """A connection to the state dir's database, or None while it does not exist yet."""
    path = os.path.join(state_dir, DB_NAME)
    if not os.path.exists(path):
        return None
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def claim(conn: sqlite3.Connection, state: RunState) -> RunState | None:
    """Mark a vanished run ended; return its new state if this caller won it, else None.

    A run that sent its terminal event before its row said so ended normally: its row is
    corrected and None returned (no notice).
    """
    now = time.time()
    ended = _terminal_status(conn, state)
    new = replace(
        state,
        status=ended or KILLED,
        ended_at=now,
        end_reason=state.end_reason if ended else REASON,
    )
    cursor = conn.execute(
        "UPDATE runs SET status = ?, ended_at = ?, state = ? WHERE run_id = ? AND status = ? AND pid IS ?",
        (new.status, now, json.dumps(new.to_dict(), allow_nan=False), state.run_id, RUNNING, state.pid),
    )
    return new if cursor.rowcount == 1 and not ended else None


def _terminal_status(conn: sqlite3.Connection, state: RunState) -> str | None:
    marks = ",".join("?" * len(_TERMINAL_TYPES))
    row = conn.execute(
        f"SELECT event_type FROM events WHERE run_id = ? AND event_type IN ({marks}) AND created >= ?"
        " AND title NOT LIKE 'Training killed without a word%' ORDER BY created DESC LIMIT 1",
        (state.run_id, *_TERMINAL_TYPES, state.started_at or 0.0),
    ).fetchone()
    if row is None:
        return None
    return _TERMINAL_STATUS.get(row[0], "interrupted")


def notice_id(conn: sqlite3.Connection, state: RunState) -> str:
    """The notice's id: the same for every reporter of this run's death; a resumed run
    that dies again (its first notice already stored) gets one that names its process."""
    first = uuid.uuid5(uuid.NAMESPACE_URL, f"afs-callbacks:{state.run_id}:killed").hex
    taken = conn.execute("SELECT 1 FROM events WHERE id = ?", (first,)).fetchone()
    if taken is None:
        return first
    return uuid.uuid5(uuid.NAMESPACE_URL, f"afs-callbacks:{state.run_id}:killed:{state.pid}").hex


def build_notice(
    state: RunState, event_id: str, *, seen: Sighting | None, detected_by: str, now: float | None = None
) -> NotificationEvent:
    """The "killed without a word" event for ``state``, with everything that can be known."""
    from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel

    now = time.time() if now is None else now
    signal_name = exit_signal(state.pid)
    folder = seen.cgroup if seen is not None and seen.cgroup else cgroup_dir(state.pid)
    oom_now, peak = cgroup_memory(folder)
    oom_before = seen.oom_kills if seen is not None else None
    lines = [
        f"The training process (pid {state.pid} on {state.host}) ended without a final message:"
        " a SIGKILL, the out-of-memory killer, a scheduler's hard time limit or a reboot.",
        f"Exit signal: {signal_name or 'unknown (the watcher is not its parent)'}.",
    ]
    if oom_now is not None and oom_before is not None:
        verdict = (
            "it was most likely killed for memory" if oom_now > oom_before else "none since the run began"
        )
        lines.append(f"Out-of-memory kills in its cgroup: {oom_before} -> {oom_now} ({verdict}).")
    elif oom_now is not None:
        lines.append(f"Out-of-memory kills in its cgroup so far: {oom_now} (no count from the run's start).")
    if peak is not None:
        lines.append(f"Peak memory of its cgroup: {peak / 2**30:.2f} GiB.")
    lines.append(_progress_line(state, now))
    context: dict[str, Any] = {
        "model": state.model,
        "run_id": state.run_id,
        "host": state.host,
        "pid": state.pid,
        "reason": REASON,
        "status": KILLED,
        "signal": signal_name,
        "oom_kills": oom_now,
        "oom_kills_at_start": oom_before,
        "peak_memory_bytes": peak,
        "step": state.step,
        "epoch": state.epoch,
        "last_update": state.updated_at,
        "detected_by": detected_by,
        "metrics": dict(state.metrics),
    }
    return NotificationEvent(
        event_type=EventType.TRAINING_FAILED,
        level=NotificationLevel.CRITICAL,
        title=f"Training killed without a word: {state.model}",
        message="\n".join(lines),
        context={key: value for key, value in context.items() if value is not None},
        id=event_id,
        timestamp=datetime.fromtimestamp(now, timezone.utc),
    )


def _progress_line(state: RunState, now: float) -> str:
    parts = []
    if state.step is not None:
        parts.append(f"step {state.step}" + (f"/{state.total_steps}" if state.total_steps else ""))
    if state.epoch is not None:
        parts.append(f"epoch {state.epoch}" + (f"/{state.total_epochs}" if state.total_epochs else ""))
    where = ", ".join(parts) or "no step recorded"
    if state.updated_at is None:
        return f"Last heard from: {where}."
    when = datetime.fromtimestamp(state.updated_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = max(0.0, now - state.updated_at)
    return f"Last heard from: {where}, at {when} ({ago:.0f} s before it was found gone)."


def route_like_the_run(conn: sqlite3.Connection, event_id: str, run_id: str) -> int:
    """Queue the stored notice ``event_id`` also for every channel that carried the run's
    earlier messages: channels the dead process set up in code (not in the environment)
    are unknown to the watcher, and the next process that has them delivers it. Returns
    how many deliveries were added."""
    now = time.time()
    cursor = conn.execute(
        "INSERT OR IGNORE INTO deliveries (event_id, channel, state, next_attempt)"
        " SELECT ?, channel, 'pending', ? FROM (SELECT DISTINCT d.channel AS channel FROM deliveries d"
        " JOIN events e ON e.id = d.event_id WHERE e.run_id = ? AND e.id != ?)"
        " WHERE EXISTS (SELECT 1 FROM events WHERE id = ?)",
        (event_id, now, run_id, event_id, event_id),
    )
    return max(0, cursor.rowcount)


def find_and_claim(
    conn: sqlite3.Connection,
    *,
    host: str,
    seen: dict[int, Sighting] | None = None,
    detected_by: str,
) -> list[NotificationEvent]:
    """Claim every vanished run of ``host`` in the database; return their notices."""
    notices = []
    for state in running_here(conn, host):
        if state.pid == os.getpid():
            continue
        sighting = None if seen is None or state.pid is None else seen.get(state.pid)
        if not process_gone(state.pid, state.updated_at, sighting):
            continue
        event_id = notice_id(conn, state)
        won = claim(conn, state)
        if won is not None:
            notices.append(build_notice(state, event_id, seen=sighting, detected_by=detected_by))
    return notices


def report_vanished(state_dir: str, emit: Callable[[NotificationEvent], object]) -> None:
    """Report, through ``emit`` (a manager's), this host's runs in ``state_dir`` whose
    process vanished without a word (called once the store is open). Never raises."""
    try:
        conn = open_db(state_dir)
        if conn is None:
            return
        try:
            notices = find_and_claim(conn, host=socket.gethostname(), detected_by="the next run")
        finally:
            conn.close()
        for notice in notices:
            emit(notice)
    except Exception as error:
        log.warning("afs-callbacks: could not check for runs that vanished: %s", error)


__all__ = [
    "Sighting",
    "cgroup_memory",
    "ensure_watcher",
    "find_and_claim",
    "process_gone",
    "report_vanished",
    "route_like_the_run",
    "sight",
    "watcher_alive",
]
