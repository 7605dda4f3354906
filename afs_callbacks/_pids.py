"""Whether a process id names a process on this host: the one place that asks the kernel
(``kill(pid, 0)``: no signal is sent, only the permission check and the lookup run)."""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists here, whoever owns it (a zombie counts: it is
    gone for a reader only once reaped). The pid may have been reused since it was
    written down; who checks that compares start times (``deathwatch.process_gone``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: it exists
    return True


__all__ = ["pid_exists"]
