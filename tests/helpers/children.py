"""Child training processes that a test starts, then kills or lets finish."""

from __future__ import annotations

import subprocess
import sys


def start_ready_child(script: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Run ``python -c script args...`` and return once it printed ``ready`` (its run set up
    and registered); its stdin stays open, for the script's own way to end it."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child
