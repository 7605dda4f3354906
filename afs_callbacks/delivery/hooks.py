"""A manager's run companions: run states, live cards, the Prometheus textfile, the death
watcher and the store's housekeeping once it opens.

:class:`RunHooks` is handed what it uses (the delivery whose writer and store it feeds, the
settings, the channels, the manager's ``emit``), so it needs no manager. Every call from
the training thread here is non-blocking and never raises.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.channels.base import NotificationHandler
from afs_callbacks.config import Settings
from afs_callbacks.delivery.lifecycle import Lifecycle
from afs_callbacks.events import NotificationEvent
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import FINAL_STATUSES, RUNNING, MetricPoint, RunState

log = get_logger(__name__)


class RunHooks:
    """Run states, cards and the death watcher of one manager.

    Args:
        delivery: the manager's delivery: its writer stores run states, its store feeds
            the cards and is tidied once it opens.
        settings: the manager's core options (cards, their pace, retention).
        state_dir: the folder of the outbox (the death watcher watches it).
        channels: the usable channels now (those that can show a card get one).
        emit: admits an event like ``manager.emit`` (a report of runs that vanished).
    """

    def __init__(
        self,
        delivery: Lifecycle,
        settings: Settings,
        state_dir: str,
        *,
        channels: Callable[[], Sequence[tuple[str, NotificationHandler]]],
        emit: Callable[[NotificationEvent], object],
    ) -> None:
        self.cards_off: set[str] = set()  # channels whose <CHANNEL>_CARD is false
        self._delivery = delivery
        self._settings = settings
        self._state_dir = state_dir
        self._channels = channels
        self._emit = emit
        self._lock = threading.RLock()
        self._cards: Any = None  # CardDispatcher, made when a card channel first needs it
        self._card_channels: set[str] = set()
        self._watched: set[str] = set()
        self._textfile: Any = None  # TextfileWriter, made at the first state when configured
        self._textfile_wanted = settings.prometheus_textfile_dir is not None

    # Run states, cards, the Prometheus textfile, the death watcher -----------------------

    def update(self, state: RunState, points: Sequence[MetricPoint]) -> None:
        """Queue ``state`` for the store, the cards and the textfile; start the watcher for
        a new run."""
        try:
            self._delivery.writer.put_run(state, points)
            if self._textfile_wanted:
                (self._textfile or self._textfile_writer()).offer(state)
            cards = self._card_dispatcher()
            if cards is not None:
                cards.update(state)
            # Only a run of this process is watched: a sweep's card (the watcher's own,
            # which would otherwise keep it watching itself for ever) has no process.
            ours = state.pid == os.getpid()
            if ours and state.status == RUNNING and state.run_id not in self._watched:
                self._watched.add(state.run_id)
                self._start_watcher(state)
            elif ours and state.status in FINAL_STATUSES and state.run_id in self._watched:
                self._watched.discard(state.run_id)
                self._start_watcher(state)  # tells the watcher it ended with a word
        except Exception as error:
            log.error("afs-callbacks: could not queue a run state: %s", redact(error))

    def prepare(self) -> None:
        """A run is about to start: make sure this user's death watcher runs (a start is a
        process spawn, on a thread of its own), so that the run's first state, moments
        later, only registers with the watcher already there."""
        self._start_watcher(None)

    def _textfile_writer(self) -> Any:
        """The textfile writer of ``AFS_PROMETHEUS_TEXTFILE_DIR`` (its thread imports
        prometheus_client, or says which extra to install)."""
        with self._lock:
            if self._textfile is None:
                from afs_callbacks.prometheus.textfile import TextfileWriter

                store = self._delivery.store
                self._textfile = TextfileWriter(
                    str(self._settings.prometheus_textfile_dir),
                    store=os.path.realpath(self._state_dir),
                    health=store.channel_health,
                    keep=self._settings.prometheus_keep,
                )
            return self._textfile

    def _card_dispatcher(self) -> Any:
        if not self._settings.card:
            return None
        wanted = [
            (name, handler)
            for name, handler in self._channels()
            if handler.supports_cards and name not in self.cards_off
        ]
        if not wanted and self._cards is None:
            return None
        with self._lock:
            if self._cards is None:
                try:
                    from afs_callbacks.delivery.live_cards import CardDispatcher
                except ImportError:
                    return None
                self._cards = CardDispatcher(self._delivery.store, interval=self._settings.card_interval)
            for name, handler in wanted:
                if name not in self._card_channels:
                    self._card_channels.add(name)
                    self._cards.add_channel(name, handler)
            return self._cards

    def _start_watcher(self, state: RunState | None) -> None:
        try:
            from afs_callbacks.delivery import deathwatch
        except ImportError:
            return
        # One message on a local socket, not waited for (a watcher to start, if none
        # answers, is started on a thread of its own): the first state of a run killed
        # right after it registered, before anything of it is stored, is still reported.
        if state is None or state.status == RUNNING:
            deathwatch.ensure_watcher(self._state_dir, os.getpid(), state)
        else:
            deathwatch.run_ended(self._state_dir, os.getpid(), state.run_id)

    # The store opened (writer thread) ---------------------------------------------------

    def store_opened(self) -> None:
        """Housekeeping of the history, then report runs that vanished earlier."""
        settings = self._settings
        store = self._delivery.store
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
            args=(self._state_dir, self._emit),
            name="afs-vanished",
            daemon=True,
        ).start()

    # Closing and fork ---------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Write the runs' last states for Prometheus, push the cards' last states (each
        bounded) and stop their threads."""
        textfile = self._textfile
        if textfile is not None:
            try:
                textfile.close(max(timeout, 0.0))
            except Exception as error:
                log.error("afs-callbacks: the Prometheus textfile could not finish: %s", redact(error))
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
        self._watched = set()
        if self._textfile is not None:
            self._textfile.after_fork_in_child()
