"""Helpers for testing code that notifies: a capturing channel and a throwaway manager.

:class:`LoopbackReceiver` is a real HTTP server on 127.0.0.1 that records what it is sent
and answers as scripted (429 with ``Retry-After``, 5xx, 404, slow answers), for testing
channels end to end without a network.

Example::

    from afs_callbacks.testing import capturing_manager

    def test_my_training_reports_nan(tmp_path):
        manager, captured = capturing_manager(tmp_path)
        run_my_training(manager)
        events = captured.wait_for(lambda e: e.event_type == EventType.NAN_DETECTED)
        assert events[0].context["step"] == 120
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.config import Settings
from afs_callbacks.events import NotificationEvent
from afs_callbacks.manager import NotificationManager


class CapturingHandler(NotificationHandler):
    """A channel that keeps every event it is sent, in order.

    Args:
        results: answers to give for the next sends, in order (e.g. two
            ``DeliveryResult.retry(...)`` then success); once used up, every send succeeds.
        name: channel name shown in history.
    """

    name: ClassVar[str] = "capture"
    # Each event is captured on its own, in the order its run reported them: a test sees
    # the same events whatever the timing (a run's end never tells the ones still waiting
    # as one story here, see afs_callbacks.delivery.story).
    tells_stories: ClassVar[bool] = False

    def __init__(self, results: Iterable[DeliveryResult] = ()) -> None:
        self.events: list[NotificationEvent] = []
        self.attempts = 0
        self._results = deque(results)
        self._changed = threading.Condition()

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Record the attempt; deliver unless a scripted result says otherwise."""
        with self._changed:
            self.attempts += 1
            result = self._results.popleft() if self._results else DeliveryResult.delivered()
            if result.ok:
                self.events.append(event)
            self._changed.notify_all()
        return result

    def wait_for(
        self,
        predicate: Callable[[NotificationEvent], bool] = lambda _: True,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[NotificationEvent]:
        """Block until ``count`` delivered events match ``predicate``; return the matches.

        Raises:
            AssertionError: the timeout passed first (the message lists what did arrive).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [event for event in self.events if predicate(event)]
                if len(matches) >= count:
                    return matches
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{e.event_type.value}: {e.title}" for e in self.events]
                    raise AssertionError(
                        f"expected {count} matching event(s) within {timeout} s, got "
                        f"{len(matches)}; delivered so far: {seen}"
                    )
                self._changed.wait(remaining)

    def describe(self) -> str:
        """Where messages go."""
        return "memory"


def capturing_manager(
    state_dir: str | os.PathLike[str], **settings: object
) -> tuple[NotificationManager, CapturingHandler]:
    """A manager writing its outbox under ``state_dir`` with one :class:`CapturingHandler`.

    Keyword arguments override :class:`~afs_callbacks.config.Settings` fields (e.g.
    ``dedup_window=0``).
    """
    handler = CapturingHandler()
    config = Settings(state_dir=os.fspath(state_dir), **settings)  # type: ignore[arg-type]
    manager = NotificationManager({"capture": handler}, settings=config)
    return manager, handler


@dataclass(frozen=True)
class ReceivedRequest:
    """One request a :class:`LoopbackReceiver` got."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    #: The status the receiver answered with.
    status: int = 0

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A scripted answer: status, headers, body (bytes, str, or JSON-able), and a delay."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """The body as bytes and the headers, with a JSON content type for JSON bodies."""
        headers = dict(self.headers)
        if isinstance(self.body, bytes):
            return self.body, headers
        if isinstance(self.body, str):
            return self.body.encode("utf-8"), headers
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(self.body).encode("utf-8"), headers


class LoopbackReceiver:
    """A threaded HTTP server on 127.0.0.1 that records requests and answers as scripted.

    Answers come from :meth:`reply` (a queue, used first) or ``responder`` (a function of
    the request), else ``default``. A ``responder`` can play a whole service (keep the
    messages it was sent, answer edits of them); it is called on the server's threads,
    one per request, so one that keeps state takes its own lock. Every method is answered
    (``GET``, ``POST``, ``PUT``, ``PATCH``, ``DELETE``). Use as a context manager, or call
    :meth:`close`.

    Args:
        default: the answer when neither the queue nor ``responder`` gives one
            (``200 ok``).
        responder: a function of the request giving the answer, or None for ``default``.
        delay: seconds every answer takes on top of its own ``Reply.delay`` (a slow
            service); the attribute can be changed while the server runs.

    Example::

        with LoopbackReceiver() as receiver:
            receiver.reply(Reply(429, headers={"Retry-After": "1"}))
            ...  # point a channel at receiver.url("/hook")
            receiver.wait_for(count=2)
    """

    def __init__(
        self,
        default: Reply | None = None,
        responder: Callable[[ReceivedRequest], Reply | None] | None = None,
        *,
        delay: float = 0.0,
    ) -> None:
        self.requests: list[ReceivedRequest] = []
        self.default = default or Reply(200, b"ok")
        self.responder = responder
        self.delay = delay
        self._queue: deque[Reply] = deque()
        self._changed = threading.Condition()
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Without this, Nagle's algorithm and delayed ACKs add ~40 ms to every answer.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = ReceivedRequest(
                    self.command, parts.path, parse_qs(parts.query), dict(self.headers), body
                )
                reply = receiver._next_reply(request)
                request = replace(request, status=reply.status)
                delay = reply.delay + receiver.delay
                if delay:
                    time.sleep(delay)  # the slow service being simulated
                # Recorded before answering: once the client has its answer (and the outbox
                # says "delivered"), the request must already be in ``requests``.
                with receiver._changed:
                    receiver.requests.append(request)
                    receiver._changed.notify_all()
                payload, headers = reply.encoded()
                self.send_response(reply.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll interval: shutdown() waits for one, and tests close a server each.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        """The full URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def reply(self, *replies: Reply) -> None:
        """Queue answers for the next requests, in order."""
        with self._changed:
            self._queue.extend(replies)

    def _next_reply(self, request: ReceivedRequest) -> Reply:
        with self._changed:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            answer = self.responder(request)
            if answer is not None:
                return answer
        return self.default

    def wait_for(
        self,
        count: int = 1,
        *,
        predicate: Callable[[ReceivedRequest], bool] = lambda _: True,
        timeout: float = 10.0,
    ) -> list[ReceivedRequest]:
        """Block until ``count`` answered requests match ``predicate``; return them.

        Raises:
            AssertionError: the timeout passed first.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [r for r in self.requests if predicate(r)]
                if len(matches) >= count:
                    return matches
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} request(s) within {timeout} s, got {len(matches)}"
                    )
                self._changed.wait(remaining)

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
