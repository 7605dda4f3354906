"""A tiny real Lightning training with AFSNotify, slowed so a browser can watch it live.

Run as ``python train_tiny.py RUN_ID EPOCHS STEP_SECONDS``; the state directory comes
from ``AFS_STATE_DIR`` as in a user's job. Used by test_browser.py and by
benchmarks/bench_dashboard.py.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from afs_callbacks.integrations.lightning import AFSNotify


class TinyNet(BoringModel):
    """BoringModel that logs train and validation losses, a little slower per step."""

    def __init__(self, step_seconds: float) -> None:
        super().__init__()
        self.step_seconds = step_seconds

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        time.sleep(self.step_seconds)  # a real step takes time; the browser must see it run
        loss = self.step(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.log("val_loss", loss)
        return {"x": loss}


def main(run_id: str, epochs: int, step_seconds: float) -> None:
    """Train ``epochs`` epochs of 8 steps each."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(
            max_epochs=epochs,
            limit_train_batches=8,
            limit_val_batches=2,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=root,
            callbacks=[AFSNotify(model_name="tiny-net", run_id=run_id, monitor="val_loss")],
        )
        trainer.fit(TinyNet(step_seconds))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
