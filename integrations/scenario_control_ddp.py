"""Scenario: a 2-process Lightning DDP run (CPU, gloo) checkpointed, then stopped, from
outside with ``afs-notify``, and no rank hangs.

Rank zero's control receives the commands (it reads the store off the training thread);
every ``nan_check_every`` steps the ranks agree (one all-reduce of three flags: a NaN
stop, a stop asked, a checkpoint asked), so both call ``trainer.save_checkpoint`` at the
same step (a collective: rank zero writes) and both set ``trainer.should_stop`` at the
same step. Each rank writes the step it ended at; they must be equal, the job must exit
0 well before its planned end, and the checkpoints must exist.

The training script is this file: ``python integrations/scenario_control_ddp.py OUT``
with ``AFS_CONTROL=cli``. Lightning starts rank 1 by running the same command again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 2000
STEP_SECONDS = 0.03


def train(out: Path) -> None:
    """The job: a tiny regression on 2 CPU processes, slow enough to be commanded."""
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
            AFSNotify(model_name="ddp-control", nan_check_every=5, monitors=False, chart=False),
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
def test_a_ddp_run_is_checkpointed_and_stopped_from_outside_on_every_rank(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lightning.pytorch")
    from tests.control.support import Commander, commands

    state = tmp_path / "state"
    env = {
        **os.environ,
        "AFS_STATE_DIR": str(state),
        "AFS_CONTROL": "cli",
        "DESKTOP_NOTIFICATIONS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    commander = Commander(state, (["checkpoint", "{run}"], ["stop", "{run}", "--yes", "--timeout", "90"]))
    commander.start()
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
    checkpoint, stop = commander.finish()
    assert checkpoint.returncode == 0 and "checkpoint saved at step" in checkpoint.stdout, checkpoint
    assert stop.returncode == 0 and "done (stopped by" in stop.stdout, stop
    steps = [int((tmp_path / f"rank{rank}.step").read_text()) for rank in (0, 1)]
    assert steps[0] == steps[1] < MAX_STEPS // 2, steps  # the same step on both, early, no hang
    saved = re.search(r"step [\d,]+: (\S+)\)", checkpoint.stdout)
    assert saved and Path(saved.group(1)).is_file()
    assert list((tmp_path / "ckpt").glob("afs-stop-step=*.ckpt"))
    assert [(c.action, c.state) for c in commands(state)] == [("checkpoint", "done"), ("stop", "done")]


if __name__ == "__main__":
    train(Path(sys.argv[1]))
