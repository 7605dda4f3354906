"""The manager API on a simulated training run: started, a cost alert, completed, an
evaluation, a custom "loss improved" message, and a second run that fails.

Runs in a couple of seconds with no account anywhere. The messages go to your channels when
the environment or ``.env`` configures one (``afs-notify status`` lists them), else to a
demo webhook this script runs on 127.0.0.1 (see ``examples/_demo.py``); it prints what it
sent and whether each message was delivered, and ``afs-notify history`` shows them again::

    python examples/notification_example.py

In your own code, ``NotificationManager.from_env()`` builds every channel your ``.env``
configures, as this script does; ``register_handler`` adds one explicitly.
"""

from __future__ import annotations

import sys

from _demo import notifications  # your channels from .env, or a local demo receiver

from afs_callbacks import EventType, NotificationEvent, NotificationLevel, NotificationManager


def simulate_training(manager: NotificationManager) -> list[NotificationEvent | None]:
    """A three-epoch run with the seed system's calls, then a run that crashes.

    Returns the events as the manager accepted them (each call returns its event).
    """
    model, run_id = "tiny-gpt", "example-run-1"
    epochs, batch_size, cost_per_epoch = 3, 4, 5.0
    sent = []

    print(f"[1/7] training started: {model}, {epochs} epochs")
    sent.append(manager.notify_training_started(model, run_id, epochs, batch_size))

    total_cost, loss = 0.0, 0.5
    for epoch in range(1, epochs + 1):
        loss *= 0.8
        total_cost += cost_per_epoch
        print(f"      epoch {epoch}/{epochs}: loss {loss:.4f}, cost ${total_cost:.2f}")
        if epoch == 2:
            print("[2/7] cost alert: passed $5.00")
            sent.append(manager.notify_cost_alert(total_cost, 5.0, model, run_id=run_id))

    print("[3/7] training completed")
    sent.append(
        manager.notify_training_completed(
            model,
            run_id,
            duration=epochs * 60.0,
            loss=loss,
            metrics={"accuracy": 0.9543, "perplexity": 1.234},
        )
    )

    print("[4/7] evaluation completed")
    sent.append(manager.notify_evaluation_completed(model, run_id, {"accuracy": 0.9543, "f1": 0.9201}))

    print("[5/7] a custom message: loss improved")
    sent.append(
        manager.notify(
            "Loss improved",
            f"Loss improved to {loss:.4f}",
            EventType.LOSS_IMPROVED,
            NotificationLevel.SUCCESS,
            model=model,
            run_id=run_id,
            metrics={"previous_loss": 0.4, "loss": loss},
        )
    )

    print("[6/7] a second run crashes")
    try:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
    except RuntimeError as error:
        sent.append(manager.notify_training_failed(model, "example-run-2", error))

    print("[7/7] a free-form message")
    sent.append(
        manager.notify("Example finished", "Every notification of the example was sent.", level="info")
    )
    return sent


def main() -> int:
    """Run the example; return 0 when every message was delivered."""
    with notifications() as manager:
        events = [event for event in simulate_training(manager) if event is not None]
        report = manager.flush(timeout=10)  # deliver now rather than at exit, to print the result
        outcome = "every pushed message was delivered" if report.ok else "some messages were not delivered"
        print(f"\nReported {len(events)} events; {outcome}.")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
