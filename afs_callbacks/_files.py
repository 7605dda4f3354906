"""The state directory and its files are private to their user: folders 0700, files 0600.

A shared cluster node has many users. The history names runs, hosts, errors and the
commands people sent; the lock files name process ids; and, with run control on, whoever
can write the store can ask a run to stop. So the state directory is created 0700 and
every file in it 0600 (the outbox, SQLite's ``-wal`` and ``-shm`` beside it, the lock
files), whatever the process's umask says. SQLite creates the WAL and shared-memory files
with the permissions of the database file, so a private database keeps them private too;
files an older version left readable are tightened when they are opened.

An existing folder is tightened only when it is ours and not a shared one (world-writable
or sticky, like ``/tmp``): pointing ``AFS_STATE_DIR`` at ``/tmp`` must never change
``/tmp``; there only the files are made private, and a warning says so once.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from afs_callbacks._log import get_logger

log = get_logger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_warned: set[str] = set()


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` (and missing parents) a folder only its owner can enter; returns it.

    Raises:
        OSError: the folder cannot be created (the caller's own fault handling applies).
    """
    folder = Path(path)
    try:
        folder.mkdir(mode=PRIVATE_DIR, parents=True)
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode passes through the umask first
        return folder
    except FileExistsError:
        if not folder.is_dir():
            raise  # a file stands where the folder should be: the caller says so
    _tighten_dir(folder)
    return folder


def private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty as 0600 if it is missing, else make an existing file of ours
    0600 (never raises: a file we cannot change is left as it is).

    An existing file is changed by its path, never opened: closing any descriptor of a
    SQLite database drops every POSIX lock this process holds on it, those of the open
    connections included (SQLite's documentation warns of exactly that).
    """
    try:
        # O_EXCL: only a file that did not exist, so no connection of ours has it open.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    except FileExistsError:
        tighten_file(path)
        return
    except OSError:
        return
    os.close(fd)


def open_private(path: str | os.PathLike[str], flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """``os.open`` for a lock or state file: created 0600, an old readable one tightened.

    Raises:
        OSError: what ``os.open`` raises.
    """
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    _chmod_if_open(fd)
    return fd


def tighten_file(path: str | os.PathLike[str]) -> None:
    """Make an existing file of ours 0600; a missing or foreign one is left alone."""
    try:
        info = os.stat(path)
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(path, PRIVATE_FILE)
    except OSError:
        pass


def _chmod_if_open(fd: int) -> None:
    try:
        info = os.fstat(fd)
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        pass


def _tighten_dir(folder: Path) -> None:
    try:
        info = folder.stat()
    except OSError:
        return
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077 or info.st_uid != os.getuid():
        return
    if mode & (stat.S_IWOTH | stat.S_ISVTX):
        key = str(folder)
        if key not in _warned:
            _warned.add(key)
            log.warning(
                "afs-callbacks: the state directory %s is shared with other users; its files are"
                " private, but other users can see their names. Set AFS_STATE_DIR to a folder of"
                " your own.",
                folder,
            )
        return
    with contextlib.suppress(OSError):
        os.chmod(folder, PRIVATE_DIR)


__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "open_private", "private_dir", "private_file", "tighten_file"]
