"""What the examples share: your own channels when you have some, a demo receiver when not.

Not part of the library, and nothing you need in your own code (there, ``AFSNotify()`` with
no arguments reads your channels from the environment / ``.env``). The examples use it so
that they run in seconds with no account, and still behave as your training will:

- With a channel configured (``SLACK_WEBHOOK_URL``, ``NTFY_TOPIC``, ... in the environment
  or ``./.env``; ``afs-notify status`` lists them), the messages go there.
- With none, they go to a webhook receiver this script runs on 127.0.0.1, and the script
  prints what it received: what Slack, Discord or your phone would have got.

Either way the events are kept in your normal history (``AFS_STATE_DIR``, default
``~/.local/state/afs-callbacks``), so ``afs-notify history`` shows them afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

from afs_callbacks import NotificationEvent, NotificationManager, WebhookNotifier
from afs_callbacks.delivery.outbox import HistoryEntry
from afs_callbacks.testing import LoopbackReceiver

#: The name the demo receiver's channel has in ``afs-notify history``.
DEMO_CHANNEL = "demo-webhook"


@contextlib.contextmanager
def notifications() -> Iterator[NotificationManager]:
    """A manager sending to your channels, or to a local demo receiver when you have none.

    On leaving the block it delivers what is pending (up to 30 s), closes the manager and
    prints what the runs reported and where each message went.
    """
    started = time.time()
    manager = NotificationManager.from_env()  # the environment over ./.env, as AFSNotify() does
    if not manager.settings.enabled:
        print("AFS_ENABLED=false: the runs report nothing (unset it to see the demo).")
        yield manager
        manager.close()
        return
    yours = sorted(status.name for status in manager.status() if status.configured)
    if yours:
        print(f"Sending to your channels: {', '.join(yours)} (afs-notify status shows them).\n")
        with _closing(manager, started) as entries:
            yield manager
        print(f"\nThe runs reported {len(entries)} events; where each went:")
        for entry in reversed(entries):
            places = ", ".join(f"{d.channel}: {d.state}" for d in entry.deliveries) or "history only"
            print(f"  {entry.event.event_type.value:<22} {entry.event.title}  [{places}]")
    else:
        with LoopbackReceiver() as receiver:
            print(
                "No channel is configured yet (afs-notify status says why): the messages go to a\n"
                f"demo webhook this script runs at {receiver.url('/hook')}.\n"
            )
            manager.register_handler(DEMO_CHANNEL, WebhookNotifier(receiver.url("/hook")))
            with _closing(manager, started) as entries:
                yield manager
            print(f"\nThe demo webhook received {len(receiver.requests)} messages, as a channel shows them:")
            for request in receiver.requests:
                _print_event(NotificationEvent.from_dict(request.json()))
        print(f"\nThe runs reported {len(entries)} events in all.")
        _print_kept(entries)
        print("To get the messages on your phone or in Slack: cp .env.example .env, set one channel.")
    print("See every event and where it went: afs-notify history")


@contextlib.contextmanager
def _closing(manager: NotificationManager, started: float) -> Iterator[list[HistoryEntry]]:
    """Deliver what is pending, then fill the yielded list with this script's events."""
    entries: list[HistoryEntry] = []
    try:
        yield entries
    finally:
        manager.flush(timeout=30)
        entries.extend(_since(manager, started))
        manager.close()


def _since(manager: NotificationManager, started: float) -> list[HistoryEntry]:
    """This script's events in the history, newest first (the history may hold older runs)."""
    try:
        entries = manager.outbox.history(limit=500)
    except Exception:  # the history is a convenience here; the demo itself has run
        return []
    return [entry for entry in entries if entry.event.timestamp.timestamp() >= started - 1]


def _print_kept(entries: list[HistoryEntry]) -> None:
    """Name the events kept in the history without a push (the run's progress, by default)."""
    kept = Counter(entry.event.event_type.value for entry in entries if not entry.deliveries)
    if kept:
        counts = ", ".join(f"{kind} x{count}" for kind, count in sorted(kept.items()))
        print(f"Kept in the history, the summary and the live card, not pushed: {counts}")
        print("(AFS_VERBOSITY=verbose pushes them too.)")


def _print_event(event: NotificationEvent) -> None:
    print(f"  {event.event_type.value:<22} {event.title}")
    for line in event.message.splitlines():
        print(f"  {'':<22}   {line}")
