"""The end of a run comes first; stale progress is superseded, never sent after the end.

A paced loopback channel (1 msg/s like a Slack webhook, or faster where the test is about
order only), a real outbox file, and the order in which the receiver got the messages.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import ClassVar

from helpers.hook import HookChannel

from afs_callbacks.delivery.outbox import DELIVERED
from afs_callbacks.delivery.priority import SUPERSEDED, priority, priority_sql
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.testing import LoopbackReceiver

from .sender_kit import SlowHook, event, rig, titles, wait_for

EPOCH = EventType.EPOCH_COMPLETED


class BriskHook(HookChannel):
    """A hook paced at 0.1 s: slow enough that a queue forms, fast enough for a test."""

    name: ClassVar[str] = "brisk"
    min_interval: ClassVar[float] = 0.1


def test_training_completed_goes_next_and_no_epoch_of_its_run_follows(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    with rig(tmp_path) as r:
        r.add("slack", SlowHook(receiver.url("/hook")))
        r.enqueue(event("Epoch 1/40", EPOCH, run="r1"))
        wait_for(lambda: r.states("slack") == {"Epoch 1/40": DELIVERED}, what="the first epoch")
        # The channel now waits a second before its next message; the run races on.
        r.enqueue(*(event(f"Epoch {n}/40", EPOCH, run="r1") for n in range(2, 41)))
        r.enqueue(event("Training completed: resnet", EventType.TRAINING_COMPLETED, run="r1"))
        wait_for(lambda: len(receiver.requests) >= 2, what="the second message")
        time.sleep(1.2)  # one more pace step: room for an epoch that should not come
        states = r.states("slack")
    assert titles(receiver.requests) == ["Epoch 1/40", "Training completed: resnet"]
    # Nothing is lost from the history: every epoch is there, marked superseded.
    assert len(states) == 41
    assert [title for title, state in states.items() if state == SUPERSEDED] == [
        f"Epoch {n}/40" for n in range(40, 1, -1)
    ]


def test_terminal_then_urgent_then_ordinary_then_newest_progress(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    with rig(tmp_path) as r:
        r.add("brisk", BriskHook(receiver.url("/hook")))
        r.enqueue(event("warm-up"))
        wait_for(lambda: len(receiver.requests) == 1, what="the warm-up")
        r.enqueue(
            *(event(f"epoch {n} of run A", EPOCH, run="A") for n in range(1, 4)),
            *(event(f"note {n}") for n in range(1, 4)),
            event("NaN loss in run B", EventType.NAN_DETECTED, run="B", level=NotificationLevel.ERROR),
            event("Training failed: run C", EventType.TRAINING_FAILED, run="C"),
        )
        wait_for(lambda: len(receiver.requests) == 7, what="seven messages")
        time.sleep(0.3)
        states = r.states("brisk")
    assert titles(receiver.requests) == [
        "warm-up",
        "Training failed: run C",
        "NaN loss in run B",
        "note 1",
        "note 2",
        "note 3",
        "epoch 3 of run A",  # the run moved on: epochs 1 and 2 are stale
    ]
    assert states["epoch 1 of run A"] == states["epoch 2 of run A"] == SUPERSEDED


def test_progress_after_a_run_resumed_is_not_stale(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), start=False)
        r.enqueue(
            event("Training interrupted", EventType.TRAINING_INTERRUPTED, run="r1"),
            event("Epoch 5/10 (resumed)", EPOCH, run="r1"),  # created after the interruption
        )
        r.workers["hook"].start()
        wait_for(lambda: len(receiver.requests) == 2, what="both messages")
    assert titles(receiver.requests) == ["Training interrupted", "Epoch 5/10 (resumed)"]


def test_the_sql_ranking_is_the_python_ranking() -> None:
    conn = sqlite3.connect(":memory:")
    for kind in EventType:
        [(rank,)] = conn.execute(f"SELECT {priority_sql('?1')}", (kind.value,)).fetchall()
        assert rank == priority(kind), kind
    assert priority(EventType.TRAINING_COMPLETED) < priority(EventType.NAN_DETECTED)
    assert priority(EventType.NAN_DETECTED) < priority(EventType.CUSTOM) < priority(EPOCH)
