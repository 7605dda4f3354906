"""Everything after admission: the store, the writer thread, one sender per channel, flush
and close, and what a process's exit and ``fork()`` do to them.

:class:`Lifecycle` is what admission hands an event to. Handing over is a queue append
(the training thread never waits on SQLite); the writer stores it and wakes the channel's
sender. ``flush()`` and ``close()`` wait, bounded, and never raise. At exit every
open manager is closed within ``AFS_EXIT_FLUSH_TIMEOUT``; the senders send the end of a run
and alerts before anything else still queued, so that bounded wait is spent on them first.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from afs_callbacks._log import get_logger
from afs_callbacks.channels.base import NotificationHandler
from afs_callbacks.config import Settings
from afs_callbacks.delivery.budget import BudgetPolicy
from afs_callbacks.delivery.changes import StoreChanges
from afs_callbacks.delivery.flushing import flush_workers
from afs_callbacks.delivery.outbox import (
    DEAD,
    DELIVERED,
    FOLDED,
    OUTBOX_FILE,
    PENDING,
    SENDING,
    SUPERSEDED,
    Outbox,
)
from afs_callbacks.delivery.sender import ChannelWorker, RetryPolicy
from afs_callbacks.delivery.writer import Handover, Ready, Writer
from afs_callbacks.events import NotificationEvent

log = get_logger(__name__)

#: Seconds ``close()`` may spend storing queued events, whatever its flush timeout.
STORE_AT_CLOSE = 2.0


@dataclass(frozen=True)
class FlushReport:
    """What a flush achieved, per channel: delivered and dead during it, pending after it.

    ``by_channel`` also counts what ended unsent during it: ``superseded`` (stale progress
    of a run that moved on or ended) and ``folded`` (held back by the channel's budget and
    named in a digest).
    """

    delivered: int
    dead: int
    pending: int
    by_channel: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is left pending and nothing died during the flush."""
        return self.pending == 0 and self.dead == 0


def budget_policy(settings: Settings) -> BudgetPolicy | None:
    """The channels' message budget from the core settings; None when ``AFS_BURST=0``."""
    if settings.burst <= 0:
        return None
    return BudgetPolicy(burst=settings.burst, interval=settings.pace)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The senders' retry policy from the core settings."""
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        base=settings.retry_base,
        cap=settings.retry_cap,
        max_retry_after=settings.max_retry_after,
        send_timeout=settings.send_timeout,
        max_age=settings.max_age,
    )


class Lifecycle:
    """The store, its writer and the channel senders of one manager.

    Args:
        state_dir: folder of the outbox file.
        policy: retry policy for the senders.
        on_open: called on the writer thread once the store file first opens (housekeeping,
            reports about runs that vanished earlier).
        budget: each channel's message budget (burst, then pace); None: no budget.
    """

    def __init__(
        self,
        state_dir: str,
        policy: RetryPolicy,
        on_open: Callable[[], None] | None = None,
        *,
        budget: BudgetPolicy | None = None,
    ) -> None:
        self.path = os.path.join(state_dir, OUTBOX_FILE)
        self.policy = policy
        self.budget = budget
        self._on_open = on_open
        self._lock = threading.RLock()
        self._progress = threading.Condition()
        self._store: Outbox | None = None
        self._writer: Writer | None = None
        self._workers: dict[str, ChannelWorker] = {}
        self._stopping = False
        #: Listeners of other processes' writes, told by the senders' idle looks.
        self.changes = StoreChanges(self._store_version, self._senders_alive)
        # Flush reports count what finished since the previous report (or since creation),
        # so a message the sender delivered just before flush() is not missed.
        self._report_mark = time.time()

    # Parts, made lazily (a manager that sends nothing opens no file) ---------------------------

    @property
    def store(self) -> Outbox:
        """The store (no I/O: the writer thread opens the file)."""
        with self._lock:
            if self._store is None:
                self._store = Outbox(self.path, tolerant=True)
            return self._store

    @property
    def writer(self) -> Writer:
        """The writer thread's handle."""
        with self._lock:
            if self._writer is None:
                self._writer = Writer(self.store, self._wake, self._on_open)
            return self._writer

    @property
    def started(self) -> bool:
        """Whether anything was handed over (so there is something to flush or close)."""
        return self._writer is not None or self._store is not None

    def opened_store(self) -> Outbox:
        """The store with its file opened now, on this thread (for the CLI's reads)."""
        store = self.store
        store.open()
        return store

    def worker(self, name: str, handler: NotificationHandler) -> ChannelWorker:
        """The sender of channel ``name``, started unless delivery is stopping."""
        worker = self._workers.get(name)  # the common case takes no lock (see Writer.put)
        if worker is not None and worker.handler is handler and worker.alive:
            return worker
        with self._lock:
            worker = self._workers.get(name)
            if worker is None or worker.handler is not handler:
                worker = ChannelWorker(
                    name,
                    handler,
                    self.store,
                    self.policy,
                    self._on_progress,
                    budget=self.budget,
                    on_version=self.changes.observed,
                )
                self._workers[name] = worker
            if not self._stopping:
                worker.start()
            return worker

    def prepare(self, channels: Sequence[tuple[str, NotificationHandler]]) -> None:
        """Start the writer (it opens the store at once) and the senders of ``channels``
        now, before a run begins, rather than at its first event."""
        self.writer.start()
        for name, handler in channels:
            self.worker(name, handler)
        ensure_exit_hook()

    def forget_worker(self, name: str, timeout: float) -> None:
        """Stop and drop the sender of a channel that was unregistered."""
        with self._lock:
            worker = self._workers.pop(name, None)
        if worker is not None:
            worker.stop(timeout=timeout)

    # Handing over --------------------------------------------------------------------------------

    def hand_over(self, item: Handover, *, hurry: bool = False) -> None:
        """Queue ``item`` for the writer (a deque append: never waits on disk). ``hurry``:
        some channel takes it, so it is stored without gathering."""
        self.writer.put(item, hurry=hurry)
        ensure_exit_hook()

    def store_queued(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until what is queued is stored: written to the
        file, or kept in memory by a faulted store. Never waits on a network."""
        return self.writer.drain(timeout)

    def attach(self, event: NotificationEvent) -> None:
        """Replace the stored ``event`` (same id) and send its held deliveries now."""
        if self.store.attach(event):
            with self._lock:
                channels = dict.fromkeys(self._workers, True)
            self._wake(channels)

    def ready(self, event: NotificationEvent, targets: Sequence[tuple[str, NotificationHandler]]) -> Ready:
        """``event`` with its channels' names, their senders started (admission's last step)."""
        for name, handler in targets:
            self.worker(name, handler)
        return event, tuple(name for name, _ in targets)

    def _wake(self, channels: dict[str, bool]) -> None:
        """Wake the senders of ``channels``: name -> whether a new row skips the budget."""
        with self._lock:
            workers = [
                (self._workers[name], exempt) for name, exempt in channels.items() if name in self._workers
            ]
        for worker, exempt in workers:
            worker.wake(budgeted=not exempt)

    def _store_version(self) -> int | None:
        return self.store.data_version()

    def _senders_alive(self) -> int:
        return sum(1 for worker in list(self._workers.values()) if worker.alive)

    def _on_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    # Flush and close --------------------------------------------------------------------------------

    def flush(
        self, channels: Sequence[tuple[str, NotificationHandler]], timeout: float | None
    ) -> FlushReport:
        """Store what is queued, then try every pending message of ``channels`` now (each at
        least once; one whose retry is due before the deadline again). Never raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.writer.drain(timeout)
            store = self.store
            store.reclaim_orphans()
            workers = [self.worker(name, handler) for name, handler in channels]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            flush_workers(workers, left, self._progress)
            now = time.time()
            finished = store.finished_between(self._report_mark, now)
            self._report_mark = now
            return _report(finished, store.counts())
        except Exception as error:  # a broken store must not reach the caller
            log.error("afs-callbacks: flush could not finish: %s", error)
            return FlushReport(0, 0, 0)

    def close(
        self, channels: Sequence[tuple[str, NotificationHandler]], timeout: float
    ) -> FlushReport | None:
        """Flush within ``timeout`` (when anything was handed over), stop the senders and the
        writer, close the file. Undelivered messages stay pending in the file.

        Storing what is queued comes first and may take up to :data:`STORE_AT_CLOSE` seconds
        even with a shorter ``timeout``: a stored message is sent by the next run, a lost
        one never.
        """
        report = None
        if self.started:
            started = time.monotonic()
            self.writer.drain(max(timeout, STORE_AT_CLOSE))
            report = self.flush(channels, max(0.0, timeout - (time.monotonic() - started)))
        self.changes.stop()
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for worker in workers:
            worker.stop(timeout=0.5)
        if self._writer is not None:
            self._writer.stop(timeout=1.0)
        if self._store is not None:
            try:
                self._store.close()
            except Exception as error:
                log.error("afs-callbacks: closing the history failed: %s", error)
        return report

    def after_fork_in_child(self) -> None:
        """Threads do not survive ``fork()``; locks may have been held by one that did not."""
        self._lock = threading.RLock()
        self._progress = threading.Condition()
        self._workers = {}
        self.changes.after_fork_in_child()
        if self._writer is not None:
            self._writer.after_fork_in_child()


def _report(
    finished: Mapping[str, Mapping[str, int]], counts: Mapping[str, Mapping[str, int]]
) -> FlushReport:
    by_channel: dict[str, dict[str, int]] = {}
    for channel in set(finished) | set(counts):
        done, now = finished.get(channel, {}), counts.get(channel, {})
        by_channel[channel] = {
            "delivered": done.get(DELIVERED, 0),
            "dead": done.get(DEAD, 0),
            "pending": now.get(PENDING, 0) + now.get(SENDING, 0),
            "superseded": done.get(SUPERSEDED, 0),
            "folded": done.get(FOLDED, 0),
        }
    return FlushReport(
        delivered=sum(c["delivered"] for c in by_channel.values()),
        dead=sum(c["dead"] for c in by_channel.values()),
        pending=sum(c["pending"] for c in by_channel.values()),
        by_channel=by_channel,
    )


# Process exit and fork ---------------------------------------------------------------------------


class Closable(Protocol):
    """What the exit and fork hooks need of a manager."""

    def close(self, timeout: float | None = None) -> object:
        """Flush (bounded) and stop."""

    def _after_fork_in_child(self) -> None:
        """Reset threads and locks in a forked child."""


_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_exit_hook_installed = False


def track(manager: Closable) -> None:
    """Close ``manager`` at exit and reset it in forked children."""
    _open.add(manager)


def ensure_exit_hook() -> None:
    """Install the exit flush once, when the first event is handed over."""
    global _exit_hook_installed
    if not _exit_hook_installed:
        _exit_hook_installed = True
        atexit.register(close_all_at_exit)


def close_all_at_exit() -> None:
    """Close every open manager (each bounded by its ``AFS_EXIT_FLUSH_TIMEOUT``)."""
    for manager in list(_open):
        try:
            manager.close()
        except Exception as error:
            log.error("afs-callbacks: closing at exit failed: %s", error)


def _after_fork_in_child() -> None:
    for manager in list(_open):
        manager._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
