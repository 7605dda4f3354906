"""``NotificationManager.flush()`` through the lifecycle: what a flush right after
``notify()`` includes, and a rate-limit pause longer than the flush's deadline.

Real HTTP: a loopback receiver answers ``429`` with ``Retry-After`` as Slack and Discord do.
"""

from __future__ import annotations

import time
from pathlib import Path

from helpers.hook import HookChannel, manager_for, responder_from

from afs_callbacks.testing import LoopbackReceiver, Reply

# Backoff so long that only the server's hint or a flush can bring a second attempt.
NEVER = {"retry_base": 1000.0, "retry_cap": 1000.0}


def test_a_flush_right_after_notify_delivers_that_event(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    manager = manager_for(tmp_path, {"hook": HookChannel(receiver.url("/hook"))})
    try:
        for round_ in range(10):
            event = manager.notify(f"message {round_}")
            assert event is not None
            report = manager.flush(10)
            assert (report.delivered, report.pending) == (1, 0), round_
            assert receiver.requests[-1].json()["id"] == event.id
    finally:
        manager.close(timeout=1)


def test_a_pause_longer_than_the_deadline_ends_the_flush_early(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    receiver.responder = responder_from([], Reply(429, {"message": "slow down"}, {"Retry-After": "30"}))
    manager = manager_for(tmp_path, {"hook": HookChannel(receiver.url("/hook"))}, **NEVER)
    try:
        for index in range(3):
            manager.notify(f"message {index}")
        started = time.monotonic()
        report = manager.flush(4)
        took = time.monotonic() - started
    finally:
        manager.close(timeout=0)
    assert (report.delivered, report.pending) == (0, 3)
    assert len(receiver.requests) == 1  # nothing more was sent into the pause
    assert took < 3.5  # nothing could happen before the deadline: no point waiting for it
