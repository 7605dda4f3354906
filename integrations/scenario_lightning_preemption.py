"""Scenario: a cluster preempts a Lightning run with SIGTERM; the job is later resumed.

What a user sees:

1. "Training started" while the job runs.
2. The scheduler sends SIGTERM. Lightning stops at the next batch, ``OnExceptionCheckpoint``
   writes ``preempted.ckpt``, and "Training interrupted (SIGTERM ...)" is delivered
   *before the process exits* — the outbox history says so.
3. The resubmitted job resumes from the checkpoint: "Loading checkpoint", "Training
   resumed" under the same run id, then "Training completed".

The training script is this file: ``python integrations/scenario_lightning_preemption.py
--checkpoint-dir DIR [--resume]``, with ``WEBHOOK_URL`` (or any channel) in the environment.
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


def train(checkpoint_dir: Path, resume: bool) -> None:
    """The job: a tiny regression that would run for a long time unless stopped."""
    import torch
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.callbacks import OnExceptionCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from afs_callbacks.integrations.lightning import AFSNotify

    class Regressor(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class SayWhenRunning(Callback):
        """Tells the test (on stdout) that steps are being taken, so SIGTERM lands mid-run."""

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 3:
                print(READY, flush=True)

    checkpoint = checkpoint_dir / "preempted.ckpt"
    # The resumed job runs a few more steps and ends; the first one runs until preempted.
    max_steps = torch.load(checkpoint, weights_only=False)["global_step"] + 5 if resume else 10**9
    x = torch.rand(64, 1)
    trainer = Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=[
            AFSNotify(model_name="preemptible"),  # channels from the environment
            OnExceptionCheckpoint(dirpath=checkpoint_dir, filename="preempted"),
            SayWhenRunning(),
        ],
        default_root_dir=checkpoint_dir,  # Lightning's own epoch-end checkpoints go here too
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DataLoader(TensorDataset(x, 3 * x + 1), batch_size=8)
    trainer.fit(Regressor(), data, ckpt_path=checkpoint if resume else None)


# The test ------------------------------------------------------------------------------


def _child(checkpoint_dir: Path, receiver_url: str, log: IO[str], *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "WEBHOOK_URL": receiver_url,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, __file__, "--checkpoint-dir", str(checkpoint_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )


def _received(receiver: Any) -> list[Any]:
    """What the receiver got, less the routine epoch-end checkpoint messages."""
    from afs_callbacks import EventType, NotificationEvent

    events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
    # In the order the run made them: delivery sends the most urgent first.
    events.sort(key=lambda event: event.timestamp)
    return [event for event in events if event.event_type is not EventType.CHECKPOINT_SAVED]


@pytest.mark.slow
def test_preempted_run_reports_interruption_before_exit_then_resumes(receiver, tmp_path, isolated_env):
    from tests.helpers.children import wait_for_line  # here: the job is this file, run alone

    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("lightning.pytorch")
    from afs_callbacks import EventType
    from afs_callbacks.delivery.outbox import Outbox

    checkpoints = tmp_path / "checkpoints"
    with (tmp_path / "first.log").open("w") as log:
        job = _child(checkpoints, receiver.url("/hook"), log)
        try:
            wait_for_line(job, READY, timeout=120)
            job.send_signal(signal.SIGTERM)
            job.wait(timeout=60)
        finally:
            job.kill()
    # No waiting from here: what the process delivered, it delivered before it exited.
    first = _received(receiver)
    assert [event.event_type for event in first] == [
        EventType.TRAINING_STARTED,
        EventType.TRAINING_INTERRUPTED,
    ], (tmp_path / "first.log").read_text()[-3000:]
    assert "SIGTERM" in first[-1].context["reason"]
    outbox = Outbox(isolated_env / "outbox.sqlite3")
    [entry] = outbox.history(event_type="training_interrupted")
    assert [delivery.state for delivery in entry.deliveries] == ["delivered"]
    outbox.close()
    assert (checkpoints / "preempted.ckpt").is_file()

    with (tmp_path / "resumed.log").open("w") as log:
        resumed = _child(checkpoints, receiver.url("/hook"), log, "--resume")
        assert resumed.wait(timeout=120) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    second = _received(receiver)[len(first) :]
    kinds = [event.event_type for event in second]
    # The quiet default pushes no progress (the checkpoint loading is in the history).
    assert kinds[0] is EventType.TRAINING_RESUMED and kinds[-1] is EventType.TRAINING_COMPLETED
    assert set(kinds[1:-1]) <= {EventType.EPOCH_COMPLETED, EventType.CHECKPOINT_LOADING}
    assert second[0].context["resumed_from"] == str(checkpoints / "preempted.ckpt")
    assert {event.run_id for event in second} == {first[0].run_id}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    arguments = parser.parse_args()
    train(arguments.checkpoint_dir, arguments.resume)
