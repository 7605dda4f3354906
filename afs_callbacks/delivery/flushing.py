"""Flushing: deliver what is pending now, within a deadline, without breaking a channel's rules.

A flush forces one attempt of every pending message (ignoring backoff), then keeps waiting
for a message whose next attempt fits inside the deadline: a ``429 Retry-After: 1`` during
``flush(30)`` is retried a second later, not given up on. It never sends into a channel's
rate-limit pause, and it stops early when nothing left can happen before the deadline
(a pause longer than the time left, a backoff past it). Two flushes may drive the same
senders at once (a crash report's and the exit's): the first to end leaves the other's
forcing in place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from afs_callbacks.delivery.sender import ChannelWorker

# How often the waiting caller re-checks when no progress is reported (seconds).
_CHECK_EVERY = 0.1


def flush_workers(
    workers: Sequence[ChannelWorker],
    timeout: float | None,
    progress: threading.Condition,
) -> None:
    """Drive ``workers`` through a flush and return when it is done or ``timeout`` passed.

    Args:
        workers: the channels' senders (started).
        timeout: seconds the flush may take; None: each pending message is tried once and
            retries are not waited for.
        progress: notified by the workers after each recorded outcome (``on_progress``).
    """
    started = time.time()
    deadline = None if timeout is None else started + timeout
    for worker in workers:
        worker.begin_flush(started)
    try:
        while any(worker.flush_pending(deadline) for worker in workers):
            remaining = _CHECK_EVERY if deadline is None else min(deadline - time.time(), _CHECK_EVERY)
            if remaining <= 0:
                break
            with progress:
                progress.wait(remaining)
    finally:
        for worker in workers:
            worker.end_flush(started)
