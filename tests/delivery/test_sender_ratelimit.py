"""A 429 pauses the whole channel, in a flush too; a flush retries what fits its deadline.

Real HTTP: a loopback receiver answers ``429`` with ``Retry-After`` as Slack and Discord do,
and every request that reached it is counted with its arrival time.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from helpers.hook import HookChannel, responder_from

from afs_callbacks.delivery.outbox import DELIVERED, PENDING
from afs_callbacks.testing import LoopbackReceiver, Reply

from .sender_kit import event, rig

# Backoff so long that only the server's hint or a flush can bring a second attempt.
NEVER = {"base": 1000.0, "cap": 1000.0}


def too_many(seconds: str) -> Reply:
    return Reply(429, {"message": "You are being rate limited."}, {"Retry-After": seconds})


def test_a_429_during_flush_pauses_the_channel_and_the_flush_waits_it_out(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    arrivals: list[float] = []
    receiver.responder = responder_from([too_many("1"), too_many("1")], Reply(200), arrivals)
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), start=False, **NEVER)
        r.enqueue(*(event(f"message {index}") for index in range(10)))
        r.workers["hook"].start()
        took = r.flush(20)
        assert set(r.states("hook").values()) == {DELIVERED}
    # One request per pause window, not ten in a few milliseconds: 429, wait, 429, wait, then
    # the ten messages (the first one again included).
    assert len(arrivals) == 12
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert gaps[0] >= 0.95 and gaps[1] >= 0.95
    assert 1.9 <= took < 15


def test_flush_retries_a_message_whose_next_attempt_fits_the_deadline(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    receiver.responder = responder_from([too_many("1")], Reply(200))
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), **NEVER)
        r.enqueue(event("the run ended"))
        took = r.flush(30)
        [delivery] = r.outbox.history()[0].deliveries
    assert (delivery.state, delivery.attempts) == (DELIVERED, 2)
    assert len(receiver.requests) == 2
    assert 0.9 <= took < 10  # it waited for the hint, not for the whole 30 s


def test_flush_stops_early_when_the_pause_outlasts_its_deadline(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    receiver.responder = responder_from([], too_many("30"))
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), **NEVER)
        r.enqueue(*(event(f"message {index}") for index in range(5)))
        took = r.flush(3)
        assert set(r.states("hook").values()) == {PENDING}
    assert len(receiver.requests) == 1  # nothing more was sent into the pause
    assert took < 2.5  # nothing could happen before the deadline: no point waiting for it
