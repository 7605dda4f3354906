"""Scenario: a Hugging Face Trainer run crashes, and nobody wrapped ``trainer.train()``.

The Trainer has no exception hook, so no callback hears of a crash. What a user sees
anyway, because ``AFSNotify`` installed a ``sys.excepthook`` fallback when training began:

1. "Training started".
2. The model raises in step 3 (here: a CUDA out-of-memory error, or any other error).
   The usual traceback is printed, then "Out of memory" (or "Training failed", with the
   traceback's tail) is delivered *before the process exits* with status 1.

The training script is this file: ``python integrations/scenario_transformers_crash.py
--error oom|value``, with ``WEBHOOK_URL`` (or any channel) in the environment. In a
notebook, where ``sys.excepthook`` is not used, wrap the call:
``with afs_callbacks.watch(): trainer.train()``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CRASH_STEP = 3


def train(error: str, output_dir: Path) -> None:
    """The job: a tiny regression whose forward raises at step ``CRASH_STEP``."""
    import torch
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from afs_callbacks.integrations.transformers import AFSNotify

    class Regressor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)
            self.steps = 0

        def forward(self, x: Any, labels: Any = None) -> Any:
            self.steps += 1
            if self.steps == CRASH_STEP:
                if error == "oom":
                    raise torch.cuda.OutOfMemoryError(
                        "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0)"
                    )
                raise ValueError("labels and predictions disagree in shape")
            prediction = self.layer(x)
            return (nn.functional.mse_loss(prediction, labels), prediction)

    x = torch.rand(64, 1)
    trainer = Trainer(
        model=Regressor(),
        args=TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=1,
            per_device_train_batch_size=8,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=[{"x": x[i], "labels": 3 * x[i] + 1} for i in range(64)],
        callbacks=[AFSNotify(model_name="crashing")],  # channels from the environment
    )
    trainer.train()  # deliberately not wrapped in afs_callbacks.watch()


# The test ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("error", "kind"), [("oom", "out_of_memory"), ("value", "training_failed")])
def test_transformers_crash_without_a_wrapper_is_reported_by_the_excepthook(receiver, tmp_path, error, kind):
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("transformers")
    from afs_callbacks import NotificationEvent

    env = {
        **os.environ,
        "WEBHOOK_URL": receiver.url("/hook"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, __file__, "--error", error, "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )

    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr  # the previous hook still ran
    # No waiting: what the process delivered, it delivered before it exited.
    events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
    assert [event.event_type.value for event in events] == ["training_started", kind], result.stderr[-3000:]
    assert events[1].run_id == events[0].run_id and events[1].context["step"] == CRASH_STEP - 1
    if error == "oom":
        assert events[1].context["device"] == "GPU 0"
    else:
        assert "labels and predictions disagree" in events[1].message


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--error", choices=["oom", "value"], required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    arguments = parser.parse_args()
    train(arguments.error, arguments.output_dir)
