"""Scenario: a cluster preempts a Hugging Face Trainer run with SIGTERM; the job resumes.

What a user sees:

1. "Training started" while the job runs, checkpoints every few steps.
2. The scheduler sends SIGTERM. The Trainer has no exception hook, but ``AFSNotify``
   made SIGTERM raise inside the training loop, so "Training interrupted (SIGTERM ...)"
   is delivered *before the process exits* (with status 143, as a SIGTERM death would).
   The outbox history says so.
3. The resubmitted job resumes from the last checkpoint: "Loading checkpoint", "Training
   resumed" under the same run id (kept next to the checkpoint), then "Training completed".

The training script is this file: ``python integrations/scenario_transformers_preemption.py
--output-dir DIR [--resume]``, with ``WEBHOOK_URL`` (or any channel) in the environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[1]
READY = "TRAINING-IS-RUNNING"
SAVE_EVERY = 4


def train(output_dir: Path, resume: bool) -> None:
    """The job: a tiny regression that would run for a long time unless stopped."""
    import time

    import torch
    from torch import nn
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from afs_callbacks.integrations.transformers import AFSNotify

    class Regressor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def forward(self, x: Any, labels: Any = None) -> Any:
            prediction = self.layer(x)
            return (nn.functional.mse_loss(prediction, labels), prediction)

    class SlowStepAfterACheckpoint(TrainerCallback):  # type: ignore[misc]
        """Tells the test (on stdout) that training runs, then takes a long step, so that
        SIGTERM lands mid-run and after a complete checkpoint."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == SAVE_EVERY + 1 and not resume:
                print(READY, flush=True)
                # Short sleeps, as in scenario_keras_crash: SIGTERM may land on another
                # thread, and the handler runs only when the main thread runs bytecode.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    time.sleep(0.05)

    x = torch.rand(64, 1)
    rows = [{"x": x[i], "labels": 3 * x[i] + 1} for i in range(64)]
    last = get_last_checkpoint(str(output_dir)) if resume else None
    # The resumed job runs a few more steps and ends; the first one runs until preempted.
    max_steps = int(Path(last).name.split("-")[-1]) + 4 if last else 10**6
    trainer = Trainer(
        model=Regressor(),
        args=TrainingArguments(
            output_dir=str(output_dir),
            max_steps=max_steps,
            per_device_train_batch_size=8,
            save_steps=SAVE_EVERY,
            logging_steps=2,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=rows,
        callbacks=[AFSNotify(model_name="preemptible"), SlowStepAfterACheckpoint()],  # channels: env
    )
    trainer.train(resume_from_checkpoint=last)


# The test ------------------------------------------------------------------------------


def _child(output_dir: Path, receiver_url: str, log: IO[str], *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "WEBHOOK_URL": receiver_url,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, __file__, "--output-dir", str(output_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )


def _received(receiver: Any) -> list[Any]:
    """What the receiver got, less the routine checkpoint messages."""
    from afs_callbacks import EventType, NotificationEvent

    events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
    # In the order the run made them: delivery sends the most urgent first.
    events.sort(key=lambda event: event.timestamp)
    return [event for event in events if event.event_type is not EventType.CHECKPOINT_SAVED]


@pytest.mark.slow
def test_transformers_preempted_run_reports_interruption_before_exit_then_resumes(
    receiver, tmp_path, isolated_env
):
    from tests.helpers.children import wait_for_line  # here: the job is this file, run alone

    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("transformers")
    from afs_callbacks import EventType
    from afs_callbacks.delivery.outbox import Outbox

    output = tmp_path / "output"
    with (tmp_path / "first.log").open("w") as log:
        job = _child(output, receiver.url("/hook"), log)
        try:
            wait_for_line(job, READY, timeout=120)
            job.send_signal(signal.SIGTERM)
            assert job.wait(timeout=60) == 128 + signal.SIGTERM
        finally:
            job.kill()
    # No waiting from here: what the process delivered, it delivered before it exited.
    first = _received(receiver)
    assert [event.event_type for event in first] == [
        EventType.TRAINING_STARTED,
        EventType.TRAINING_INTERRUPTED,
    ], (tmp_path / "first.log").read_text()[-3000:]
    assert "SIGTERM" in first[-1].context["reason"] and first[-1].context["step"] == 5
    outbox = Outbox(isolated_env / "outbox.sqlite3")
    [entry] = outbox.history(event_type="training_interrupted")
    assert [delivery.state for delivery in entry.deliveries] == ["delivered"]
    outbox.close()

    with (tmp_path / "resumed.log").open("w") as log:
        resumed = _child(output, receiver.url("/hook"), log, "--resume")
        assert resumed.wait(timeout=120) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    second = _received(receiver)[len(first) :]
    kinds = [event.event_type for event in second]
    # The quiet default pushes no progress (the checkpoint loading is in the history).
    assert kinds[0] is EventType.TRAINING_RESUMED
    assert second[0].context["resumed_from"] == str(output / f"checkpoint-{SAVE_EVERY}")
    assert kinds[-1] is EventType.TRAINING_COMPLETED
    assert {event.run_id for event in second} == {first[0].run_id}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    arguments = parser.parse_args()
    train(arguments.output_dir, arguments.resume)
