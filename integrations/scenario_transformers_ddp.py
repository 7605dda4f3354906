"""Scenario: a Hugging Face Trainer run on two CPU processes (torchrun, gloo) — one voice.

What a user sees from a 2-process run whose loss turns NaN on rank 1 only:

* exactly one "Training started" and one "Training completed": the main process speaks
  for the run (``state.is_world_process_zero``); rank 1 stays quiet;
* exactly one "NaN/Inf loss". Gradients are averaged across processes, so rank 1's NaN
  reaches both ranks' gradient norms and both report it — under one run id (rank 0's,
  shared in ``on_train_begin``), hence one event id, hence one message from the shared
  outbox.

The training script is this file: ``torchrun --nproc_per_node 2 --standalone
integrations/scenario_transformers_ddp.py --output-dir DIR``, with ``WEBHOOK_URL`` (or any
channel) in the environment.
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
STEPS = 6
NAN_STEP = 5


def train(output_dir: Path) -> None:
    """The job: a tiny regression on 2 CPU processes; rank 1's loss is NaN at step 5."""
    import torch
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from afs_callbacks.integrations.transformers import AFSNotify

    rank = int(os.environ.get("RANK", "0"))

    class Regressor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)
            self.steps = 0

        def forward(self, x: Any, labels: Any = None) -> Any:
            prediction = self.layer(x)
            loss = nn.functional.mse_loss(prediction, labels)
            self.steps += 1
            if rank == 1 and self.steps == NAN_STEP:
                loss = loss * float("nan")
            return (loss, prediction)

    x = torch.rand(256, 1)
    trainer = Trainer(
        model=Regressor(),
        args=TrainingArguments(
            output_dir=str(output_dir),
            max_steps=STEPS,
            per_device_train_batch_size=8,
            logging_steps=2,
            report_to="none",
            use_cpu=True,
            ddp_backend="gloo",
            disable_tqdm=True,
        ),
        train_dataset=[{"x": x[i], "labels": 3 * x[i] + 1} for i in range(256)],
        callbacks=[AFSNotify(model_name="ddp-regressor")],  # channels from the environment
    )
    trainer.train()


@pytest.mark.slow
def test_transformers_ddp_run_speaks_once_and_a_nan_on_rank_one_is_reported_once(receiver, tmp_path):
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("transformers")
    from afs_callbacks import EventType, NotificationEvent

    env = {
        **os.environ,
        "WEBHOOK_URL": receiver.url("/hook"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    with (tmp_path / "ddp.log").open("w") as log:
        result = subprocess.run(
            [*command, __file__, "--output-dir", str(tmp_path / "out")],
            stdout=log,
            stderr=log,
            env=env,
            cwd=tmp_path,
            timeout=240,
        )
    assert result.returncode == 0, (tmp_path / "ddp.log").read_text()[-4000:]

    events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
    kinds = [event.event_type for event in events]
    assert kinds.count(EventType.TRAINING_STARTED) == 1 and kinds.count(EventType.TRAINING_COMPLETED) == 1
    assert events[0].context["world_size"] == 2
    nans = [event for event in events if event.event_type is EventType.NAN_DETECTED]
    assert len(nans) == 1, kinds
    assert NAN_STEP <= nans[0].context["step"] <= STEPS
    assert len({event.run_id for event in events}) == 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    train(parser.parse_args().output_dir)
