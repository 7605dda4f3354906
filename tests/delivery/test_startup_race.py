"""Dozens of trainings starting together on one fresh state directory (issues #22, #23).

48 real processes import the library, wait for one barrier file, then all train at once
(busy steps, epochs, a few ``notify()`` calls each) against the same new outbox. They queue
for SQLite's write lock, at the start (the first creates the file, the schema, the WAL) and
while training, for seconds on a machine with fewer cores than processes: that is a queue,
not a fault. None may say that another process holds the lock, none may fall back to
memory for good, and every event and every run's end must be in the file afterwards.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHILD = Path(__file__).resolve().parent.parent / "helpers" / "race_child.py"
PROCESSES = 48
#: Lines that would mean a process took the queue for a fault or lost what it kept.
ALARMS = ("holds its write lock", "kept in memory", "could not be written", "cannot open", "cannot use")


def test_48_processes_starting_together_on_a_fresh_state_dir_store_everything_without_alarm(
    tmp_path: Path,
) -> None:
    state = tmp_path / "fresh-state"  # does not exist yet: the first process creates it
    barrier = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(state), str(barrier), str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "AFS_DEATHWATCH_GRACE": "1"},
        )
        for index in range(PROCESSES)
    ]
    try:
        # Every child has imported the library and waits (its process polls for the file):
        # give them time to get there, then let all of them go at once.
        time.sleep(3.0)
        barrier.touch()
        outputs = [child.communicate(timeout=300) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (_, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr[-2000:]
    alarms = [line for _, stderr in outputs for line in stderr.splitlines() if any(a in line for a in ALARMS)]
    assert alarms == []

    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    accepted = {event_id for report in reports for event_id in report["ids"]}
    assert len(accepted) == PROCESSES * 3
    conn = sqlite3.connect(state / "outbox.sqlite3")
    try:
        stored = {row[0] for row in conn.execute("SELECT id FROM events")}
        ends = dict(
            conn.execute(
                "SELECT run_id, COUNT(*) FROM events WHERE event_type = 'training_completed' GROUP BY run_id"
            )
        )
        runs = dict(conn.execute("SELECT run_id, status FROM runs"))
    finally:
        conn.close()
    assert accepted - stored == set()
    names = {report["run_id"] for report in reports}
    assert ends == {name: 1 for name in names}
    assert runs == {name: "completed" for name in names}
