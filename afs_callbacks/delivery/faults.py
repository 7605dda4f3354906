"""What a storage error means (a lock to wait for, a full disk, a damaged file...), and what
to do with a file SQLite says is damaged.

:func:`history_fault` is the one sentence a reader (the CLI, the dashboard) says about a
history it cannot read; a training process moves a damaged file aside instead and says so.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

from afs_callbacks.redaction import redact

_CORRUPT = ("malformed", "not a database", "file is encrypted", "database corrupt")


def describe_fault(error: BaseException) -> str:
    """What a storage error means for people: disk full, read-only, locked, corrupted."""
    text = str(error).lower()
    errno = getattr(error, "errno", None)
    if "full" in text or errno == 28:
        return "the disk is full"
    if "readonly" in text or "read-only" in text or errno in (13, 30):
        return "the file or its folder is read-only"
    if errno in (17, 20):
        return "a file stands where its folder should be"
    if is_busy(error):
        return "another process holds its write lock"
    if is_corruption(error):
        return "the file is corrupted"
    if "unable to open" in text:
        return "it cannot be opened (missing folder, no permission, or a read-only disk)"
    return redact(f"{type(error).__name__}: {error}")


def history_fault(path: str | os.PathLike[str], error: BaseException) -> str:
    """One sentence: the file, what is wrong with it, and what to do about it (what a reader
    of the history says: it leaves the file where it is)."""
    what = describe_fault(error)
    if is_corruption(error):
        todo = (
            f"move it aside (mv {path} {path}.bad) or delete it; the next run starts a fresh one"
            " and pending messages in it are lost"
        )
    elif "locked" in what:
        todo = "try again when the other process is done writing"
    elif "full" in what:
        todo = "free some space on that disk, or point AFS_STATE_DIR at another one"
    elif "read-only" in what or "cannot be opened" in what:
        todo = "check the folder's permissions, or point AFS_STATE_DIR at a writable local folder"
    else:
        todo = "point AFS_STATE_DIR at another folder to start a fresh history"
    return f"cannot read the notification history {path}: {what}; {todo}"


def is_busy(error: BaseException) -> bool:
    """Whether SQLite found the write lock taken by another connection (``database is
    locked``, SQLITE_BUSY): a reason to wait for a turn, not a fault by itself."""
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def is_corruption(error: BaseException) -> bool:
    """Whether SQLite says the file itself is damaged (moving it aside is the cure)."""
    text = str(error).lower()
    return isinstance(error, sqlite3.DatabaseError) and any(word in text for word in _CORRUPT)


def still_corrupt(path: str, timeout: float) -> bool:
    """Whether the file at ``path`` fails SQLite's quick check now."""
    try:
        conn = sqlite3.connect(path, timeout=timeout)
        try:
            row = conn.execute("PRAGMA quick_check(1)").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        return is_corruption(error)
    return row is None or row[0] != "ok"


def move_aside(path: str) -> str:
    """Rename a damaged file (and its WAL and shared memory) to ``<path>.corrupt-<time>``."""
    target = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.replace(path + suffix, target + suffix)
    return target
