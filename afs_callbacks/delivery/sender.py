"""Background delivery: one daemon thread per channel drains that channel's outbox rows.

One thread per channel means a slow or rate-limited service (Slack answering in 2 s, a
Discord 429) delays only its own messages. A worker drops stale progress (superseded),
claims the next due row (each run's messages in the order they happened, the runs most
urgent first: see :mod:`~afs_callbacks.delivery.priority`), tells a run's end together
with its earlier messages still waiting as one story (:mod:`~afs_callbacks.delivery.story`,
unless the channel's ``tells_stories`` is False), keeps to the channel's budget (a flood
becomes one digest), paces to the channel's ``min_interval``, calls ``send`` and records
the outcome: delivered; retried with capped backoff for as long as the message is younger
than ``max_age`` (the server's hint wins, and a hint pauses the whole channel, in a flush
too); or dead on a permanent answer or old age. It never raises and stops promptly on
``stop()``.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from afs_callbacks._log import get_logger
from afs_callbacks.channels.base import DeliveryResult, NotificationHandler, Outcome
from afs_callbacks.delivery.budget import BudgetPolicy, TokenBucket
from afs_callbacks.delivery.limits import backoff_delay, fold_digest
from afs_callbacks.delivery.outbox import Claim, Outbox
from afs_callbacks.delivery.priority import is_budgeted
from afs_callbacks.delivery.retry import RetryPolicy, call_handler
from afs_callbacks.delivery.story import tell
from afs_callbacks.formatting import format_duration

__all__ = ["CLAIM_BATCH", "IDLE_POLL_SECONDS", "ChannelWorker", "RetryPolicy", "call_handler"]

log = get_logger(__name__)

# The longest an idle worker sleeps before it checks (cheaply: SQLite's data_version, no
# table read) whether another process sharing the state directory wrote rows.
IDLE_POLL_SECONDS = 1.0

# Rows claimed per transaction. One: a lease covers one send (two timeouts at most), while
# rows queued behind slow sends in a bigger batch could outlive their lease and be sent a
# second time by another process. A claim costs tens of microseconds; a send, milliseconds.
CLAIM_BATCH = 1

# Waits shorter than this are slept in place (an idle round trip costs more than it saves).
_SHORT_WAIT = 0.05


class _Admission(enum.Enum):
    SEND = "send"
    FOLDED = "folded"  # the claim went into a digest, which is now due
    HELD = "held"  # the claim waits for the budget


class ChannelWorker:
    """Delivers one channel's outbox rows on a daemon thread.

    Args:
        name: the channel name (rows are keyed by it).
        handler: the channel.
        outbox: where rows live.
        policy: retry policy.
        on_progress: called after every recorded outcome (flush waits on it).
        budget: the channel's message budget; None: no budget (the manager passes the
            configured one, by default :class:`BudgetPolicy`'s burst and pace).
        on_version: told every ``data_version`` the worker reads (the store's change
            listeners piggy-back on this once-a-second look: ``delivery/changes.py``).
    """

    def __init__(
        self,
        name: str,
        handler: NotificationHandler,
        outbox: Outbox,
        policy: RetryPolicy,
        on_progress: Callable[[], None],
        *,
        budget: BudgetPolicy | None = None,
        on_version: Callable[[int | None], None] | None = None,
    ) -> None:
        self.name = name
        self._on_version = on_version
        self.handler = handler
        # A handler of the old API has no declaration: it reads messages, like a chat.
        self._stories = bool(getattr(handler, "tells_stories", True))
        self.outbox = outbox
        self.policy = policy
        self._on_progress = on_progress
        self._bucket = TokenBucket(budget or BudgetPolicy(burst=0))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_send = 0.0
        self._paused_until = 0.0
        self._held = False  # budgeted rows are due but wait for the budget
        self._wake_at: float | None = None  # epoch time something scheduled falls due
        self._seen_version: int | None = None
        self._flushes: list[float] = []  # when each flush under way began
        self.disabled_reason: str | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"afs-sender-{self.name}", daemon=True)
            self._thread.start()

    def wake(self, *, budgeted: bool = False) -> None:
        """Look at the outbox now rather than at the next poll.

        ``budgeted``: the rows that woke it all wait for the channel's budget. While the
        worker holds rows for the budget (and no flush drives it), they join those and are
        looked at when it refills, as already scheduled. A look now would read the queue to
        claim a held row and release it again: under a flood, once per stored batch, that
        took as much CPU as the writer's work and doubled the storage window."""
        if budgeted and self._held and not self._flushes and self._bucket.wait_time() > _SHORT_WAIT:
            return
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

    @property
    def paused_until(self) -> float:
        """Epoch seconds until which the service asked this channel to wait (429)."""
        return self._paused_until

    @property
    def forced_since(self) -> float | None:
        """When the earliest flush under way began (None: no flush): a row not tried since
        then is due whatever its backoff says."""
        flushes = list(self._flushes)
        return min(flushes) if flushes else None

    def begin_flush(self, started: float) -> None:
        """A flush begun at ``started`` (epoch seconds) drives this worker until
        :meth:`end_flush`; another may run at the same time (each ends only its own)."""
        self._flushes.append(started)
        self.wake()

    def end_flush(self, started: float) -> None:
        """The flush begun at ``started`` is over."""
        self._flushes.remove(started)

    def flush_pending(self, deadline: float | None) -> bool:
        """Whether a flush (``forced_since`` set) should keep waiting for this channel.

        It should while a message is in flight or not yet tried during the flush (unless a
        rate-limit pause outlasts ``deadline``), and while a message tried during the flush
        has its next attempt, pause included, due by ``deadline`` (epoch seconds; None:
        each message is tried once, retries are not waited for).
        """
        since = self.forced_since
        if since is None:
            return False
        untried, next_retry = self.outbox.flush_due(self.name, since, stories=self._stories)
        resume = self._paused_until
        if untried:
            return deadline is None or resume <= deadline
        if next_retry is None or deadline is None:
            return False
        return max(next_retry, resume) <= deadline

    # The thread ------------------------------------------------------------------------

    def _run(self) -> None:
        look, drained = True, False
        while not self._stop.is_set():
            wait = IDLE_POLL_SECONDS
            try:
                if look:
                    if not drained:
                        # Not again after a batch: this process's own commits do not move
                        # the number, and a foreign one since the last read still shows at
                        # the next look. One SQLite call (two GIL hand-offs) less a message.
                        self._seen_version = self._data_version()
                    drained = self._drain_once()
                    if drained:
                        continue
                    wait = self._idle_wait()
            except Exception:
                # A locked or broken database: keep the thread, look again shortly.
                log.exception("afs-callbacks: %s sender hit an error; retrying shortly", self.name)
                wait, self._wake_at, drained = 1.0, time.time() + 1.0, False
            woken = self._wake.wait(wait)
            self._wake.clear()
            look = woken or self._scheduled_due() or self._others_wrote()

    def _idle_wait(self) -> float:
        """How long to sleep; records when the next scheduled thing falls due."""
        now = time.time()
        target = self._next_row_due(now)
        if target is not None and self._held:
            # Every due row waits for the budget (an exempt one would have been claimed).
            target = max(target, now + self._bucket.wait_time())
        if target is not None:
            target = max(target, self._paused_until, now + self._pace_left())
        self._wake_at = target
        if target is None:
            return IDLE_POLL_SECONDS
        return min(max(target - now, _SHORT_WAIT), IDLE_POLL_SECONDS)

    def _next_row_due(self, now: float) -> float | None:
        since = self.forced_since
        if since is not None and self.outbox.flush_due(self.name, since, stories=self._stories)[0]:
            return now  # a flush makes its untried rows due whatever their backoff says
        return self.outbox.next_due(self.name, stories=self._stories)

    def _scheduled_due(self) -> bool:
        return self._wake_at is not None and time.time() >= self._wake_at - 0.01

    def _others_wrote(self) -> bool:
        version = self._data_version()
        return version is None or version != self._seen_version

    def _data_version(self) -> int | None:
        try:
            version: int | None = self.outbox.data_version()
        except Exception:  # a broken file: the next look reports it, once per second at most
            version = None
        if self._on_version is not None:
            self._on_version(version)
        return version

    def _drain_once(self) -> bool:
        """Claim and handle one batch; False when nothing could be done now."""
        if time.time() < self._paused_until:
            return False  # rate limited: a flush waits with the channel, never sends into it
        gap = self._pace_left()
        if gap > _SHORT_WAIT:
            return False  # wait for the pace idle, so what arrives meanwhile is claimed by rank
        if gap > 0:
            self._stop.wait(gap)
        self.outbox.supersede_stale(self.name)
        claims = self.outbox.claim(
            self.name,
            lease_seconds=self.policy.lease_seconds,
            limit=CLAIM_BATCH,
            forced_since=self.forced_since,
            stories=self._stories,
        )
        if not claims:
            self._held = False
            return False
        for index, claim in enumerate(claims):
            if self._stop.is_set():
                self._release(claims[index:])
                break
            admission = self._admit(claim)
            if admission is _Admission.HELD:
                self._release(claims[index:])
                return False
            if admission is _Admission.SEND:
                self._deliver(claim)
            self._on_progress()
            if time.time() < self._paused_until:
                # Rate limited: hand the rest back so they wait with the channel.
                self._release(claims[index + 1 :])
                break
        return True

    def _release(self, claims: list[Claim]) -> None:
        for claim in claims:
            self.outbox.release(claim.event.id, self.name)

    def _admit(self, claim: Claim) -> _Admission:
        """Decide what the channel's budget lets happen to ``claim``."""
        if self.disabled_reason is not None or not is_budgeted(claim.event) or claim.leads_exempt:
            # leads_exempt: an end or alert of its run waits behind it, and must not wait
            # for the budget through it.
            return _Admission.SEND
        if self._bucket.available():
            held, self._held = self._held, False
            # Messages that waited for the budget go out as one digest, not one by one.
            if held and self._fold(claim):
                return _Admission.FOLDED
            return _Admission.SEND
        if self.forced_since is not None:
            # A flush does not wait for the budget: what is over it is folded at once.
            return _Admission.FOLDED if self._fold(claim) else _Admission.SEND
        self._held = True
        return _Admission.HELD

    def _fold(self, claim: Claim) -> bool:
        digest = self.outbox.fold_due(
            self.name,
            fold_digest,
            forced_since=self.forced_since,
            claimed=claim.event.id,
        )
        if digest is not None:
            log.info(
                "afs-callbacks: %s: %d messages over the channel's budget folded into one digest",
                self.name,
                digest.digest_count,
            )
        return digest is not None

    def _deliver(self, claim: Claim) -> None:
        event_id = claim.event.id
        if self.disabled_reason is not None:
            self.outbox.mark_dead(
                event_id, self.name, f"channel disabled: {self.disabled_reason}", attempted=False
            )
            return
        self._record(claim, *(self._tell_story(claim) if claim.told else self._send(claim)))

    def _send(self, claim: Claim) -> tuple[DeliveryResult, str | None]:
        """Send ``claim``; the result, and a note for the history (an attachment the
        service refused, the message sent again without it)."""
        self._pace()
        result = call_handler(self.handler, claim)
        self._last_send = time.monotonic()
        if result.attachment_refused and claim.event.attachments:
            return self._without_attachments(claim, result)
        return result, None

    def _tell_story(self, claim: Claim) -> tuple[DeliveryResult, str | None]:
        """Send a run's end with its earlier messages as one story. A story the service
        refuses for good gives them back to the queue and this channel tells no more
        stories: the end waits again, behind them, and the run goes out message by message
        in its order."""
        result, note = self._send(replace(claim, event=tell(claim.event, claim.told)))
        if result.outcome is not Outcome.PERMANENT or result.disable_channel:
            if result.outcome is Outcome.DELIVERED:
                log.info(
                    "afs-callbacks: %s: told %d earlier message(s) of run %s with its end",
                    self.name,
                    len(claim.told),
                    claim.event.run_id,
                )
            return result, note
        log.warning(
            "afs-callbacks: %s refused the story of run %s (%s); its %d messages, and every"
            " later run's, go out one by one",
            self.name,
            claim.event.run_id,
            result.detail,
            len(claim.told) + 1,
        )
        self._stories = False
        self.outbox.unfold_story(
            claim.event.id,
            self.name,
            f"the story of the run's end {claim.event.id} was refused: {result.detail}",
        )
        return DeliveryResult.later(
            f"the story was refused ({result.detail}): sent after its run's messages", 0.0
        ), None

    def _record(self, claim: Claim, result: DeliveryResult, note: str | None = None) -> None:
        event_id = claim.event.id
        if result.outcome is Outcome.DELIVERED:
            self.outbox.mark_delivered(event_id, self.name, note)
            self._bucket.take()
        elif result.outcome is Outcome.PERMANENT:
            self.outbox.mark_dead(event_id, self.name, result.detail)
            self._report_permanent(result)
        else:
            self._retry_or_expire(claim, result)

    def _without_attachments(self, claim: Claim, refused: DeliveryResult) -> tuple[DeliveryResult, str]:
        """The service refused the attachment: send the message again without it, once,
        and say so in the history (a later retry starts again with the attachment: the
        refusal may have been the service's passing trouble)."""
        note = f"sent without its attachment, which the service refused ({refused.detail})"
        log.warning("afs-callbacks: %s refused an attachment; sending the message without it", self.name)
        self._pace()
        bare = Claim(claim.event.with_changes(attachments=()), claim.channel, claim.attempts)
        result = call_handler(self.handler, bare)
        self._last_send = time.monotonic()
        if result.ok:
            return result, note
        return replace(result, detail=f"{result.detail} (after the service refused the attachment)"), note

    def _report_permanent(self, result: DeliveryResult) -> None:
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

    def _retry_or_expire(self, claim: Claim, result: DeliveryResult) -> None:
        event_id = claim.event.id
        attempts = claim.attempts + 1
        age = time.time() - claim.event.timestamp.timestamp()
        if age >= self.policy.max_age:
            detail = f"gave up after {format_duration(age)} and {attempts} attempts: {result.detail}"
            self.outbox.mark_dead(event_id, self.name, detail)
            log.warning("afs-callbacks: %s %s", self.name, detail)
            return
        delay = backoff_delay(
            attempts,
            base=self.policy.base,
            cap=self.policy.cap,
            hint=result.retry_after,
            max_hint=self.policy.max_retry_after,
        )
        if result.retry_after is not None and result.pauses_channel:
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

    def _pace_left(self) -> float:
        # Even a flush keeps to the service's published rate: a burst only earns a 429.
        return self.handler.min_interval - (time.monotonic() - self._last_send)

    def _pace(self) -> None:
        gap = self._pace_left()
        if gap > 0:
            self._stop.wait(gap)
