"""Child training processes that a test starts, then kills or lets finish."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time


def start_ready_child(
    script: str, *args: str, env: dict[str, str], ready: str = "ready", stderr: int | None = None
) -> subprocess.Popen[str]:
    """Run ``python -c script args...`` and return once its first line is ``ready`` (its run
    set up and registered); its stdin stays open, for the script's own way to end it.
    ``stderr``: where its stderr goes (``subprocess.DEVNULL`` for a framework's noise)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == ready
    return child


def wait_for_line(process: subprocess.Popen[str], expected: str, timeout: float) -> None:
    """Return once ``process`` printed a line holding ``expected`` on its stdout.

    Reads the pipe's descriptor itself. ``select`` on the buffered stream would miss lines
    already read into its buffer: the line wanted can sit there behind an earlier one while
    ``select`` waits for output that comes only much later. A Hugging Face run's printed
    logs ahead of the line did that, and SIGTERM came a step late.
    """
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    wanted, partial = expected.encode(), b""
    while True:
        ready, _, _ = select.select([descriptor], [], [], max(deadline - time.monotonic(), 0.0))
        chunk = os.read(descriptor, 65536) if ready else b""
        *lines, partial = (partial + chunk).split(b"\n")
        if any(wanted in line for line in lines):
            return
        if not chunk:
            raise AssertionError(f"the training never said {expected!r} (exit code {process.poll()})")
