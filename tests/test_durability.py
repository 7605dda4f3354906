"""Nothing accepted is lost: real processes are killed with SIGKILL while messages are pending.

Each test runs a child Python process (``helpers/notify_child.py``) that notifies through a
real HTTP channel, kills it, and has a new manager in this process (same state directory)
deliver what the child left behind. Delivery is at-least-once: every event arrives, an event
may arrive twice when the child died mid-send, and no other duplicates are allowed.

``notify()`` hands events to the writer thread, which stores them within milliseconds; the
tests kill a child once its events are in the file (a kill inside those milliseconds is the
one window ``notify()`` trades for never waiting on the database).
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hook import Gate, HookChannel, event_ids, manager_for, wait_until

from afs_callbacks.testing import LoopbackReceiver, Reply

CHILD = Path(__file__).parent / "helpers" / "notify_child.py"


def stored_ids(state_dir: Path) -> set[str]:
    """Ids of the events in the state directory's outbox file (read by another connection)."""
    path = state_dir / "outbox.sqlite3"
    if not path.exists():
        return set()
    conn = sqlite3.connect(path, timeout=5)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM events")}
    except sqlite3.OperationalError:  # the child is still creating the tables
        return set()
    finally:
        conn.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


class Child:
    """A running notify_child.py; ``ids`` are the events it accepted."""

    def __init__(self, state_dir: Path, url: str, count: int, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), str(state_dir), url, str(count), mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed only after every notify() returned
        assert line, f"child failed before notifying (exit code {self.process.poll()})"
        self.ids: list[str] = json.loads(line)
        self.state_dir = state_dir

    def kill(self) -> None:
        wait_until(lambda: stored_ids(self.state_dir) >= set(self.ids), what="the child's events stored")
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)  # reaped: a zombie's PID would still look alive
        assert self.process.returncode == -signal.SIGKILL

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def assert_all_delivered_once_or_more(requests_ids: list[str], ids: list[str], *, redelivered: int) -> None:
    counts = Counter(requests_ids)
    assert set(counts) == set(ids) and len(counts) == len(ids)  # nothing lost, nothing invented
    assert sum(count - 1 for count in counts.values()) <= redelivered


@pytest.mark.parametrize("down", ["nothing-listening", "answering-503"])
def test_pending_messages_of_a_killed_process_are_delivered_by_the_next_manager(
    tmp_path: Path, receiver: LoopbackReceiver, children: list[Child], down: str
) -> None:
    state = tmp_path / "shared-state"
    with LoopbackReceiver(Reply(503, "down for maintenance")) as unavailable:
        url = closed_port_url() if down == "nothing-listening" else unavailable.url("/hook")
        child = Child(state, url, 40, "hold")
        children.append(child)
        child.kill()
    successor = manager_for(state, {"hook": HookChannel(receiver.url("/hook"))})
    report = successor.flush(30)
    assert report.pending == 0 and report.dead == 0
    assert report.delivered == 40
    # Only the message the child had in flight at the kill could arrive twice.
    assert_all_delivered_once_or_more(event_ids(receiver.requests), child.ids, redelivered=0)
    successor.close()


def test_a_row_leased_by_a_process_killed_mid_send_is_reclaimed(
    tmp_path: Path, children: list[Child]
) -> None:
    state = tmp_path / "shared-state"
    gate = Gate(hold=1)  # the service hangs on the first request only
    with LoopbackReceiver(responder=gate) as service:
        child = Child(state, service.url("/hook"), 3, "hold")
        children.append(child)
        assert gate.arrived.wait(10)  # the child is inside send(), its rows leased
        child.kill()
        gate.open()
        successor = manager_for(state, {"hook": HookChannel(service.url("/hook"))})
        # The lease would last a minute; the dead PID frees it at once.
        report = successor.flush(30)
        assert report.pending == 0 and report.delivered == 3
        # The held request may also complete: at-least-once allows that one duplicate.
        assert_all_delivered_once_or_more(event_ids(service.requests), child.ids, redelivered=1)
        successor.close()


def test_a_script_that_just_ends_delivers_at_exit(
    tmp_path: Path, receiver: LoopbackReceiver, children: list[Child]
) -> None:
    child = Child(tmp_path / "state", receiver.url("/hook"), 2, "exit")
    children.append(child)
    assert child.process.wait(30) == 0
    receiver.wait_for(2, timeout=5)
    assert sorted(event_ids(receiver.requests)) == sorted(child.ids)
