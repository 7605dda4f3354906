"""PyTorch Lightning + afs-callbacks: two tiny trainings on CPU, and what they sent.

    python examples/lightning_example.py

Runs in seconds with no account. The first run trains normally ("✅ Training completed").
The second one's loss turns NaN at step 5; the loss is read every ``log_every_n_steps``
(4) steps, so ``stop_on_nan=True`` stops it at step 8, and both messages say where it went
wrong and where it was seen: "loss became NaN at step 5 (epoch 1), seen at step 8", then
"🛑 Training stopped on a problem (NaN loss at step 5)". The messages go to your channels when
the environment or ``.env`` configures one, else to a demo webhook on 127.0.0.1 (see
``examples/_demo.py``); either way ``afs-notify history`` shows them afterwards.

In your own code you need one line, and your channels in the environment or ``.env``
(``SLACK_WEBHOOK_URL=...``, ``DISCORD_WEBHOOK_URL=...``; see ``afs-notify status``)::

    trainer = Trainer(callbacks=[AFSNotify()])
"""

from __future__ import annotations

import logging
import warnings

import torch
from _demo import notifications  # your channels from .env, or a local demo receiver
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from afs_callbacks.integrations.lightning import AFSNotify


class TinyRegressor(LightningModule):
    """Learns y = 3x + 1 from noisy points; optionally its loss turns NaN at a step."""

    def __init__(self, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.nan_at_step = nan_at_step

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        # global_step counts the steps finished: this batch makes step global_step + 1.
        if self.nan_at_step is not None and self.global_step + 1 >= self.nan_at_step:
            loss = loss * float("nan")  # what a diverging run looks like
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss  # AFSNotify reads it on the device, without a sync per step

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(128, 1, generator=generator)
    y = 3 * x + 1 + 0.05 * torch.randn(128, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def train(model: TinyRegressor, notify: AFSNotify) -> None:
    trainer = Trainer(
        max_epochs=5,
        callbacks=[notify],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=4,  # also how often the NaN flag is read (one sync per 4 steps)
    )
    trainer.fit(model, loader(0), loader(1))


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")  # Lightning's hints about tiny data loaders
    torch.manual_seed(0)
    with notifications() as manager:
        # In your code: AFSNotify() takes its channels from the environment / .env.
        train(TinyRegressor(), AFSNotify(manager, model_name="tiny-regressor"))
        train(
            TinyRegressor(nan_at_step=5),
            AFSNotify(manager, model_name="tiny-regressor-nan", stop_on_nan=True),
        )


if __name__ == "__main__":
    main()
