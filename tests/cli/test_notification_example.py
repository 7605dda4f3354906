"""examples/notification_example.py runs as a user would run it and says what it sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli.helpers import TIMEOUT, cli_env, history

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "notification_example.py"
TITLES = [
    "Training started: tiny-gpt",
    "Cost alert for tiny-gpt: $10.00",
    "Training completed: tiny-gpt",
    "Evaluation completed: tiny-gpt",
    "Loss improved",
    "Training failed: tiny-gpt",
    "Example finished",
]


@pytest.mark.parametrize("channel", ["webhook", "console"])
def test_the_example_runs_and_prints_what_it_sent(channel: str, isolated_env: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--channel", channel],
        env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Sent 7 notifications:" in result.stdout
    for title in TITLES:
        assert f"{title}  [{channel}: delivered]" in result.stdout
    if channel == "webhook":
        assert "The local server received 7 POST requests." in result.stdout
    else:
        assert "Training failed: tiny-gpt" in result.stderr  # the console lines themselves
    assert len(history(isolated_env)) == 7  # and all of it is in the history afs-notify reads
