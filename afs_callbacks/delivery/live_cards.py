"""Live run cards: one message per run and channel, edited in place as the run goes.

:class:`CardDispatcher` keeps, per (run, channel), only the newest state not yet shown
(latest wins): a newer state replaces an unsent older one, so after an outage a single
edit brings the card up to date instead of a backlog of stale edits. One daemon thread
sends them, paced three ways: the card's ``interval`` between two edits (a final state
goes out at once), the service's own ``min_interval`` between any two requests, and the
service's ``retry_after`` after a rate-limit answer. That bounds an edit storm: a run of
``d`` seconds makes at most ``d / interval + 2`` requests per card and channel when all
succeed (the post, the paced edits, the final edit).

The card's message id is kept in the store by run and channel, so a resumed run (same
run id, new process) edits the same card; a card someone deleted (``gone``) is posted
anew. Nothing here touches the store or the network on the caller's thread.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from afs_callbacks._log import get_logger
from afs_callbacks.channels.base import DeliveryResult, NotificationHandler, Outcome
from afs_callbacks.delivery.limits import backoff_delay
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import RunState

log = get_logger(__name__)

#: Backoff of a card's failed edits (seconds): full jitter, like the sender's.
RETRY_BASE = 2.0
RETRY_CAP = 300.0
#: The longest wait a service's ``retry_after`` may impose.
MAX_RETRY_AFTER = 900.0
#: The shortest sleep between two looks at due work (no busy loop on a due time of "now").
MIN_WAIT = 0.01
#: Seconds before a card looks at the store again after it failed (a locked database).
STORE_RETRY = 1.0


class CardStore(Protocol):
    """Where card message ids live (the outbox implements it)."""

    def card_id(self, run_id: str, channel: str) -> str | None:
        """The message id of a run's card on ``channel``, if one was posted."""

    def save_card_id(self, run_id: str, channel: str, message_id: str) -> None:
        """Remember the message a run's card lives in."""

    def forget_card(self, run_id: str, channel: str) -> None:
        """Drop a card's message id (the message was deleted)."""


@dataclass
class _Channel:
    handler: NotificationHandler
    last_request: float = -math.inf
    paused_until: float = -math.inf
    disabled: str | None = None


@dataclass
class _Card:
    """One run's card on one channel."""

    pending: RunState | None = None
    #: The message id: unknown until read from the store (``loaded``), None when not posted.
    message_id: str | None = None
    loaded: bool = False
    last_edit: float = -math.inf
    not_before: float = -math.inf
    failures: int = 0
    dead: bool = False
    #: A request for this card is in flight (no second one may start: two posts would
    #: make two cards).
    sending: bool = False


class CardDispatcher:
    """Posts and edits the live card of each run on each channel that can edit messages.

    Args:
        store: keeps message ids by run and channel (an :class:`~afs_callbacks.delivery.
            outbox.Outbox`).
        interval: seconds between two edits of one card (a final state goes out at once).
        clock: monotonic time source (tests pass a fake one and call :meth:`run_due`).
        threaded: send from a daemon thread; False leaves :meth:`run_due` to the caller
            (tests with a fake clock).

    Raises:
        ValueError: a negative or non-finite ``interval``.

    Example::

        cards = CardDispatcher(outbox, interval=30)
        cards.add_channel("telegram", telegram)
        cards.update(state)  # from the manager's writer thread, for every new state
        cards.flush(5)       # at the end of the run
        cards.stop()
    """

    def __init__(
        self,
        store: CardStore,
        *,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        threaded: bool = True,
    ) -> None:
        if not (interval >= 0 and math.isfinite(interval)):
            raise ValueError(f"CardDispatcher(interval={interval!r}) is not a valid interval in seconds")
        self.store = store
        self.interval = float(interval)
        self._clock = clock
        self._channels: dict[str, _Channel] = {}
        self._cards: dict[tuple[str, str], _Card] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopped = False
        self._forcing = 0
        self._thread: threading.Thread | None = None
        self._threaded = threaded
        self._pid = os.getpid()

    def add_channel(self, name: str, handler: NotificationHandler) -> bool:
        """Keep cards on ``handler`` under ``name``; False (ignored) when it cannot edit."""
        if not handler.supports_cards:
            return False
        with self._lock:
            self._channels[name] = _Channel(handler)
        return True

    @property
    def channels(self) -> list[str]:
        """Names of the channels that get cards."""
        return list(self._channels)

    def update(self, state: RunState) -> None:
        """Queue ``state`` for every channel's card of its run; never blocks on I/O.

        Only the newest state per card waits: an unsent older one is replaced.
        """
        if os.getpid() != self._pid:
            self._after_fork()
        wake = False
        with self._lock:
            if self._stopped:
                return
            for name, channel in self._channels.items():
                if channel.disabled is not None:
                    continue
                card = self._cards.setdefault((state.run_id, name), _Card())
                if card.dead:
                    continue
                # Waking only when the due time can move keeps a step-rate storm of
                # updates from waking the thread at step rate.
                wake = wake or card.pending is None or state.final
                card.pending = state
        if wake:
            self._ensure_thread()
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Send every waiting state now (skipping the interval, keeping the service's pace);
        True when none is left within ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            self._forcing += 1
        try:
            if self._thread is None or not self._thread.is_alive():
                return self._drive(deadline)
            self._wake.set()
            with self._changed:
                while self._has_pending():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(remaining)
            return True
        finally:
            with self._lock:
                self._forcing -= 1

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread after the request in flight; later updates are ignored."""
        with self._lock:
            self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # The work --------------------------------------------------------------------------

    def run_due(self) -> float | None:
        """Send at most one due card request; return when the next one is due (clock time,
        possibly now) or None when nothing waits. The thread's loop, callable from tests."""
        with self._lock:
            now = self._clock()
            due, key = self._next_due(now)
            if key is None or due is None or due > now:
                return due
            card = self._cards[key]
            state = card.pending
            card.pending = None
            card.sending = True
            channel = self._channels[key[1]]
        assert state is not None
        try:
            self._send(key, card, channel, state)
        finally:
            card.sending = False
        with self._changed:
            if card.pending is None and (state.final or card.dead) and self._cards.get(key) is card:
                del self._cards[key]  # done: a later resume loads the id from the store again
            self._changed.notify_all()
            return self._next_due(self._clock())[0]

    def _next_due(self, now: float) -> tuple[float | None, tuple[str, str] | None]:
        """The earliest due card (time, key); caller holds the lock."""
        best: tuple[float | None, tuple[str, str] | None] = (None, None)
        for key, card in self._cards.items():
            channel = self._channels[key[1]]
            if card.pending is None or card.dead or card.sending or channel.disabled is not None:
                continue
            at = self._due_at(card, channel, card.pending)
            if best[0] is None or at < best[0]:
                best = (at, key)
        return best

    def _due_at(self, card: _Card, channel: _Channel, state: RunState) -> float:
        at = max(card.not_before, channel.paused_until, channel.last_request + channel.handler.min_interval)
        if not (state.final or self._forcing or card.message_id is None):
            at = max(at, card.last_edit + self.interval)
        return at

    def _send(self, key: tuple[str, str], card: _Card, channel: _Channel, state: RunState) -> None:
        run_id, name = key
        try:
            if not card.loaded:
                card.message_id = self.store.card_id(run_id, name)
                card.loaded = True
            result = self._call(channel.handler, card.message_id, state)
            now = self._clock()
            channel.last_request = now
            self._record(key, card, channel, state, result, now)
        except Exception as error:  # a locked store: keep the state, look again later
            log.warning("afs-callbacks: %s card of run %s hit an error: %s", name, run_id, redact(error))
            self._requeue(card, state, self._clock() + STORE_RETRY)

    def _call(self, handler: NotificationHandler, message_id: str | None, state: RunState) -> DeliveryResult:
        try:
            if message_id is None:
                return handler.post_card(state)
            return handler.edit_card(message_id, state)
        except Exception as error:  # a handler bug must not kill the thread
            return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")

    def _record(
        self,
        key: tuple[str, str],
        card: _Card,
        channel: _Channel,
        state: RunState,
        result: DeliveryResult,
        now: float,
    ) -> None:
        run_id, name = key
        posting = card.message_id is None
        if result.ok:
            card.failures = 0
            card.last_edit = now
            if result.message_id and result.message_id != card.message_id:
                # A post, or a service that moved the card (a desktop bubble that expired).
                self.store.save_card_id(run_id, name, result.message_id)
                card.message_id = result.message_id
            elif posting:
                log.warning("afs-callbacks: %s gave no message id for a card; no more cards there", name)
                card.dead = True
            return
        if result.gone or (
            result.outcome is Outcome.PERMANENT and not posting and not result.disable_channel
        ):
            # Deleted, or no longer editable (too old): post a fresh card with this state.
            self.store.forget_card(run_id, name)
            card.message_id = None
            self._requeue(card, state, None)
            return
        if result.outcome is Outcome.PERMANENT:
            if result.disable_channel:
                channel.disabled = result.detail
            card.dead = True
            log.warning("afs-callbacks: %s refused run %s's card: %s", name, run_id, result.detail)
            return
        card.failures += 1
        delay = backoff_delay(
            card.failures, base=RETRY_BASE, cap=RETRY_CAP, hint=result.retry_after, max_hint=MAX_RETRY_AFTER
        )
        if result.retry_after is not None:  # a rate limit concerns the whole channel
            channel.paused_until = now + delay
        log.info("afs-callbacks: %s card will retry in %.1f s: %s", name, delay, result.detail)
        self._requeue(card, state, now + delay)

    def _requeue(self, card: _Card, state: RunState, not_before: float | None) -> None:
        with self._lock:
            if card.pending is None:  # a newer state that arrived meanwhile wins
                card.pending = state
            if not_before is not None:
                card.not_before = not_before

    def _has_pending(self) -> bool:
        return any(
            (card.pending is not None or card.sending)
            and not card.dead
            and self._channels[key[1]].disabled is None
            for key, card in self._cards.items()
        )

    # The thread ------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if not self._threaded or self._stopped or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, name="afs-cards", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
            try:
                due = self.run_due()
            except Exception:
                log.exception("afs-callbacks: card thread hit an error; retrying shortly")
                due = self._clock() + 1.0
            if due is None:
                self._wake.wait()  # idle: sleep until an update arrives
            else:
                wait = due - self._clock()
                if wait > 0:
                    self._wake.wait(max(wait, MIN_WAIT))
            self._wake.clear()

    def _drive(self, deadline: float) -> bool:
        """Flush on the calling thread (no card thread running, e.g. after stop)."""
        pause = threading.Event()
        while True:
            due = self.run_due()
            if due is None:
                return True
            wait = due - self._clock()
            if time.monotonic() + max(wait, 0.0) > deadline:
                return False
            if wait > 0:
                pause.wait(wait)

    def _after_fork(self) -> None:
        # A forked child has none of the parent's threads; its locks may be held forever.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._thread = None
        self._pid = os.getpid()
