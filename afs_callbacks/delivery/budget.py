"""A channel's message budget: a burst, then a pace; what it holds back becomes one digest.

The storm guard collapses true repeats. A flood of *distinct* messages (a loop calling
``notify()`` with a new title each time, a sweep of fifty runs) is held by this budget
instead: each channel may send :attr:`BudgetPolicy.burst` messages at once, then one per
:attr:`BudgetPolicy.interval` seconds. Messages that wait for the budget are not sent one by
one when it refills: the outbox *folds* them into one digest
(:func:`~afs_callbacks.delivery.limits.fold_digest`, the same kind of digest the storm guard
makes of repeats) that names the first few titles and how many there were; each folded
message stays in the history. The end of a run, alerts and digests never wait for the
budget (see :mod:`afs_callbacks.delivery.priority`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetPolicy:
    """How many ordinary messages a channel sends: ``burst`` at once, then one per
    ``interval`` seconds. ``burst <= 0`` turns the budget off."""

    burst: int = 20
    interval: float = 10.0


class TokenBucket:
    """The budget's state for one channel (a token bucket; thread-safe).

    Args:
        policy: burst and pace.
        clock: monotonic time source (tests may pass a fake one).
    """

    def __init__(self, policy: BudgetPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._tokens = float(max(policy.burst, 0))
        self._stamp = clock()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the budget limits anything."""
        return self.policy.burst > 0

    def available(self) -> bool:
        """Whether one message may go out now."""
        return not self.enabled or self._refill() >= 1.0

    def take(self) -> None:
        """Spend one message (never below empty: exempt messages spend only what is there)."""
        if self.enabled:
            with self._lock:
                self._tokens = max(self._refilled() - 1.0, 0.0)
                self._stamp = self._clock()

    def wait_time(self) -> float:
        """Seconds until one message may go out (0 when one may now)."""
        if not self.enabled:
            return 0.0
        missing = 1.0 - self._refill()
        return 0.0 if missing <= 0 else missing * max(self.policy.interval, 0.0)

    def _refill(self) -> float:
        with self._lock:
            self._tokens = self._refilled()
            self._stamp = self._clock()
            return self._tokens

    def _refilled(self) -> float:
        interval = self.policy.interval
        gained = float("inf") if interval <= 0 else (self._clock() - self._stamp) / interval
        return min(self._tokens + gained, float(self.policy.burst))
