"""Where a run finds its user's death watcher on this host: a private folder holding a lock
(an exclusive ``flock``, held by the live watcher, with its pid as text) and a Unix socket
the watcher listens on.

One watcher per user and host watches every state directory that asked. A run tells it
about itself (its state directory, its pid, its identity, and the part of its environment
that configures delivery: channel URLs and tokens) in one message on the socket, a few
hundred bytes sent without waiting for an answer. The watcher keeps what it was told in
memory only. All it writes here is its log (:data:`LOG_NAME`): which runs asked, what it
reported and what failed, redacted like every log of the package, so no token goes there.

The folder is ``$XDG_RUNTIME_DIR/afs-callbacks`` where the session has one (systemd's
``/run/user/<uid>``: private, on tmpfs, removed at logout), else
``$TMPDIR/afs-callbacks-<uid>`` (``/tmp``). The messages carry secrets, so the folder must
be ours and closed to everyone else (0700, not a link) before anything is sent to a socket
in it: in a shared ``/tmp`` another user could have made a folder of that name first
(the watcher then does not run; the next run still reports what vanished). The watcher
also checks each caller's uid (``SO_PEERCRED``, Linux).

Only the standard library: the watcher command imports this before anything else, and a
watcher started while another one runs only hands its message over and exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import stat
import struct
import sys
import time
from typing import Any

FOLDER_NAME = "afs-callbacks"
LOCK_NAME = "deathwatch.lock"
SOCKET_NAME = "deathwatch.sock"
#: The watcher's log (its stderr goes nowhere: it has no terminal of its own).
LOG_NAME = "deathwatch.log"
#: The largest message taken (a registration is a few hundred bytes to a few KiB).
MAX_MESSAGE = 256 * 1024
#: Seconds the watcher waits for the rest of a message after a connection came (the
#: sender writes it right after connecting).
READ_TIMEOUT = 1.0
#: A socket path longer than this is reached through ``/proc/self/fd`` (the kernel's limit
#: is 108 bytes on Linux, 104 on macOS).
_MAX_PATH = 100


def folder() -> str:
    """The rendezvous folder's path for this user (not created)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, FOLDER_NAME)
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"{FOLDER_NAME}-{os.getuid()}")


def log_path(path: str | None = None) -> str:
    """The watcher's log in the folder ``path`` (else this environment's); not created."""
    return os.path.join(folder() if path is None else path, LOG_NAME)


def private_folder(*, create: bool, path: str | None = None) -> str | None:
    """The rendezvous folder (``path``, else this environment's) when it is ours alone
    (created 0700 if ``create``), else None."""
    path = folder() if path is None else path
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        info = os.lstat(path)
    except OSError:
        return None
    private = (
        stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077 == 0
    )
    return path if private else None


def send(message: dict[str, Any], to: str | None = None) -> bool:
    """Hand ``message`` to the watcher of the folder ``to`` (else of this environment's)
    without waiting; False when none listens (or the folder is not private, or its queue
    of connections is full)."""
    path = private_folder(create=False, path=to)
    if path is None:
        return False
    data = json.dumps(message, separators=(",", ":")).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with _address(path) as address:
            sock.connect(address)
        sent = sock.send(data)  # an empty socket buffer takes far more than a message
        return sent == len(data)
    except OSError:  # no socket, a stale one (ECONNREFUSED), a full backlog (EAGAIN)
        return False
    finally:
        sock.close()


def acquire(path: str) -> int | None:
    """Take the watcher lock in the folder ``path`` (and write our pid in it), or None
    when another watcher holds it."""
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder() -> int | None:
    """The pid of this user's live watcher, or None when no process holds the lock."""
    path = os.path.join(folder(), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None  # we got the lock: nobody held it (closing drops the probe's own)
    finally:
        os.close(fd)


def listen(path: str) -> socket.socket:
    """Bind the watcher's socket in the folder ``path`` (the lock holder only: a file left
    by a watcher that died is replaced) and listen."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, SOCKET_NAME))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _address(path) as address:
        sock.bind(address)
    sock.listen(512)  # dozens of runs starting together each connect once
    return sock


def unlisten(path: str) -> None:
    """Remove the socket's name (new callers then start a watcher); the socket itself
    stays open, so connections already queued on it can still be taken."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, SOCKET_NAME))


def receive(sock: socket.socket, timeout: float) -> list[dict[str, Any]]:
    """The messages of the connections queued on the listening ``sock`` within ``timeout``
    seconds (0: only those already there). Never raises for a bad caller."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        wait = max(0.0, deadline - time.monotonic()) if not messages else 0.0
        try:
            ready, _, _ = select.select([sock], [], [], wait)
        except InterruptedError:
            continue
        if not ready:
            return messages
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return messages
        with conn:
            message = _read(conn)
        if message is not None:
            messages.append(message)


def _read(conn: socket.socket) -> dict[str, Any] | None:
    if not _same_user(conn):
        return None
    conn.settimeout(READ_TIMEOUT)
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_MESSAGE:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        message = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None  # a sender killed mid-message, or not ours
    return message if isinstance(message, dict) else None


def _same_user(conn: socket.socket) -> bool:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True  # elsewhere the folder's 0700 is the only gate
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    except OSError:
        return False
    return int(uid) == os.getuid()


@contextlib.contextmanager
def _address(path: str) -> Any:
    """The socket's address; a long one is reached through a descriptor of its folder."""
    full = os.path.join(path, SOCKET_NAME)
    if len(full.encode()) <= _MAX_PATH or not sys.platform.startswith("linux"):
        yield full
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


__all__ = [
    "LOCK_NAME",
    "LOG_NAME",
    "SOCKET_NAME",
    "acquire",
    "folder",
    "listen",
    "lock_holder",
    "log_path",
    "private_folder",
    "receive",
    "send",
    "unlisten",
]
