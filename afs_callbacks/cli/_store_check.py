"""The CLI's word on a history file it cannot read: which file, what is wrong, what to do.

A training process moves a corrupted file aside and goes on (see
:mod:`afs_callbacks.delivery.outbox`); a command that only reads the history must not move
the user's file behind their back, so it looks first, read-only, and when the file is
damaged, locked or unreadable says so in one line and exits 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from afs_callbacks.config import default_state_dir
from afs_callbacks.delivery.faults import describe_fault, is_corruption
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox, OutboxUnavailable


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


def history_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the file cannot be read, in one :func:`history_fault` sentence; None when it
    can, or when there is none (nothing was queued yet)."""
    try:
        Outbox(path, read_only=True).close()
    except OutboxUnavailable as problem:
        if problem.reason == "missing":
            return None
        return history_fault(path, problem.error or problem)
    return None
