"""The CLI's word on a history file it cannot read: which file, what is wrong, what to do.

A training process moves a corrupted file aside and goes on (see
:mod:`afs_callbacks.delivery.outbox`); a command that only reads the history must not move
the user's file behind their back, so it looks first, read-only, and when the file is
damaged, locked or unreadable says so in one line (:func:`history_fault`, the sentence the
dashboard's page says too) and exits 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from afs_callbacks.config import default_state_dir
from afs_callbacks.delivery.faults import history_fault
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox, OutboxUnavailable


def history_path(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """The history file under ``state_dir`` (default: ``AFS_STATE_DIR`` or the XDG path)."""
    return Path(state_dir or default_state_dir()).expanduser() / OUTBOX_FILE


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
