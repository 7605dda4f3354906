"""Scenario: a 2-process Lightning DDP run (CPU, gloo) checkpointed, then stopped, and no
rank hangs — once from outside with ``afs-notify`` (``AFS_CONTROL=cli``), once by its own
rules (``AFS_RULES``, with run control off).

Rank zero hears what to do: its control reads the commands from the store off the
training thread, or its rules read its loss windows (a rule's checkpoint or stop is an
ask on rank zero's tracker, like a command). Every ``nan_check_every`` steps the ranks
agree (one all-reduce of three flags: a NaN stop, a stop asked, a checkpoint asked), so
both call ``trainer.save_checkpoint`` at the same step (a collective: rank zero writes)
and both set ``trainer.should_stop`` at the same step. Each rank writes the step it ended
at; they must be equal, the job must exit 0 well before its planned end, the checkpoints
must exist, and the history must say who stopped the run.

The training script is this file: ``python integrations/scenario_ddp_acted_on.py OUT
control|rules``, with ``AFS_CONTROL=cli`` or ``AFS_RULES`` set. Lightning starts rank 1 by
running the same command again.
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
#: Seconds per step: commands from another process need the run to last a while.
STEP_SECONDS = {"control": 0.03, "rules": 0.01}
CHECKPOINT_RULE = "loss > 0 -> checkpoint"
STOP_RULE = "loss < 1000 for 20 readings -> stop"


def train(out: Path, by: str) -> None:
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
            time.sleep(STEP_SECONDS[by])
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
            AFSNotify(model_name=f"ddp-{by}", nan_check_every=5, monitors=False, chart=False),
            ModelCheckpoint(dirpath=out / "ckpt"),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(Regressor(), DataLoader(TensorDataset(x, 3 * x + 1), batch_size=8))
    (out / f"rank{trainer.global_rank}.step").write_text(str(trainer.global_step))


def run_job(out: Path, by: str, settings: dict[str, str]) -> list[int]:
    """Run the 2-process job with ``settings`` in its environment; the step each rank
    ended at."""
    env = {
        **os.environ,
        "AFS_STATE_DIR": str(out / "state"),
        "DESKTOP_NOTIFICATIONS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("AFS_CONTROL", None)
    env.update(settings)
    with (out / "ddp.log").open("w") as log:
        result = subprocess.run(
            [sys.executable, __file__, str(out), by],
            stdout=log,
            stderr=log,
            env=env,
            cwd=out,
            timeout=300,
        )
    assert result.returncode == 0, (out / "ddp.log").read_text()[-4000:]
    return [int((out / f"rank{rank}.step").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_a_ddp_run_is_checkpointed_and_stopped_from_outside_on_every_rank(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lightning.pytorch")
    from tests.control.support import Commander, commands

    state = tmp_path / "state"
    commander = Commander(state, (["checkpoint", "{run}"], ["stop", "{run}", "--yes", "--timeout", "90"]))
    commander.start()
    steps = run_job(tmp_path, "control", {"AFS_CONTROL": "cli"})
    checkpoint, stop = commander.finish()
    assert checkpoint.returncode == 0 and "checkpoint saved at step" in checkpoint.stdout, checkpoint
    assert stop.returncode == 0 and "done (stopped by" in stop.stdout, stop
    assert steps[0] == steps[1] < MAX_STEPS // 2, steps  # the same step on both, early, no hang
    saved = re.search(r"step [\d,]+: (\S+)\)", checkpoint.stdout)
    assert saved and Path(saved.group(1)).is_file()
    assert list((tmp_path / "ckpt").glob("afs-stop-step=*.ckpt"))
    assert [(c.action, c.state) for c in commands(state)] == [("checkpoint", "done"), ("stop", "done")]


@pytest.mark.slow
def test_a_ddp_run_is_checkpointed_and_stopped_by_its_rules_on_every_rank(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lightning.pytorch")
    from afs_callbacks import EventType
    from afs_callbacks.delivery.outbox import Outbox

    steps = run_job(tmp_path, "rules", {"AFS_RULES": f"{CHECKPOINT_RULE}; {STOP_RULE}"})
    assert steps[0] == steps[1] < MAX_STEPS // 2, steps  # the same step on both, early, no hang
    assert list((tmp_path / "ckpt").glob("afs-checkpoint-step=*.ckpt"))
    assert list((tmp_path / "ckpt").glob(f"afs-stop-step={steps[0]}.ckpt"))
    with Outbox(tmp_path / "state" / "outbox.sqlite3", read_only=True) as store:
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
    train(Path(sys.argv[1]), sys.argv[2])
