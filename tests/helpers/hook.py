"""A minimal HTTP channel for the core tests: POSTs the event as JSON to one URL.

It is what a real channel built on :class:`HttpChannel` does, without any service's
formatting, so delivery tests exercise the real session, timeouts and answer handling.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from afs_callbacks.channels._http import HttpChannel
from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.config import Settings
from afs_callbacks.events import NotificationEvent
from afs_callbacks.manager import NotificationManager
from afs_callbacks.redaction import mask_url, register_secret
from afs_callbacks.testing import ReceivedRequest, Reply


class HookChannel(HttpChannel):
    """POST ``{"id", "title", "event"}`` to ``url``; the URL is treated as a secret."""

    name: ClassVar[str] = "hook"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        register_secret(url)
        self.url = url

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Post the event and classify the answer."""
        return self.deliver(self.url, json={"id": event.id, "title": event.title, "event": event.to_dict()})

    def describe(self) -> str:
        """The URL, masked."""
        return mask_url(self.url)


class PacedHookChannel(HookChannel):
    """A hook whose service allows one message per 0.3 s."""

    name: ClassVar[str] = "paced"
    min_interval: ClassVar[float] = 0.3


def event_ids(requests: Sequence[ReceivedRequest]) -> list[str]:
    """The event ids posted in ``requests`` (a receiver's ``.requests``), in order."""
    return [request.json()["id"] for request in requests]


def manager_for(
    state_dir: str | os.PathLike[str], handlers: Mapping[str, NotificationHandler], **settings: object
) -> NotificationManager:
    """A manager with ``handlers``, its outbox under ``state_dir``, dedup and the channels'
    budget off unless asked (these tests send many distinct messages on purpose)."""
    options: dict[str, object] = {"dedup_window": 0.0, "burst": 0, **settings}
    return NotificationManager(dict(handlers), settings=Settings(state_dir=os.fspath(state_dir), **options))  # type: ignore[arg-type]


class Gate:
    """A receiver responder that holds requests until :meth:`open` (a service that hangs).

    ``arrived`` is set as soon as a request is inside the server, so a test can tell an
    in-flight request from one that never left.
    """

    def __init__(self, then: Reply | None = None, *, hold: int = 1_000_000) -> None:
        self.arrived = threading.Event()
        self._open = threading.Event()
        self._then = then or Reply(200, b"ok")
        self._hold = hold
        self._held = 0
        self._lock = threading.Lock()

    def __call__(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            holding = self._held < self._hold
            self._held += holding
        self.arrived.set()
        if holding:
            self._open.wait(30)
        return self._then

    def open(self) -> None:
        """Let every held and later request through."""
        self._open.set()


def responder_from(
    answers: Sequence[Reply], then: Reply, log: list[float] | None = None
) -> Callable[[ReceivedRequest], Reply]:
    """A responder giving ``answers`` in order, then ``then``; appends arrival times to ``log``."""
    queue = list(answers)
    lock = threading.Lock()

    def respond(request: ReceivedRequest) -> Reply:
        with lock:
            if log is not None:
                log.append(time.monotonic())
            return queue.pop(0) if queue else then

    return respond


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def first_delivery_attempts(manager: NotificationManager) -> int:
    """Attempts recorded for the newest event's first delivery (0 while none is recorded)."""
    history = manager.outbox.history(limit=1)
    if not history or not history[0].deliveries or history[0].deliveries[0].state == "sending":
        return 0
    return history[0].deliveries[0].attempts
