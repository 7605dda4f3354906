"""A flood of distinct messages: a burst goes out, the rest becomes one digest per channel.

The budget (a token bucket: a burst, then a pace) is unit-tested with a fake clock; the
folding runs through real workers, a real outbox file and a loopback receiver.
"""

from __future__ import annotations

import time
from pathlib import Path

from helpers.hook import HookChannel, responder_from

from afs_callbacks.delivery.budget import BudgetPolicy, TokenBucket
from afs_callbacks.delivery.outbox import DELIVERED
from afs_callbacks.delivery.priority import FOLDED
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.testing import LoopbackReceiver, Reply

from .sender_kit import event, rig, titles, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_a_pace() -> None:
    clock = FakeClock()
    bucket = TokenBucket(BudgetPolicy(burst=3, interval=10.0), clock)
    for _ in range(3):
        assert bucket.available()
        bucket.take()
    assert not bucket.available() and bucket.wait_time() == 10.0
    clock.now += 4.0
    assert not bucket.available() and abs(bucket.wait_time() - 6.0) < 1e-9
    clock.now += 6.0
    assert bucket.available()
    bucket.take()
    bucket.take()  # an exempt message spends only what is there: never below empty
    clock.now += 10.0
    assert bucket.available()
    clock.now += 1000.0
    for _ in range(3):
        bucket.take()
    assert not bucket.available()  # refilled to the burst, not beyond


def test_zero_burst_means_no_budget() -> None:
    bucket = TokenBucket(BudgetPolicy(burst=0, interval=10.0), FakeClock())
    for _ in range(100):
        bucket.take()
    assert bucket.available() and bucket.wait_time() == 0.0


def test_a_flood_of_distinct_messages_becomes_a_burst_and_one_digest(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), start=False, budget=BudgetPolicy(3, 0.5))
        r.enqueue(*(event(f"note {n}") for n in range(1, 21)))
        r.enqueue(event("NaN loss", EventType.NAN_DETECTED, run="r1", level=NotificationLevel.ERROR))
        r.workers["hook"].start()
        wait_for(lambda: len(receiver.requests) == 4, what="the burst and the digest")
        time.sleep(0.8)  # another budget step: nothing more may come
        states = r.states("hook")
        folded = [d for entry in r.outbox.history(state=FOLDED, limit=100) for d in entry.deliveries]
    sent = titles(receiver.requests)
    assert sent == ["NaN loss", "note 1", "note 2", "18 messages held back (too many at once)"]
    digest = receiver.requests[3].json()["event"]
    assert digest["event_type"] == "digest" and digest["control"]["digest_count"] == 18
    assert digest["control"]["collapse"] is False
    assert digest["message"].splitlines()[:6] == [
        "• note 3",
        "• note 4",
        "• note 5",
        "• note 6",
        "• note 7",
        "… and 13 more.",
    ]
    assert [title for title, state in states.items() if state == FOLDED] == [
        f"note {n}" for n in range(20, 2, -1)
    ]
    assert states[sent[3]] == DELIVERED
    assert {d.last_error for d in folded} == {f"folded into digest {digest['id']}"}


def test_a_flush_over_budget_folds_at_once_instead_of_waiting(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), start=False, budget=BudgetPolicy(2, 60.0))
        r.enqueue(*(event(f"note {n}") for n in range(1, 11)))
        r.workers["hook"].start()
        took = r.flush(10)
        states = r.states("hook")
    assert titles(receiver.requests) == ["note 1", "note 2", "8 messages held back (too many at once)"]
    assert took < 5  # the budget's next step is a minute away; the flush did not wait for it
    assert sorted(states.values()).count(FOLDED) == 8


def test_one_message_that_waited_for_the_budget_goes_out_as_itself(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    arrivals: list[float] = []
    receiver.responder = responder_from([], Reply(200), arrivals)
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), start=False, budget=BudgetPolicy(1, 0.3))
        r.enqueue(event("first"), event("second"))
        r.workers["hook"].start()
        wait_for(lambda: len(receiver.requests) == 2, what="both messages")
    assert titles(receiver.requests) == ["first", "second"]  # not a digest of one
    assert arrivals[1] - arrivals[0] >= 0.25  # the second waited for the budget's next step
