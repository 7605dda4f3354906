"""What the sender tests share: a real outbox file with real channel workers around it.

The tests drive :class:`ChannelWorker` and :func:`flush_workers` directly (the manager is
wired around them elsewhere), so each test sets exactly the policy, budget and pace it is
about, and counts what reached a real loopback receiver.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from helpers.hook import HookChannel

from afs_callbacks.delivery.budget import BudgetPolicy
from afs_callbacks.delivery.flushing import flush_workers
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.delivery.sender import ChannelWorker, RetryPolicy
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.testing import ReceivedRequest

#: No budget at all (tests about retries and pauses, not floods).
UNLIMITED = BudgetPolicy(burst=0)


class SlowHook(HookChannel):
    """A hook whose service allows one message per second (Slack's webhook pace)."""

    name: ClassVar[str] = "slow"
    min_interval: ClassVar[float] = 1.0


def event(
    title: str,
    kind: EventType = EventType.CUSTOM,
    *,
    run: str | None = None,
    level: NotificationLevel = NotificationLevel.INFO,
    **context: Any,
) -> NotificationEvent:
    """An event of ``kind`` for ``run`` titled ``title``."""
    if run is not None:
        context["run_id"] = run
    return NotificationEvent(kind, level, title, "", context)


def titles(requests: Sequence[ReceivedRequest]) -> list[str]:
    """The titles posted to a receiver, in arrival order."""
    return [str(request.json()["title"]) for request in requests]


class Rig:
    """An outbox file and workers, one per channel; :meth:`flush` is the manager's flush."""

    def __init__(self, path: Path, outbox: type[Outbox] = Outbox) -> None:
        self.outbox = outbox(path)
        self.progress = threading.Condition()
        self.workers: dict[str, ChannelWorker] = {}

    def add(
        self,
        name: str,
        channel: HookChannel,
        *,
        budget: BudgetPolicy = UNLIMITED,
        start: bool = True,
        **policy: Any,
    ) -> ChannelWorker:
        """A worker for ``channel`` under ``name`` (started unless ``start`` is False)."""
        worker = ChannelWorker(name, channel, self.outbox, RetryPolicy(**policy), self._notify, budget=budget)
        self.workers[name] = worker
        if start:
            worker.start()
        return worker

    def enqueue(self, *events: NotificationEvent) -> None:
        """Store events for every worker's channel and wake the workers."""
        # One transaction, as the manager's writer batches: a worker sees all or none.
        self.outbox.write([(item, list(self.workers)) for item in events])
        for worker in self.workers.values():
            worker.wake()

    def flush(self, timeout: float | None) -> float:
        """Flush every worker as the manager does; returns the seconds it took."""
        started = time.monotonic()
        flush_workers(list(self.workers.values()), timeout, self.progress)
        return time.monotonic() - started

    def states(self, channel: str) -> dict[str, str]:
        """Event title -> delivery state on ``channel``."""
        return {
            entry.event.title: delivery.state
            for entry in self.outbox.history(limit=10_000)
            for delivery in entry.deliveries
            if delivery.channel == channel
        }

    def _notify(self) -> None:
        with self.progress:
            self.progress.notify_all()

    def close(self) -> None:
        """Stop the workers and close the file."""
        for worker in self.workers.values():
            worker.stop(timeout=2.0)
        self.outbox.close()


@contextmanager
def rig(tmp_path: Path, outbox: type[Outbox] = Outbox) -> Iterator[Rig]:
    """A :class:`Rig` on ``tmp_path/outbox.sqlite3``, closed afterwards."""
    made = Rig(tmp_path / "outbox.sqlite3", outbox)
    try:
        yield made
    finally:
        made.close()


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)
