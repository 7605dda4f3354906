"""Telling listeners that another process wrote to the store, without a thread of its own.

Every idle sender already looks once a second at SQLite's ``PRAGMA data_version`` (a
number that changes when another connection commits), so that rows another process queued
are sent. :class:`StoreChanges` piggy-backs on those looks: each sender hands it the
number it read, and when the number moved the listeners are called, on that sender's
thread, once per change whichever sender saw it first. A run's control listens this way
for the commands ``afs-notify stop``, the dashboard or a chat poller wrote
(:mod:`afs_callbacks.control.run`): no extra wake-up while a sender is there to look.

A process with no sender (no channel at all) has nobody looking; then, and only while
someone listens, a small thread (``afs-store-changes``) looks once a second itself, and
gives way as soon as a sender exists. Writes made through this process's own connection
do not move the number: whoever makes them calls :meth:`StoreChanges.poke`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from afs_callbacks._log import get_logger

log = get_logger(__name__)

#: Seconds between the fallback thread's looks (the senders' idle poll is the same).
LOOK_SECONDS = 1.0

Listener = Callable[[], None]


class StoreChanges:
    """Listeners of foreign writes to one store (see the module docstring).

    Args:
        version: reads the store's ``data_version`` (None or -1 when it cannot).
        senders: how many sender threads are alive (they do the looking).
    """

    def __init__(self, version: Callable[[], int | None], senders: Callable[[], int]) -> None:
        self._version = version
        self._senders = senders
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._seen: int | None = None
        self._fallback: threading.Thread | None = None
        self._stop = threading.Event()

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener()`` after each foreign write (on a background thread; it must
        not raise or block long); returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)
        self._ensure_looker()

        def unlisten() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unlisten

    def observed(self, version: int | None) -> None:
        """A sender read ``version``: call the listeners if it moved (cheap when nobody
        listens or nothing changed: two attribute reads)."""
        if not self._listeners or version is None or version == self._seen:
            return
        with self._lock:
            if version == self._seen:
                return
            self._seen = version
        self._call()

    def poke(self) -> None:
        """This process wrote something a listener wants (its own writes do not move
        ``data_version``): call the listeners now, on the caller's thread."""
        self._call()

    def stop(self) -> None:
        """Drop the listeners and end the fallback thread."""
        with self._lock:
            self._listeners.clear()
        self._stop.set()

    def after_fork_in_child(self) -> None:
        """Threads do not survive ``fork()``; the child listens afresh."""
        self._lock = threading.Lock()
        self._listeners = []
        self._fallback = None
        self._seen = None
        self._stop = threading.Event()

    def _call(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("afs-callbacks: a store listener failed")

    def _ensure_looker(self) -> None:
        with self._lock:
            if self._senders() or (self._fallback is not None and self._fallback.is_alive()):
                return
            self._stop.clear()
            self._fallback = threading.Thread(target=self._look, name="afs-store-changes", daemon=True)
            self._fallback.start()

    def _look(self) -> None:
        while not self._stop.wait(LOOK_SECONDS):
            if not self._listeners or self._senders():
                return  # a sender looks now (or nobody listens)
            try:
                version = self._version()
            except Exception:
                version = None
            self.observed(version)


__all__ = ["LOOK_SECONDS", "StoreChanges"]
