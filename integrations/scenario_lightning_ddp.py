"""Scenario: Lightning DDP with two CPU processes (gloo) — one voice per run.

What a user sees from a 2-process run whose loss turns NaN on rank 1 only, with
``stop_on_nan=True``:

* exactly one "Training started" and one "Training completed" (global rank zero speaks
  for the run; rank 1 stays quiet), all under one run id that rank zero shared in ``setup``;
* exactly one "NaN/Inf loss" — from rank 1, which alone saw it, marked ``rank: 1``;
* both ranks stop at the same step: they agree on stopping when they read their NaN flags
  (every ``nan_check_every`` steps), so neither waits forever in a collective for the other.

Both ranks read their channels from the environment and share one outbox; a failure that
several ranks report carries one id per run, so it is delivered once.

The training script is this file: ``python integrations/scenario_lightning_ddp.py`` with
``WEBHOOK_URL`` (or any channel) in the environment. Lightning starts rank 1 by running
the same command again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
NAN_STEP = 1  # rank 1's loss is NaN from this step; read at step 2, when both ranks stop


def train() -> None:
    """The job: a tiny regression on 2 CPU processes; rank 1's loss turns NaN."""
    import torch
    from lightning.pytorch import LightningModule, Trainer
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from afs_callbacks.integrations.lightning import AFSNotify

    class Regressor(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            # Training stops before rank 0 computes a loss from the weights this poisons.
            if self.global_rank == 1 and self.global_step >= NAN_STEP:
                loss = loss * float("nan")
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x = torch.rand(256, 1)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=STEPS,
        callbacks=[AFSNotify(model_name="ddp-regressor", nan_check_every=2, stop_on_nan=True)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), DataLoader(TensorDataset(x, 3 * x + 1), batch_size=8))


@pytest.mark.slow
def test_ddp_run_speaks_once_and_a_nan_on_rank_one_is_reported_once_and_stops_both(receiver, tmp_path):
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("lightning.pytorch")
    from afs_callbacks import EventType, NotificationEvent

    env = {
        **os.environ,
        "WEBHOOK_URL": receiver.url("/hook"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    with (tmp_path / "ddp.log").open("w") as log:
        result = subprocess.run(
            [sys.executable, __file__], stdout=log, stderr=log, env=env, cwd=tmp_path, timeout=240
        )
    assert result.returncode == 0, (tmp_path / "ddp.log").read_text()[-4000:]

    events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
    kinds = [event.event_type for event in events]
    assert kinds.count(EventType.TRAINING_STARTED) == 1
    assert kinds.count(EventType.TRAINING_COMPLETED) == 1
    nans = [event for event in events if event.event_type is EventType.NAN_DETECTED]
    assert len(nans) == 1, kinds
    assert nans[0].context["rank"] == 1 and nans[0].context["step"] == NAN_STEP + 1
    assert len({event.run_id for event in events}) == 1
    completed = events[kinds.index(EventType.TRAINING_COMPLETED)]
    assert completed.context["step"] == NAN_STEP + 1  # stopped early, and not hung
    started = events[kinds.index(EventType.TRAINING_STARTED)]
    assert started.context["world_size"] == 2


if __name__ == "__main__":
    train()
