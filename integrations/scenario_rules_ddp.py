"""Scenario: a 2-process Lightning DDP run (CPU, gloo) checkpointed, then stopped, by its
rules (``AFS_RULES``, with run control off), and no rank hangs.

Rank zero reads the rules (from its loss windows); a rule's checkpoint or stop is an ask
on rank zero's tracker, like a command; every ``nan_check_every`` steps the ranks agree
(one all-reduce of three flags), so both call ``trainer.save_checkpoint`` at the same step
and both stop at the same step. Each rank writes the step it ended at; they must be equal,
the job must exit 0 well before its planned end, the checkpoints must exist, and the
history must say the run was stopped by its rule.

The training script is this file: ``python integrations/scenario_rules_ddp.py OUT`` with
``AFS_RULES`` set. Lightning starts rank 1 by running the same command again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 2000
STEP_SECONDS = 0.01
CHECKPOINT_RULE = "loss > 0 -> checkpoint"
STOP_RULE = "loss < 1000 for 20 readings -> stop"


def train(out: Path) -> None:
    """The job: a tiny regression on 2 CPU processes."""
    import time

    import torch
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from afs_callbacks.integrations.lightning import AFSNotify

    class Regressor(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            time.sleep(STEP_SECONDS)
            x, y = batch
            return nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x = torch.rand(512, 1)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=MAX_STEPS,
        callbacks=[
            AFSNotify(model_name="ddp-rules", nan_check_every=5, monitors=False, chart=False),
            ModelCheckpoint(dirpath=out / "ckpt"),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(Regressor(), DataLoader(TensorDataset(x, 3 * x + 1), batch_size=8))
    (out / f"rank{trainer.global_rank}.step").write_text(str(trainer.global_step))


@pytest.mark.slow
def test_a_ddp_run_is_checkpointed_and_stopped_by_its_rules_on_every_rank(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lightning.pytorch")
    from afs_callbacks import EventType
    from afs_callbacks.delivery.outbox import Outbox

    state = tmp_path / "state"
    env = {
        **os.environ,
        "AFS_STATE_DIR": str(state),
        "AFS_RULES": f"{CHECKPOINT_RULE}; {STOP_RULE}",
        "DESKTOP_NOTIFICATIONS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("AFS_CONTROL", None)
    with (tmp_path / "ddp.log").open("w") as log:
        result = subprocess.run(
            [sys.executable, __file__, str(tmp_path)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
    assert result.returncode == 0, (tmp_path / "ddp.log").read_text()[-4000:]
    steps = [int((tmp_path / f"rank{rank}.step").read_text()) for rank in (0, 1)]
    assert steps[0] == steps[1] < MAX_STEPS // 2, steps  # the same step on both, early, no hang
    assert list((tmp_path / "ckpt").glob("afs-checkpoint-step=*.ckpt"))
    assert list((tmp_path / "ckpt").glob(f"afs-stop-step={steps[0]}.ckpt"))
    with Outbox(state / "outbox.sqlite3", read_only=True) as store:
        rows = sorted(store.commands(limit=None), key=lambda c: c.created)
        events = [entry.event for entry in store.history(limit=1000)]
    assert [(c.action, c.source, c.state) for c in rows] == [
        ("checkpoint", "rule", "done"),
        ("stop", "rule", "done"),
    ]
    [end] = [e for e in events if e.event_type is EventType.TRAINING_COMPLETED]
    assert end.context["outcome"] == "stopped_by_rule"
    assert end.context["end_reason"].startswith(f'stopped by rule "{STOP_RULE}"')


if __name__ == "__main__":
    train(Path(sys.argv[1]))
