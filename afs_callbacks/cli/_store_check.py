"""The CLI's word on a history file it cannot read: which file, what is wrong, what to do.

A training process moves a corrupted file aside and goes on (see
:mod:`afs_callbacks.delivery.store`); a command that only reads the history must not move
the user's file behind their back, so it looks first and, when the file is damaged,
locked or unreadable, says so in one line and exits 2.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from afs_callbacks.cli._common import UsageError
from afs_callbacks.config import default_state_dir
from afs_callbacks.delivery.faults import describe_fault, is_corruption
from afs_callbacks.delivery.lifecycle import OUTBOX_FILE


def history_path(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """The history file under ``state_dir`` (default: ``AFS_STATE_DIR`` or the XDG path)."""
    return Path(state_dir or default_state_dir()).expanduser() / OUTBOX_FILE


def history_fault(path: str | os.PathLike[str], error: BaseException) -> str:
    """One sentence: the file, what is wrong with it, and what to do about it."""
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


def check_history(path: str | os.PathLike[str]) -> None:
    """Read the file's schema, read-only; a missing file is fine (nothing was queued yet).

    Raises:
        UsageError: the file cannot be read (worded by :func:`history_fault`).
    """
    if not os.path.exists(path):
        return
    try:
        conn = sqlite3.connect(f"file:{quote(os.fspath(path))}?mode=ro", uri=True, timeout=5.0)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        raise UsageError(history_fault(path, error)) from None
