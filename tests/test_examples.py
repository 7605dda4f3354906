"""Every script in examples/ runs as a user runs it: in seconds, with no account, exit 0,
and what it reported is in the history ``afs-notify history`` reads (the user's normal state
directory: here the test's own ``AFS_STATE_DIR``).

With no channel configured an example sends to its demo receiver on 127.0.0.1; with one in
the environment it sends there instead, and the demo receiver is not used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.testing import LoopbackReceiver

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(path.name for path in (REPO / "examples").glob("*.py") if not path.name.startswith("_"))
#: What each example must leave in the history (an example not listed: at least one event).
EXPECTED = {
    "lightning_example.py": {"training_started", "nan_detected", "training_completed"},
    "transformers_example.py": {"training_started", "nan_detected", "training_completed"},
    "keras_example.py": {"training_started", "nan_detected", "training_completed"},
    "notification_example.py": {"training_started", "cost_threshold", "training_failed"},
    "gpu_monitor_example.py": {"cost_threshold"},
    "loop_example.py": {"training_started", "nan_detected", "training_completed"},
}
#: How many trainings an example runs (each must report its start and its end).
TRAININGS = {
    "lightning_example.py": 2,
    "transformers_example.py": 2,
    "keras_example.py": 2,
    "loop_example.py": 2,
}
ENDS = {"training_completed", "training_failed", "training_interrupted"}
#: The framework an example needs; skipped where it is not installed (tox's core env).
NEEDS = {
    "lightning_example.py": "lightning",
    "transformers_example.py": "transformers",
    "keras_example.py": "keras",
    "loop_example.py": "torch",
}


def run_example(script: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESKTOP_NOTIFICATIONS_ENABLED": "false", "PYTHONPATH": str(REPO), **variables}
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / script)],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def history_json(cwd: Path) -> list[dict[str, Any]]:
    """What ``afs-notify history --json`` shows, as a user would run it after the example."""
    result = subprocess.run(
        [sys.executable, "-m", "afs_callbacks", "history", "--json", "--limit", "500"],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES)
def test_the_example_runs_and_its_events_are_in_the_history(script: str, tmp_path: Path) -> None:
    if script in NEEDS:
        pytest.importorskip(NEEDS[script])
    result = run_example(script, tmp_path)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "demo webhook" in result.stdout  # no channel configured: the local receiver
    entries = history_json(tmp_path)
    kinds = {entry["event_type"] for entry in entries}
    assert EXPECTED.get(script, set()) <= kinds, kinds
    assert entries, "the example left nothing in the history"
    states = {d["state"] for entry in entries for d in entry["deliveries"]}
    assert "delivered" in states and states <= {"delivered", "superseded"}, states
    if script in TRAININGS:
        # Each training (a clean one, one that goes NaN) reports its start and its end.
        runs: dict[str, set[str]] = {}
        for entry in entries:
            runs.setdefault(entry["context"].get("run_id", ""), set()).add(entry["event_type"])
        assert len(runs) == TRAININGS[script], runs
        for run, kinds_of_run in runs.items():
            assert "training_started" in kinds_of_run and kinds_of_run & ENDS, (run, kinds_of_run)


def test_an_example_sends_to_the_users_own_channel_when_one_is_configured(tmp_path: Path) -> None:
    with LoopbackReceiver() as receiver:
        # The user's .env, in the folder they run the example from.
        (tmp_path / ".env").write_text(f"WEBHOOK_URL={receiver.url('/mine')}\n", encoding="utf-8")
        result = run_example("notification_example.py", tmp_path)

        assert result.returncode == 0, result.stdout + result.stderr
        assert "Sending to your channels: webhook" in result.stdout
        assert "demo webhook" not in result.stdout
        assert len(receiver.requests) == 7 and {r.path for r in receiver.requests} == {"/mine"}
    channels = {d["channel"] for entry in history_json(tmp_path) for d in entry["deliveries"]}
    assert channels == {"webhook"}


def test_an_example_reports_nothing_when_notifications_are_switched_off(tmp_path: Path) -> None:
    result = run_example("notification_example.py", tmp_path, AFS_ENABLED="false")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "AFS_ENABLED=false" in result.stdout
