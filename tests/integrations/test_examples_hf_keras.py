"""The Hugging Face and Keras examples run as a user runs them, in seconds, with no
account and no download, and show what they sent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "framework"),
    [("transformers_example.py", "transformers"), ("keras_example.py", "keras")],
)
def test_the_example_runs_and_shows_what_it_sent(tmp_path, script, framework):
    pytest.importorskip(framework)
    env = {
        **os.environ,
        "AFS_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(REPO),
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch"),
    }
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("The webhook received")
    kinds = [line.split()[0] for line in lines[1:] if line.startswith("  ") and line[2] != " "]
    assert kinds.count("training_started") == 2 and kinds.count("training_completed") == 2
    assert kinds.count("nan_detected") == 1 and "epoch_completed" in kinds
    assert "loss became NaN or Inf at step 6" in result.stdout
    assert not (tmp_path / "state").exists()  # the demo keeps its outbox in a temp folder
