"""Helpers for the dashboard tests: a real history file filled through the Outbox, a real
dashboard server on loopback, and plain HTTP requests to it (http.client, so a test can
send whatever Host, Origin and Cookie headers a browser or an attacker's page would)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from afs_callbacks.dashboard import DashboardConfig, DashboardServer, make_server, serve_in_thread
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.runstate import MetricPoint, RunState


@dataclass
class Answer:
    """One HTTP answer: status, headers (lower-case names) and body text."""

    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.text)


def request(
    url: str,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> Answer:
    """Send one request to the server at ``url`` (no redirects followed)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read().decode(),
        )
    finally:
        conn.close()


@contextmanager
def running_dashboard(path: Path, **options: Any) -> Iterator[DashboardServer]:
    """A dashboard over the history at ``path``, on a free loopback port, for the block."""
    server = make_server("127.0.0.1", 0, DashboardConfig(path=str(path), **options))
    serve_in_thread(server)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def base_url(server: DashboardServer) -> str:
    """``http://127.0.0.1:PORT`` without the token query."""
    return f"http://127.0.0.1:{server.server_address[1]}"


def run_state(run_id: str, *, status: str = "running", started: float, **facts: Any) -> RunState:
    """A run state with sensible facts; ``facts`` override them."""
    values: dict[str, Any] = dict(
        run_id=run_id,
        model=facts.pop("model", "tiny-net"),
        host="workstation",
        status=status,
        started_at=started,
        updated_at=started + 60,
        ended_at=None if status == "running" else started + 120,
        epoch=2,
        total_epochs=4,
        step=20,
        total_steps=40,
        metrics={"loss": 0.5, "val_loss": 0.6},
        monitor="val_loss",
        best=0.6,
        best_epoch=2,
        cost=1.25,
    )
    values.update(facts)
    return RunState(**values)


def curve(series: str, count: int, *, axis: str = "step") -> list[MetricPoint]:
    """``count`` points of a falling curve."""
    return [MetricPoint(series, float(x), 1.0 / (x + 1), axis) for x in range(count)]


def add_event(
    outbox: Outbox,
    run_id: str | None,
    title: str,
    channels: Sequence[str],
    *,
    event_type: EventType = EventType.CUSTOM,
    level: NotificationLevel = NotificationLevel.INFO,
    created: float | None = None,
) -> NotificationEvent:
    """Queue one event for ``channels`` (pending everywhere until the test marks it)."""
    from datetime import datetime, timezone

    when = datetime.fromtimestamp(created if created is not None else time.time(), tz=timezone.utc)
    context = {"run_id": run_id, "model": "tiny-net"} if run_id else {}
    event = NotificationEvent(event_type, level, title, "body", context, timestamp=when)
    outbox.enqueue(event, channels)
    return event


def wait_for(condition: Any, *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
