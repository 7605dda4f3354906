"""Retrying: how long a failed delivery keeps being retried, and what a handler's answer means.

A transient failure (network error, timeout, 408/429/5xx, a raising handler) is retried
with capped full-jitter backoff until the message is ``max_age`` old; only a permanent
answer or old age ends it. Handlers of the old manager API answer ``None`` or a bool.
"""

from __future__ import annotations

from dataclasses import dataclass

from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.delivery.outbox import Claim
from afs_callbacks.redaction import redact


@dataclass(frozen=True)
class RetryPolicy:
    """How failed deliveries are retried (see :class:`~afs_callbacks.config.Settings`).

    A transient failure (network error, timeout, 408/429/5xx, a raising handler) is retried
    with full-jitter backoff from ``base`` up to ``cap`` seconds for as long as the message
    is younger than ``max_age`` seconds; only a permanent answer or old age ends it. Age
    is judged when an attempt fails, so a message that waited while no process ran (or
    one re-queued with ``--retry-dead``) still gets its attempt.
    ``max_attempts`` is obsolete: kept so old settings still read, it ends nothing.
    """

    max_attempts: int = 8
    base: float = 2.0
    cap: float = 300.0
    max_retry_after: float = 900.0
    send_timeout: float = 10.0
    max_age: float = 86400.0

    @property
    def lease_seconds(self) -> float:
        """How long a claim is held: long enough for a slow send, short enough to recover."""
        return 3 * self.send_timeout + 30.0


def call_handler(handler: NotificationHandler, claim: Claim) -> DeliveryResult:
    """Run ``handler.send`` and turn whatever happens into a :class:`DeliveryResult`.

    Handlers written for the old manager API return ``None`` (nothing) or a bool: ``None``
    and ``True`` count as delivered, ``False`` as a failure to retry; any other object
    counts by its truth value (a ``requests.Response`` is true when its status is OK). A
    raising handler is a bug or an unforeseen network error: retry it, with the exception
    text redacted (``requests`` puts the full URL, token included, in it).
    """
    try:
        result = handler.send(claim.event)
    except Exception as error:
        return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
    if isinstance(result, DeliveryResult):
        return result
    if result is None or result is True:
        return DeliveryResult.delivered()
    try:
        delivered = bool(result)
    except Exception as error:
        return DeliveryResult.retry(f"unreadable handler answer: {type(error).__name__}")
    return DeliveryResult.delivered() if delivered else DeliveryResult.retry("handler reported failure")
