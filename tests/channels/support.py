"""What the channel tests share: managers with fast retries, reading a delivery back from the
outbox, a ``notify`` with each file's defaults, pacing turned off, and the secret-leak checks.

The fixtures here (``manager_for``, ``manager``) are bound to a name in each test module
that uses them (``manager = support.manager``): pytest registers a fixture it finds among a
module's attributes. (Imported by name instead, ruff would call the test arguments that
use it redefinitions of an unused import.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.channels.base import NotificationHandler
from afs_callbacks.config import Settings
from afs_callbacks.delivery.outbox import Delivery
from afs_callbacks.events import NotificationEvent
from afs_callbacks.manager import NotificationManager

# The outbox database and its WAL/SHM companions inside a state directory.
OUTBOX_FILES = "outbox.sqlite3*"


@pytest.fixture
def manager_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., NotificationManager]]:
    """Builds a manager holding one channel, under its class's ``name``, with retries fast
    enough for tests (more settings as keywords) and the channel class's pacing off (the
    services' 1 s pacing is real behaviour, but tests must not spend seconds on it);
    closes every one built at teardown."""
    managers: list[NotificationManager] = []

    def build(handler: NotificationHandler, **settings: Any) -> NotificationManager:
        monkeypatch.setattr(type(handler), "min_interval", 0.0)
        config = Settings(
            state_dir=tmp_path / "state",
            retry_base=0.05,
            retry_cap=0.1,
            dedup_window=0,
            console="never",
            **settings,
        )
        manager = NotificationManager({handler.name: handler}, settings=config)
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.close(timeout=0)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotificationManager]:
    """A manager with no channel yet (tests register theirs) and fast retries."""
    settings = Settings(
        state_dir=tmp_path / "state", dedup_window=0, retry_base=0.01, retry_cap=0.05, console="never"
    )
    manager = NotificationManager(settings=settings)
    yield manager
    manager.close(timeout=1)


def flushed(manager: NotificationManager) -> list[str]:
    """Delivery states after a flush, oldest event first. (A flush's own counts miss what
    the sender thread finished before the flush began.)"""
    manager.flush(5)
    return [d.state for entry in reversed(manager.outbox.history()) for d in entry.deliveries]


def delivery(
    manager: NotificationManager, event: NotificationEvent, channel: str | None = None, timeout: float = 5.0
) -> Delivery:
    """The delivery row of ``event`` to ``channel`` (by default the manager's only channel).

    ``notify()`` hands the event to a writer thread (it never waits on the database), so the
    row may appear a moment later: polled for up to ``timeout`` seconds.
    """
    if channel is None:
        (channel,) = manager.handlers
    deadline = time.monotonic() + timeout
    while True:
        for entry in manager.outbox.history(limit=1000):
            if entry.event.id == event.id:
                return next(d for d in entry.deliveries if d.channel == channel)
        if time.monotonic() > deadline:
            raise AssertionError(f"event {event.id} is not in the outbox")
        time.sleep(0.01)


def wait_delivery(
    manager: NotificationManager,
    event: NotificationEvent,
    condition: Callable[[Delivery], bool],
    timeout: float = 10.0,
) -> Delivery:
    """Poll the outbox until the delivery of ``event`` meets ``condition``."""
    deadline = time.monotonic() + timeout
    while True:
        row = delivery(manager, event)
        if condition(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery did not reach the expected state: {row}")
        time.sleep(0.01)


def notify_with(**defaults: Any) -> Callable[..., NotificationEvent]:
    """``notify(manager, **overrides)``: ``manager.notify`` with ``defaults`` for the
    arguments not given, asserting that an event was made."""

    def notify(manager: NotificationManager, **overrides: Any) -> NotificationEvent:
        event = manager.notify(**{**defaults, **overrides})
        assert event is not None
        return event

    return notify


def assert_not_shown(texts: Iterable[str], *secrets: str) -> None:
    """None of ``secrets`` appears in any of ``texts`` (logs, errors, reprs, descriptions)."""
    for text in texts:
        for secret in secrets:
            assert secret not in text, text


def assert_not_stored(state_dir: str | Path, *secrets: str, pattern: str = "*") -> None:
    """None of ``secrets`` appears in the raw bytes of the state files matching ``pattern``
    (the SQLite database, its WAL and whatever else is there): what ``history`` shows is
    not all that is on disk."""
    for path in Path(state_dir).glob(pattern):
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path.name
