"""A hand-written PyTorch loop + afs-callbacks: two tiny trainings on CPU, and what they sent.

    python examples/loop_example.py

Runs in seconds with no account. ``RunNotifier`` wraps any loop you wrote (plain PyTorch,
Lightning Fabric, accelerate): the first run trains normally; the second one's loss turns
NaN at step 6 and ``stop_on_nan=True`` makes ``run.step()`` ask the loop to stop. The
messages go to your channels when the environment or ``.env`` configures one, else to a
demo webhook on 127.0.0.1 (see ``examples/_demo.py``); ``afs-notify history`` shows them.

In your own code, your channels in the environment or ``.env``::

    with RunNotifier(model_name="resnet", total_steps=steps) as run:
        for batch in loader:
            if run.step(loss=train_step(batch)):
                break
"""

from __future__ import annotations

import torch
from _demo import notifications  # your channels from .env, or a local demo receiver
from torch import nn

from afs_callbacks import NotificationManager
from afs_callbacks.integrations.loop import RunNotifier

EPOCHS, STEPS_PER_EPOCH = 5, 8


def train(manager: NotificationManager, name: str, nan_at_step: int | None = None) -> None:
    """Learn y = 3x + 1 from noisy points with SGD; optionally the loss turns NaN."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(128, 1)
    y = 3 * x + 1 + 0.05 * torch.randn(128, 1)
    notifier = RunNotifier(
        manager,  # in your code: omitted, the channels come from the environment / .env
        model_name=name,
        total_steps=EPOCHS * STEPS_PER_EPOCH,
        epochs=EPOCHS,
        batch_size=16,
        stop_on_nan=True,
        nan_check_every=4,  # one read of the on-device NaN flag per 4 steps
    )
    with notifier as run:
        for _ in range(EPOCHS):
            for batch in range(STEPS_PER_EPOCH):
                rows = slice(batch * 16, batch * 16 + 16)
                loss = nn.functional.mse_loss(model(x[rows]), y[rows])
                if nan_at_step is not None and run.tracker.steps + 1 >= nan_at_step:
                    loss = loss * float("nan")  # what a diverging run looks like
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if run.step(loss=loss.detach()):  # the tensor stays on its device
                    return
            with torch.no_grad():
                run.epoch({"val_loss": nn.functional.mse_loss(model(x), y)})


def main() -> None:
    with notifications() as manager:
        train(manager, "tiny-loop")
        train(manager, "tiny-loop-nan", nan_at_step=6)


if __name__ == "__main__":
    main()
