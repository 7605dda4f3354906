"""What can be known about a training process from outside it: whether it is gone (a
zombie and a reused pid count as gone), the signal that ended it, and its memory cgroup's
OOM-kill count and peak memory (cgroup v2 or v1). Used by the death watcher."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass


@dataclass
class Sighting:
    """What the watcher learnt about a run's process while it was alive."""

    create_time: float | None
    cgroup: str | None
    oom_kills: int | None


def sight(pid: int) -> Sighting | None:
    """Note a live process's start time, memory cgroup and that cgroup's OOM-kill count."""
    try:
        import psutil

        created: float | None = psutil.Process(pid).create_time()
    except ImportError:
        created = None
    except Exception:
        return None  # already gone
    folder = cgroup_dir(pid)
    return Sighting(created, folder, cgroup_memory(folder)[0])


def process_gone(pid: int | None, last_update: float | None, seen: Sighting | None = None) -> bool:
    """Whether the process ``pid`` that wrote a run's row no longer exists on this host.

    A zombie counts as gone; so does a live process that started after the row was last
    written, or another one than the watcher saw (the pid was reused).
    """
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's: the start time below still tells a reused pid
    try:
        import psutil
    except ImportError:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        created = process.create_time()
    except psutil.NoSuchProcess:  # a zombie too (ZombieProcess is one)
        return True
    except psutil.Error:
        return False  # access denied: alive, and nothing more can be told
    if seen is not None and seen.create_time is not None:
        return abs(created - seen.create_time) > 1.0
    return last_update is not None and created > last_update + 1.0


def exit_signal(pid: int | None) -> str | None:
    """The signal that ended ``pid``, while it is a zombie its parent has not reaped yet."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        if fields[0] != b"Z" or len(fields) < 50:
            return None
        status = int(fields[-1])  # the wait status (Linux >= 3.5, same user)
    except (OSError, ValueError, IndexError):
        return None
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return signal.Signals(number).name
        return f"signal {number}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return None


def cgroup_dir(pid: int | None) -> str | None:
    """The memory cgroup folder of ``pid`` (v2 or v1), or of this process if ``pid`` is gone."""
    for who in ([str(pid)] if pid else []) + ["self"]:
        try:
            with open(f"/proc/{who}/cgroup", encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if controllers == "" and os.path.exists("/sys/fs/cgroup/memory.events"):
                return _existing("/sys/fs/cgroup", path)
            if "memory" in controllers.split(","):
                return _existing("/sys/fs/cgroup/memory", path)
    return None


def _existing(root: str, path: str) -> str:
    # Inside a container the path names the host's hierarchy; the mount shows its own root.
    candidate = os.path.join(root, path.lstrip("/"))
    return candidate if os.path.isdir(candidate) else root


def cgroup_memory(folder: str | None) -> tuple[int | None, int | None]:
    """(the cgroup's ``oom_kill`` count, its peak memory in bytes); None where unreadable."""
    if folder is None:
        return None, None
    oom = None
    for name in ("memory.events", "memory.oom_control"):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        oom = int(value)
            break
    peak = None
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                peak = int(handle.read().split()[0])
            break
    return oom, peak
