"""A tiny real training (a linear model, SGD, a hand-written loop under RunNotifier) for the
fleet tests: its state goes to the store and, with AFS_PROMETHEUS_TEXTFILE_DIR, to node
exporter's textfile folder, exactly as a user's job would.

Run as ``python train_fleet.py RUN_ID [--steps N] [--step-seconds S] [--stall-at N
--stall-seconds S] [--nan-at N]``. ``--stall-at`` sleeps inside one step (a hung data
loader); ``--nan-at`` makes the loss NaN from that step on, with ``stop_on_nan``. With
``FLEET_OK_URL``/``FLEET_DEAD_URL``/``FLEET_FAILING_URL`` set, webhooks to those URLs join the
environment's channels (delivered, refused with 400, answered 503).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.integrations.loop import RunNotifier
from afs_callbacks.manager import NotificationManager


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_id")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--stall-at", type=int)
    parser.add_argument("--stall-seconds", type=float, default=0.0)
    parser.add_argument("--nan-at", type=int)
    args = parser.parse_args()

    manager = NotificationManager.from_env()
    for name, variable in (
        ("ok", "FLEET_OK_URL"),
        ("dead", "FLEET_DEAD_URL"),
        ("failing", "FLEET_FAILING_URL"),
    ):
        if os.environ.get(variable):
            manager.register_handler(f"webhook-{name}", WebhookNotifier(os.environ[variable]))

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs, targets = torch.randn(64, 4), torch.randn(64, 1)
    per_epoch = args.steps // args.epochs
    with RunNotifier(
        manager,
        model_name="tiny-linear",
        run_id=args.run_id,
        total_steps=args.steps,
        epochs=args.epochs,
        batch_size=16,
        monitor="val_loss",
        stop_on_nan=args.nan_at is not None,
        nan_check_every=1,
        chart=False,
        monitors=False,
    ) as run:
        step = 0
        for _epoch in range(args.epochs):
            for _ in range(per_epoch):
                step += 1
                batch = torch.randint(0, 64, (16,))
                loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
                if args.nan_at is not None and step >= args.nan_at:
                    loss = loss * float("nan")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                time.sleep(args.step_seconds)
                if step == args.stall_at:
                    time.sleep(args.stall_seconds)
                if run.step(loss=loss.detach()):
                    return
            with torch.no_grad():
                val_loss = torch.nn.functional.mse_loss(model(inputs), targets).item()
            run.epoch({"val_loss": val_loss, "train_loss": loss.item()})


if __name__ == "__main__":
    main()
