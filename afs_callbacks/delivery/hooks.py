"""The manager's background companions: repeat digests, run states, live cards, the death
watcher and the store's housekeeping once it opens.

Kept apart from the manager so that it stays a registry and an admission door. Every call
from the training thread here is non-blocking and never raises.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from afs_callbacks._log import get_logger
from afs_callbacks.events import NotificationEvent
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import RUNNING, MetricPoint, RunState

if TYPE_CHECKING:
    from afs_callbacks.manager import NotificationManager

log = get_logger(__name__)

#: How often the digest thread looks for closed repeat windows.
DIGEST_POLL_SECONDS = 0.5


class RunHooks:
    """Digests, run states, cards and the death watcher of one manager."""

    def __init__(self, manager: NotificationManager) -> None:
        self.manager = manager
        self.cards_off: set[str] = set()  # channels whose <CHANNEL>_CARD is false
        self._lock = threading.RLock()
        self._digester: threading.Thread | None = None
        self._stopping = threading.Event()
        self._cards: Any = None  # CardDispatcher, made when a card channel first needs it
        self._card_channels: set[str] = set()
        self._watched: set[str] = set()

    # Repeat digests -------------------------------------------------------------------

    def ensure_digests(self) -> None:
        """Start the digest thread while some repeat window holds events back."""
        with self._lock:
            if self._digester is not None or self._stopping.is_set():
                return
            self._digester = threading.Thread(target=self._digest_loop, name="afs-digests", daemon=True)
            self._digester.start()

    def _digest_loop(self) -> None:
        while not self._stopping.wait(DIGEST_POLL_SECONDS):
            self._send_digests(self.manager._guard.due_digests())
            with self._lock:
                # Decided under the lock ensure_digests takes, so a repeat held back just
                # now either keeps this thread going or starts a new one.
                if not self.manager._guard.has_suppressed():
                    self._digester = None
                    return
        with self._lock:
            self._digester = None

    def flush_digests(self) -> None:
        """Send the digests of every open repeat window now (before a flush or close)."""
        self._send_digests(self.manager._guard.due_digests(flush_all=True))

    def _send_digests(self, digests: Sequence[NotificationEvent]) -> None:
        for digest in digests:
            try:
                self.manager.emit(digest.with_changes(collapse=False))
            except Exception as error:
                log.error("afs-callbacks: could not accept a digest: %s", redact(error))

    # Run states, cards, the death watcher ----------------------------------------------

    def update(self, state: RunState, points: Sequence[MetricPoint]) -> None:
        """Queue ``state`` for the store and the cards; start the watcher for a new run."""
        try:
            self.manager._delivery.writer.put_run(state, points)
            cards = self._card_dispatcher()
            if cards is not None:
                cards.update(state)
            if state.status == RUNNING and state.run_id not in self._watched:
                self._watched.add(state.run_id)
                self._start_watcher()
        except Exception as error:
            log.error("afs-callbacks: could not queue a run state: %s", redact(error))

    def _card_dispatcher(self) -> Any:
        settings = self.manager.settings
        if not settings.card:
            return None
        wanted = [
            (name, reg.handler)
            for name, reg in self.manager.handlers_items()
            if reg.configured and reg.handler.supports_cards and name not in self.cards_off
        ]
        if not wanted and self._cards is None:
            return None
        with self._lock:
            if self._cards is None:
                try:
                    from afs_callbacks.delivery.cards import CardDispatcher
                except ImportError:
                    return None
                self._cards = CardDispatcher(self.manager._delivery.store, interval=settings.card_interval)
            for name, handler in wanted:
                if name not in self._card_channels:
                    self._card_channels.add(name)
                    self._cards.add_channel(name, handler)
            return self._cards

    def _start_watcher(self) -> None:
        try:
            from afs_callbacks.delivery import deathwatch
        except ImportError:
            return
        state_dir, pid = self.manager.state_dir, os.getpid()
        # Spawning a process costs milliseconds: not on the training thread.
        threading.Thread(
            target=deathwatch.ensure_watcher, args=(state_dir, pid), name="afs-watch-start", daemon=True
        ).start()

    # The store opened (writer thread) ---------------------------------------------------

    def store_opened(self) -> None:
        """Housekeeping of the history, then report runs that vanished earlier."""
        settings = self.manager.settings
        store = self.manager._delivery.store
        store.reclaim_orphans()
        store.prune(max_age_seconds=settings.retention_days * 86400, max_events=settings.max_history)
        try:
            from afs_callbacks.delivery import deathwatch
        except ImportError:
            return
        # On its own thread: it emits, and emitting from the writer thread could wait on
        # the writer's own full queue.
        threading.Thread(
            target=deathwatch.report_vanished,
            args=(self.manager.state_dir, self.manager.emit),
            name="afs-vanished",
            daemon=True,
        ).start()

    # Closing and fork ---------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Send open digests, push the cards' last states (bounded), stop the threads."""
        self.flush_digests()
        self._stopping.set()
        cards = self._cards
        if cards is not None:
            try:
                cards.flush(max(timeout, 0.0))
                cards.stop()
            except Exception as error:
                log.error("afs-callbacks: live cards could not finish: %s", redact(error))

    def after_fork_in_child(self) -> None:
        """Threads do not survive ``fork()``; the child starts its own when needed."""
        self._lock = threading.RLock()
        self._digester = None
        self._watched = set()
