"""An idle sender costs nothing: it wakes at most once a second and then reads no table.

The outbox is a real SQLite file; a counting subclass records which outbox calls the idle
worker makes, and a real second process writes rows that the worker must still notice.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from helpers.hook import HookChannel

from afs_callbacks.delivery.outbox import DELIVERED, Claim, Outbox
from afs_callbacks.delivery.sender import IDLE_POLL_SECONDS
from afs_callbacks.testing import LoopbackReceiver

from .sender_kit import rig, titles, wait_for


class CountingOutbox(Outbox):
    """An outbox that counts the calls a sender makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    def claim(self, *args: Any, **kwargs: Any) -> list[Claim]:
        self.calls["claim"] += 1
        return super().claim(*args, **kwargs)

    def next_due(self, channel: str, *, stories: bool = True) -> float | None:
        self.calls["next_due"] += 1
        return super().next_due(channel, stories=stories)

    def supersede_stale(self, channel: str) -> int:
        self.calls["supersede_stale"] += 1
        return super().supersede_stale(channel)

    def data_version(self) -> int:
        self.calls["data_version"] += 1
        return super().data_version()


WRITER = """
import sys
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import NotificationEvent
outbox = Outbox(sys.argv[1])
outbox.enqueue(NotificationEvent("custom", "info", "from another process"), ["hook"])
outbox.close()
"""


def test_an_idle_sender_polls_once_a_second_and_reads_no_table(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    with rig(tmp_path, CountingOutbox) as r:
        r.add("hook", HookChannel(receiver.url("/hook")))
        outbox = r.outbox
        assert isinstance(outbox, CountingOutbox)
        # Its first look reads the queue (claim, then next_due for the sleep); the first
        # data_version after that is its first idle poll: from then on it is idle.
        wait_for(lambda: outbox.calls["next_due"] >= 1, what="the first look")
        outbox.calls.clear()
        wait_for(lambda: outbox.calls["data_version"] >= 1, what="the first idle poll")
        outbox.calls.clear()
        began = time.monotonic()
        wait_for(lambda: outbox.calls["data_version"] >= 2, timeout=15, what="two more idle polls")
        two_polls = time.monotonic() - began
        calls = dict(outbox.calls)
        # Another process's row is noticed without a wake-up, by the next poll.
        subprocess.run(
            [sys.executable, "-c", WRITER, str(tmp_path / "outbox.sqlite3")], check=True, timeout=60
        )
        written = time.monotonic()
        wait_for(lambda: len(receiver.requests) == 1, timeout=10, what="the other process's row")
        noticed = time.monotonic() - written
        # Marked once the answer is in, a moment after the receiver saw the request.
        wait_for(lambda: r.states("hook") == {"from another process": DELIVERED}, what="the delivery")
    # Idle, it read no table, and polled no more than once a second (a loaded machine
    # only makes the polls further apart).
    assert calls.get("claim", 0) == calls.get("next_due", 0) == calls.get("supersede_stale", 0) == 0
    assert two_polls >= 1.5  # two intervals of IDLE_POLL_SECONDS, less the few ms of our own look
    # Seen by a poll (IDLE_POLL_SECONDS apart), not by a wake-up nobody sent; the margin is
    # for a loaded machine, the bound still fails if polling stopped.
    assert noticed < IDLE_POLL_SECONDS + 4.0
    assert titles(receiver.requests) == ["from another process"]
