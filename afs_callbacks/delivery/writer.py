"""The writer thread: the only place the training process writes events and run states.

``notify()``, ``post()`` and ``update_run()`` hand their work to :class:`Writer` and return
at once (a deque append); the thread stores it in batches, one transaction for many events,
so eight processes sharing a state directory do not queue on SQLite's write lock event by
event, and then wakes the senders. The events and run states of one turn share one
transaction, and each table's rows go in one statement: the store's work holds the GIL for
microseconds per event and gives it up a handful of times per turn, never per row, so a
training thread busy in Python does not slow the turn down (see ``docs/delivery.md``, "The
storage window", for the measured bound). Each queued event is a :class:`Handover`: admission
(:mod:`afs_callbacks.delivery.admission`) runs on it once, on the caller's thread for
``notify()`` (which returns the event as stored) and here for ``post()`` (whose caller pays
only the append). A run's progress alone waits up to :data:`PROGRESS_GATHER_SECONDS` for
company; anything else is stored at once. Run states coalesce: only the latest state of a
run is written, with every metric point since the last write.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeAlias

from afs_callbacks._log import get_logger
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.delivery.priority import is_budgeted
from afs_callbacks.events import PROGRESS_TYPES, NotificationEvent
from afs_callbacks.runstate import MetricPoint, RunState

log = get_logger(__name__)

#: Events written per transaction at most.
BATCH = 5000
#: Seconds the writer spends at most admitting the events of one turn (``post()``'s events
#: are admitted here) before it stores what it has: a flood of them is stored in slices.
GATHER_SECONDS = 0.020
#: How long the writer lets events gather after a wake-up before storing them.
COALESCE_SECONDS = 0.005
#: How long a run's progress alone (epochs, improvements, run states) may gather when no
#: channel pushes it: one wake-up and one transaction for the epochs of a fast run, not one
#: each (each turn asks the training thread for the GIL several times). Anything else ends
#: the wait (pushed progress too: stored late, it would be stale on arrival), and so do a
#: flush, a close and a run's end, which drain the queue.
PROGRESS_GATHER_SECONDS = 1.0
#: Events waiting for the writer at most; past it an event is dropped (and counted).
QUEUE_LIMIT = 50_000
#: Shortest sleep of an idle writer whose faulted store is due for another try.
_MIN_IDLE = 0.01

#: An event ready to store and the channels it goes to.
Ready: TypeAlias = tuple[NotificationEvent, tuple[str, ...]]
#: Admission: what to store for an event routed at a verbosity (nothing when it is a repeat
#: held back, a repeat digest first when one is due). Never raises.
Admit: TypeAlias = Callable[[NotificationEvent, str], list[Ready]]


class Handover:
    """One event handed to the writer, and what admission makes of it.

    Admission runs once, on the first thread that asks for :meth:`admitted`: the caller's
    for ``notify()``, the writer's for ``post()``. A plain class with slots: making one is
    part of what the training thread pays per posted event.

    ``hold_until`` (epoch seconds; 0: not held): the event's deliveries are stored due at
    that time instead of at once (a run's end waits so for its chart; see
    :meth:`~afs_callbacks.delivery.outbox.Outbox.attach`).
    """

    __slots__ = ("_admit", "_ready", "event", "hold_until", "verbosity")

    def __init__(
        self, event: NotificationEvent, verbosity: str, admit: Admit, *, hold_until: float = 0.0
    ) -> None:
        self.event = event
        self.verbosity = verbosity
        self._admit = admit
        self._ready: list[Ready] | None = None
        self.hold_until = hold_until

    def admitted(self) -> list[Ready]:
        """The events to store for this one, with their channels (admitted now if not yet)."""
        if self._ready is None:
            self._ready = self._admit(self.event, self.verbosity)
        return self._ready


def written_channels(batch: Sequence[Ready]) -> dict[str, bool]:
    """The channels of a stored ``batch``, each with whether a row of it skips the channel's
    budget (an alert, a run's end): a sender waiting for its budget is woken only for those
    (:meth:`ChannelWorker.wake <afs_callbacks.delivery.sender.ChannelWorker.wake>`)."""
    woken: dict[str, bool] = {}
    for event, channels in batch:
        exempt = not is_budgeted(event)
        for channel in channels:
            woken[channel] = exempt or woken.get(channel, False)
    return woken


class Writer:
    """Stores queued events and run states on a daemon thread.

    Args:
        store: where they go.
        on_written: called with the channels of each stored batch (wakes their senders),
            each with whether a row of it skips the channel's budget (see
            :func:`written_channels`).
        on_open: called once, on the writer thread, after the store first opened.
    """

    def __init__(
        self,
        store: Outbox,
        on_written: Callable[[dict[str, bool]], None],
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._on_written = on_written
        self._on_open = on_open
        # A deque's append and popleft are atomic: the training thread takes no lock that
        # the writer could hold (a contended lock would hand the GIL away and wait for it).
        self._events: deque[Handover] = deque()
        self._runs: dict[str, tuple[RunState, list[MetricPoint]]] = {}
        self._runs_lock = threading.Lock()
        self._wake = threading.Event()
        self._hurry = threading.Event()  # set: something other than progress is queued
        self._now = threading.Event()  # set: a drain() waits, so a turn does not coalesce
        self._turned = threading.Condition()  # notified at each turn's end (drain() waits)
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._opened = False
        self._open_first = False  # start(): open the store before waiting for events
        self.dropped = 0

    # Training-thread side --------------------------------------------------------------

    def put(self, item: Handover, *, hurry: bool = False) -> bool:
        """Queue an event for storing; False (counted, logged once) when the queue is full.
        Progress that no channel takes may gather; anything else (``hurry``: some channel
        takes it) is stored at once."""
        if len(self._events) >= QUEUE_LIMIT:
            self.dropped += 1
            if self.dropped == 1:
                log.error("afs-callbacks: %d events wait to be stored; new ones are dropped", QUEUE_LIMIT)
            return False
        self._events.append(item)
        if hurry or item.event.event_type not in PROGRESS_TYPES:
            self._hurry.set()
        self._wake.set()
        if self._thread is None:
            self._ensure_thread()
        return True

    def put_run(self, state: RunState, points: Sequence[MetricPoint]) -> None:
        """Queue a run's latest state; an older queued state of the run is replaced."""
        with self._runs_lock:
            previous = self._runs.get(state.run_id)
            kept = (previous[1] if previous else []) + list(points)
            self._runs[state.run_id] = (state, kept)
        self._wake.set()
        if self._thread is None:
            self._ensure_thread()

    # Control -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread now, and open the store on it at once (a run about to begin:
        its first hand-over then starts no thread, and its first turn opens no file)."""
        self._open_first = True
        self._ensure_thread()

    def drain(self, timeout: float | None) -> bool:
        """Wait until everything queued so far is stored (or kept in memory by a faulted
        store); False when ``timeout`` ran out first."""
        self._ensure_thread()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._events or self._runs or self._busy:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if self._thread is None or not self._thread.is_alive():
                    return False
                self._now.set()
                self._hurry.set()
                self._wake.set()
                # Woken at the turn's end (a run's end waits here on the training thread:
                # a 5 ms poll was most of its cost); the timeout asks again.
                with self._turned:
                    if self._events or self._runs or self._busy:
                        self._turned.wait(0.005)
            return True
        finally:
            self._now.clear()

    def stop(self, timeout: float = 2.0) -> None:
        """Store what is queued (within ``timeout``) and end the thread."""
        self.drain(timeout)
        self._stop = True
        self._hurry.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork_in_child(self) -> None:
        """The parent stores what it queued; the child starts empty with fresh locks."""
        self._events = deque()
        self._runs = {}
        self._runs_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._now = threading.Event()
        self._turned = threading.Condition()
        self._busy = False
        self._thread = None

    @property
    def pending(self) -> int:
        """Events queued and not yet stored."""
        return len(self._events)

    # Writer thread -------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="afs-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        if self._open_first:
            try:
                self._write([], {}, {})  # opens the file, tidies it (on_open); stores nothing
            except Exception:
                log.exception("afs-callbacks: the writer thread hit an error")
        self._let_gather()  # what started the thread waits for company like a later wake-up
        while True:
            # Cleared before looking, so a put() after the look sets it and the wait returns.
            self._wake.clear()
            if not (self._events or self._runs or self.store.due_for_retry()):
                if self._stop:
                    return
                # Idle: sleep until something is handed over; a faulted store also wakes
                # the thread when its file is due for another try.
                retry_in = self.store.retry_in()
                idle = None if retry_in is None else max(retry_in, _MIN_IDLE)
                if self._wake.wait(idle) and not self._stop:
                    self._let_gather()
                continue
            self._busy = True
            self._hurry.clear()  # before taking the batch: a put() from now on hurries the next
            try:
                batch, held = self._gather()
                with self._runs_lock:
                    runs, self._runs = self._runs, {}
                self._write(batch, runs, held)
            except Exception:  # a bug here must not end the thread and strand the queue
                log.exception("afs-callbacks: the writer thread hit an error")
            finally:
                self._busy = False
                with self._turned:
                    self._turned.notify_all()

    def _let_gather(self) -> None:
        """Let a few more events arrive before a turn: one wake-up and one commit for several
        keeps this thread from asking the training thread for the GIL per event. Progress
        alone waits in one sleep, which anything hurried ends."""
        if self._hurry.is_set():
            self._now.wait(COALESCE_SECONDS)  # a drain waiting ends the gathering at once
        else:
            self._hurry.wait(PROGRESS_GATHER_SECONDS)

    def _gather(self) -> tuple[list[Ready], dict[str, float]]:
        """The next turn's events, in the order they were handed over, admitted here unless
        the caller did: up to :data:`BATCH`, or what :data:`GATHER_SECONDS` admits; and the
        held ones' release times (an end waiting for its chart), by event id."""
        batch: list[Ready] = []
        held: dict[str, float] = {}
        deadline = time.monotonic() + GATHER_SECONDS
        events = self._events
        for _ in range(min(BATCH, len(events))):
            item = events.popleft()
            batch.extend(item.admitted())
            if item.hold_until:
                held[item.event.id] = item.hold_until
            if time.monotonic() > deadline:
                break
        return batch, held

    def _open(self) -> bool:
        # A lock or a fault at the first open is retried from here, in the background; a
        # corrupted file is moved aside by the store and the fresh one opened at once.
        return self.store.open() or (self.store.healthy and self.store.open())

    def _write(
        self,
        batch: list[Ready],
        runs: dict[str, tuple[RunState, list[MetricPoint]]],
        held: dict[str, float],
    ) -> None:
        if not self._opened and (self.store.healthy or self.store.due_for_retry()) and self._open():
            self._opened = True
            if self._on_open is not None:
                self._on_open()
        if batch or runs:
            # One transaction; what the file cannot take now is kept in memory by the store
            # and written back once it can.
            self.store.write(batch, list(runs.values()), held=held)
            if batch:
                self._on_written(written_channels(batch))
        elif self.store.due_for_retry() and self.store.recover():
            self._on_written(dict.fromkeys(self.store.counts(), True))
