"""A long outage loses nothing: transient failures are retried until the message's age limit.

Real network errors (a port nobody listens on), real 5xx answers from a loopback receiver and
a real outbox file; backoff steps are made small so that far more attempts than the old
eight-attempt limit (about three minutes with the defaults) fit in a second.
"""

from __future__ import annotations

import socket
from pathlib import Path

from helpers.hook import HookChannel

from afs_callbacks.delivery.outbox import DEAD, DELIVERED, PENDING
from afs_callbacks.testing import LoopbackReceiver, Reply

from .sender_kit import event, rig, wait_for

FAST = {"base": 0.005, "cap": 0.02}


def refused_url() -> str:
    """A loopback URL where the connection is refused (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/hook"


def test_refused_for_longer_than_the_old_attempt_limit_then_delivered(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    channel = HookChannel(refused_url(), timeout=1.0)
    with rig(tmp_path) as r:
        # max_attempts=8 was the old default that killed a message after ~3 minutes.
        r.add("hook", channel, max_attempts=8, **FAST)
        sent = event("Training completed: resnet")
        r.enqueue(sent)

        def attempts() -> int:
            return r.outbox.history()[0].deliveries[0].attempts

        wait_for(lambda: attempts() >= 25, what="25 refused attempts")
        [delivery] = r.outbox.history()[0].deliveries
        assert delivery.state in (PENDING, "sending")
        assert "ConnectionError" in (delivery.last_error or "")
        channel.url = receiver.url("/hook")  # the network is back
        wait_for(lambda: r.states("hook") == {sent.title: DELIVERED}, what="delivery")
    assert [request.json()["id"] for request in receiver.requests] == [sent.id]


def test_a_message_older_than_max_age_ends_dead_with_the_reason(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    receiver.default = Reply(503, "down for maintenance")
    with rig(tmp_path) as r:
        r.add("hook", HookChannel(receiver.url("/hook")), max_age=1.0, **FAST)
        r.enqueue(event("old news"))
        wait_for(lambda: r.states("hook") == {"old news": DEAD}, what="the message to expire")
        [delivery] = r.outbox.history()[0].deliveries
    assert delivery.attempts >= 2 and len(receiver.requests) == delivery.attempts
    assert (delivery.last_error or "").startswith("gave up after ")
    assert "HTTP 503: down for maintenance" in (delivery.last_error or "")


def test_the_next_run_flushes_what_is_still_within_its_age_but_not_the_dead(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    refused = refused_url()
    with rig(tmp_path) as first:
        first.add("hook", HookChannel(refused, timeout=1.0), **FAST)
        first.enqueue(event("kept through the outage"))
        wait_for(lambda: first.outbox.history()[0].deliveries[0].attempts >= 12, what="12 attempts")
    # A refused message (permanent) from the same run: dead, and not sent again.
    receiver.responder = lambda request: Reply(400, "invalid_payload") if b"refused" in request.body else None
    with rig(tmp_path) as second:
        second.add("hook", HookChannel(receiver.url("/hook")), start=False, base=1000.0, cap=1000.0)
        second.enqueue(event("refused by the service"))
        second.workers["hook"].start()
        wait_for(lambda: second.states("hook").get("refused by the service") == DEAD, what="the 400")
        second.flush(5)  # a plain flush, as `afs-notify flush` does
        assert second.states("hook") == {"kept through the outage": DELIVERED, "refused by the service": DEAD}
    assert sorted(request.json()["title"] for request in receiver.requests) == [
        "kept through the outage",
        "refused by the service",
    ]
