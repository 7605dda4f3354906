"""The scenarios' way of waiting for a child's line (``tests/helpers/children.py``) sees a
line that arrived in one write behind another: the preemption scenarios send SIGTERM when
the line comes, and a line seen late sent it a step late (the HF scenario failed so)."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.helpers.children import wait_for_line

# Two lines in one write, then nothing for a long while (a training inside a slow step).
CHILD = "import time; print('{\"loss\": 1.0}'); print('READY', flush=True); time.sleep(30)"


def test_a_line_behind_another_in_one_write_is_seen_at_once() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        wait_for_line(child, "READY", timeout=20)
        assert time.monotonic() - started < 10  # not when the child next prints, or exits
    finally:
        child.kill()
        child.wait()


def test_a_child_that_ends_without_the_line_fails_the_wait() -> None:
    child = subprocess.Popen([sys.executable, "-c", "print('other')"], stdout=subprocess.PIPE, text=True)
    try:
        wait_for_line(child, "READY", timeout=20)
    except AssertionError as error:
        assert "never said 'READY'" in str(error)
    else:
        raise AssertionError("the wait returned without the line")
    finally:
        child.wait()
