"""Running afs-notify for real: a subprocess of ``python -m afs_callbacks`` with its own
environment, as a user's shell or job script would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from afs_callbacks.delivery.outbox import HistoryEntry, Outbox

#: Generous: a loaded CI machine starts Python slowly; nothing here waits this long normally.
TIMEOUT = 60


def cli_env(**variables: str) -> dict[str, str]:
    """The test's (already isolated) environment plus ``variables``.

    The desktop channel is off unless a test turns it on: a CI job that runs under a
    D-Bus session would otherwise add a desktop channel to every command.
    """
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env["DESKTOP_NOTIFICATIONS_ENABLED"] = "false"
    env.update(variables)
    return env


def afs_notify(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m afs_callbacks ARGS`` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "afs_callbacks", *args],
        env=dict(env if env is not None else cli_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def history(state_dir: str | os.PathLike[str], **filters: str) -> list[HistoryEntry]:
    """What the outbox under ``state_dir`` holds, newest first."""
    outbox = Outbox(Path(state_dir) / "outbox.sqlite3")
    try:
        return outbox.history(limit=100, **filters)
    finally:
        outbox.close()
