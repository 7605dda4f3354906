"""Hugging Face Trainer + afs-callbacks: two tiny trainings on CPU, and what they sent.

    python examples/transformers_example.py

Runs in seconds with no account and no download. The first run trains a small regression
with an evaluation per epoch; in the second, the loss turns NaN at step 5. The Trainer hides
a NaN loss from its logs (``logging_nan_inf_filter``), yet the callback sees it and
``stop_on_nan=True`` stops the run. The messages go to your channels when the environment or
``.env`` configures one, else to a demo webhook on 127.0.0.1 (see ``examples/_demo.py``);
either way ``afs-notify history`` shows them afterwards.

In your own code you need one line, and your channels in the environment or ``.env``
(``SLACK_WEBHOOK_URL=...``, ``DISCORD_WEBHOOK_URL=...``; see ``afs-notify status``)::

    trainer = Trainer(..., callbacks=[AFSNotify()])
    with afs_callbacks.watch():     # also report a crash, Ctrl-C or SIGTERM of train()
        trainer.train()
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this demo needs the Hub

import torch
from _demo import notifications  # your channels from .env, or a local demo receiver
from torch import nn
from transformers import PrinterCallback, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

import afs_callbacks
from afs_callbacks import NotificationManager
from afs_callbacks.integrations.transformers import AFSNotify


class TinyRegressor(nn.Module):
    """Learns y = 3x + 1; optionally its loss turns NaN from a training step on."""

    def __init__(self, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.nan_at_step = nan_at_step
        self.steps = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = self.layer(x)
        loss = nn.functional.mse_loss(prediction, labels)
        if self.training:
            self.steps += 1
            if self.nan_at_step is not None and self.steps >= self.nan_at_step:
                loss = loss * float("nan")  # what a diverging run looks like
        return loss, prediction  # the Trainer takes the first element as the loss


def points(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(count, 1, generator=generator)
    y = 3 * x + 1 + 0.05 * torch.randn(count, 1, generator=generator)
    return [{"x": x[i], "labels": y[i]} for i in range(count)]


def train(manager: NotificationManager, model: TinyRegressor, output_dir: str, **notify: object) -> None:
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=4,
            per_device_train_batch_size=16,
            learning_rate=0.1,
            eval_strategy="epoch",
            logging_steps=2,  # also when the callback looks at the loss: no extra device reads
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=points(128, seed=0),
        eval_dataset=points(32, seed=1),
        callbacks=[AFSNotify(manager, **notify)],  # type: ignore[arg-type]
    )
    trainer.remove_callback(PrinterCallback)  # keep the demo's output to what was sent
    with afs_callbacks.watch():  # a crash in train() would be reported, then raised
        trainer.train()


def main() -> None:
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work, notifications() as manager:
        # The Trainer's output folders are throwaway; the history is your normal one.
        train(manager, TinyRegressor(), os.path.join(work, "run"), model_name="tiny-regressor")
        train(
            manager,
            TinyRegressor(nan_at_step=5),
            os.path.join(work, "nan-run"),
            model_name="tiny-regressor-nan",
            stop_on_nan=True,
        )


if __name__ == "__main__":
    main()
