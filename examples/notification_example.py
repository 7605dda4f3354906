"""The manager API on a simulated training run: started, a cost alert, completed, an
evaluation, a custom "loss improved" message, and a second run that fails.

Runs in a couple of seconds with no account anywhere. It sends to:

- your desktop, when there is a desktop session to show notifications;
- otherwise a generic webhook pointed at a small HTTP server this script starts on
  127.0.0.1 (what a Slack or Discord channel does, minus the account);
- or the console (one line per event on stderr) with ``--channel console``.

and prints what it sent and whether each message was delivered::

    python examples/notification_example.py                 # desktop if any, else webhook
    python examples/notification_example.py --channel console

In your own code, ``NotificationManager.from_env()`` builds every channel your ``.env``
configures instead of the explicit ``register_handler`` below.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from afs_callbacks import (
    EventType,
    NotificationEvent,
    NotificationHandler,
    NotificationLevel,
    NotificationManager,
)
from afs_callbacks.testing import LoopbackReceiver


@contextlib.contextmanager
def a_channel(choice: str) -> Iterator[tuple[str, NotificationHandler, str]]:
    """Yield ``(name, handler, where it goes)`` for ``choice`` (auto, desktop, webhook, console)."""
    if choice in ("auto", "desktop"):
        desktop = _desktop()
        if desktop is not None:
            yield "desktop", desktop, "your desktop's notification area"
            return
        if choice == "desktop":
            raise SystemExit("no desktop session here to show notifications; try --channel webhook")
    if choice == "console":
        from afs_callbacks import ConsoleNotifier

        yield "console", ConsoleNotifier(), "this terminal (stderr)"
        return
    from afs_callbacks import WebhookNotifier

    with LoopbackReceiver() as receiver:
        yield (
            "webhook",
            WebhookNotifier(receiver.url("/hook")),
            f"{receiver.url('/hook')} (a local test server)",
        )
        print(f"The local server received {len(receiver.requests)} POST requests.")


def _desktop() -> NotificationHandler | None:
    try:
        from afs_callbacks import DesktopNotifier

        desktop = DesktopNotifier()
        return desktop if desktop.is_configured() else None
    except Exception:  # no desktop support on this machine: fall back quietly
        return None


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


def main(argv: list[str] | None = None) -> int:
    """Run the example; return 0 when every message was delivered."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channel", choices=["auto", "desktop", "webhook", "console"], default="auto")
    args = parser.parse_args(argv)

    with a_channel(args.channel) as (name, handler, where):
        print(f"Sending to the {name} channel: {where}\n")
        manager = NotificationManager()
        manager.register_handler(name, handler)
        events = [event for event in simulate_training(manager) if event is not None]
        report = manager.flush(timeout=10)  # deliver now rather than at exit, to print the result

        print(f"\nSent {len(events)} notifications:")
        for event in events:
            [entry] = manager.outbox.history(event_id=event.id)
            states = ", ".join(f"{d.channel}: {d.state}" for d in entry.deliveries)
            print(f"  {event.level.value:<8} {event.event_type.value:<21} {event.title}  [{states}]")
        manager.close()
    print("\nSee them again with: afs-notify history")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
