"""Background delivery: one daemon thread per channel drains that channel's outbox rows.

One thread per channel means a slow or rate-limited service (Slack answering in 2 s, a
Discord 429) delays only its own messages. A worker claims due rows, paces them to the
channel's ``min_interval``, calls ``send`` and records the outcome: delivered, retry with
backoff (the server's hint wins), or dead. It never raises and stops promptly on ``stop()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from afs_callbacks._log import get_logger
from afs_callbacks.channels.base import DeliveryResult, NotificationHandler, Outcome
from afs_callbacks.delivery.limits import backoff_delay
from afs_callbacks.delivery.outbox import Claim, Outbox
from afs_callbacks.redaction import redact

log = get_logger(__name__)

# How often an idle worker looks at the outbox anyway: rows can arrive from other
# processes sharing the state directory (a crashed run's backlog).
IDLE_POLL_SECONDS = 5.0

# Rows claimed per transaction. One: a lease covers one send (two timeouts at most), while
# rows queued behind slow sends in a bigger batch could outlive their lease and be sent a
# second time by another process. A claim costs tens of microseconds; a send, milliseconds.
CLAIM_BATCH = 1


@dataclass(frozen=True)
class RetryPolicy:
    """How failed deliveries are retried (see :class:`~afs_callbacks.config.Settings`)."""

    max_attempts: int = 8
    base: float = 2.0
    cap: float = 300.0
    max_retry_after: float = 900.0
    send_timeout: float = 10.0

    @property
    def lease_seconds(self) -> float:
        """How long a claim is held: long enough for a slow send, short enough to recover."""
        return 3 * self.send_timeout + 30.0


def call_handler(handler: NotificationHandler, claim: Claim) -> DeliveryResult:
    """Run ``handler.send`` and turn whatever happens into a :class:`DeliveryResult`.

    A raising handler is a bug or an unforeseen network error: retry it, with the
    exception text redacted (``requests`` puts the full URL, token included, in it).
    """
    try:
        result = handler.send(claim.event)
    except Exception as error:
        return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")
    if isinstance(result, DeliveryResult):
        return result
    if result is True:
        return DeliveryResult.delivered()
    return DeliveryResult.retry("handler reported failure")


class ChannelWorker:
    """Delivers one channel's outbox rows on a daemon thread.

    Args:
        name: the channel name (rows are keyed by it).
        handler: the channel.
        outbox: where rows live.
        policy: retry policy.
        on_progress: called after every recorded outcome (flush waits on it).
    """

    def __init__(
        self,
        name: str,
        handler: NotificationHandler,
        outbox: Outbox,
        policy: RetryPolicy,
        on_progress: Callable[[], None],
    ) -> None:
        self.name = name
        self.handler = handler
        self.outbox = outbox
        self.policy = policy
        self._on_progress = on_progress
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_send = 0.0
        self._paused_until = 0.0
        self.forced_since: float | None = None
        self.disabled_reason: str | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"afs-sender-{self.name}", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop after the current send; a send in flight keeps its lease and is retried later."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self._drain_once()
                wait = 0.0 if worked else self._idle_wait()
            except Exception:
                # A locked or broken database: keep the thread, look again shortly.
                log.exception("afs-callbacks: %s sender hit an error; retrying shortly", self.name)
                worked, wait = False, 1.0
            if not worked:
                self._wake.wait(wait)
                self._wake.clear()

    def _idle_wait(self) -> float:
        wait = IDLE_POLL_SECONDS
        due = self.outbox.next_due(self.name)
        if due is not None:
            wait = min(wait, max(due - time.time(), 0.05))
        if self._paused_until > time.time() and self.forced_since is None:
            wait = max(wait, self._paused_until - time.time())
        return wait

    def _drain_once(self) -> bool:
        """Claim and send one batch; False when nothing was due."""
        forced = self.forced_since
        if forced is None and time.time() < self._paused_until:
            return False
        claims = self.outbox.claim(
            self.name,
            lease_seconds=self.policy.lease_seconds,
            limit=CLAIM_BATCH,
            forced_since=forced,
        )
        if not claims:
            return False
        for index, claim in enumerate(claims):
            if self._stop.is_set():
                for rest in claims[index:]:
                    self.outbox.release(rest.event.id, self.name)
                break
            self._deliver(claim)
            self._on_progress()
            if self.forced_since is None and time.time() < self._paused_until:
                # Rate limited: hand the rest back so they wait with the channel.
                for rest in claims[index + 1 :]:
                    self.outbox.release(rest.event.id, self.name)
                break
        return True

    def _deliver(self, claim: Claim) -> None:
        event_id = claim.event.id
        if self.disabled_reason is not None:
            self.outbox.mark_dead(
                event_id, self.name, f"channel disabled: {self.disabled_reason}", attempted=False
            )
            return
        self._pace()
        result = call_handler(self.handler, claim)
        self._last_send = time.monotonic()
        attempts = claim.attempts + 1
        if result.outcome is Outcome.DELIVERED:
            self.outbox.mark_delivered(event_id, self.name)
        elif result.outcome is Outcome.PERMANENT:
            self.outbox.mark_dead(event_id, self.name, result.detail)
            if result.disable_channel and self.disabled_reason is None:
                self.disabled_reason = result.detail
                # Reported once: every later message to this destination would fail the same.
                log.error(
                    "afs-callbacks: %s destination is unusable (%s); its messages are kept as"
                    " dead in the history until the configuration is fixed",
                    self.name,
                    result.detail,
                )
            else:
                log.warning("afs-callbacks: %s refused a message: %s", self.name, result.detail)
        elif attempts >= self.policy.max_attempts:
            self.outbox.mark_dead(event_id, self.name, f"gave up after {attempts} attempts: {result.detail}")
            log.warning(
                "afs-callbacks: %s gave up on a message after %d attempts: %s",
                self.name,
                attempts,
                result.detail,
            )
        else:
            delay = backoff_delay(
                attempts,
                base=self.policy.base,
                cap=self.policy.cap,
                hint=result.retry_after,
                max_hint=self.policy.max_retry_after,
            )
            if result.retry_after is not None:
                # A rate-limit answer concerns the whole channel, not just this message.
                self._paused_until = time.time() + delay
            self.outbox.mark_retry(event_id, self.name, time.time() + delay, result.detail)
            log.info(
                "afs-callbacks: %s will retry in %.1f s (attempt %d): %s",
                self.name,
                delay,
                attempts,
                result.detail,
            )

    def _pace(self) -> None:
        # Even a flush keeps to the service's published rate: a burst only earns a 429.
        gap = self.handler.min_interval - (time.monotonic() - self._last_send)
        if gap > 0:
            self._stop.wait(gap)
