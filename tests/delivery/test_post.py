"""``NotificationManager.post``: the tracker's hand-over. The caller pays a queue append;
admission (repeats, redaction, bounds, routing) runs on the writer thread, and what is
stored and sent is exactly what ``emit`` would have stored and sent."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from afs_callbacks.delivery import admission
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.redaction import register_secret
from afs_callbacks.testing import capturing_manager


def run_event(title: str, message: str = "", **context: object) -> NotificationEvent:
    return NotificationEvent(
        EventType.EPOCH_COMPLETED, NotificationLevel.INFO, title, message, {"run_id": "r1", **context}
    )


def test_a_posted_event_is_admitted_off_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admitting: list[str] = []
    real = admission.bounded_event

    def recorded(event: NotificationEvent, base: dict[str, object]) -> NotificationEvent:
        admitting.append(threading.current_thread().name)
        return real(event, base)

    monkeypatch.setattr("afs_callbacks.delivery.admission.bounded_event", recorded)
    manager, channel = capturing_manager(tmp_path, verbosity="verbose")
    with manager:
        manager.post(run_event("Epoch 1/3 completed: tiny"))
        (event,) = channel.wait_for()
    assert event.title == "Epoch 1/3 completed: tiny" and event.context["host"]
    assert admitting == ["afs-writer"]


def test_a_posted_secret_is_masked_before_it_is_stored_or_sent(tmp_path: Path) -> None:
    secret = "pst-9f8e7d6c5b4a39281706"
    register_secret(secret)
    manager, channel = capturing_manager(tmp_path, verbosity="verbose")
    with manager:
        manager.post(run_event(f"Epoch 1 {secret}", f"echo {secret}", note=secret))
        (event,) = channel.wait_for()
    assert secret not in event.title + event.message + str(event.context)
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        stored = " ".join(str(row) for row in db.execute("SELECT * FROM events"))
    assert "Epoch 1" in stored and secret not in stored


def test_posted_and_notified_events_are_stored_in_order_and_repeats_collapse(tmp_path: Path) -> None:
    manager, channel = capturing_manager(tmp_path, verbosity="verbose")
    with manager:
        manager.post(run_event("first", key="epoch-1"))
        manager.post(run_event("first", key="epoch-1"))  # the same text and key: a true repeat
        manager.post(run_event("first, other numbers", key="epoch-1"))  # not a repeat (#22)
        manager.notify("second")
        manager.post(run_event("third", key="epoch-2"))
        manager.flush(10)
        sent = sorted(event.title for event in channel.events)
        with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
            stored = [title for (title,) in db.execute("SELECT title FROM events ORDER BY rowid")]
    # The order they were handed over; only the true repeat collapsed.
    assert stored == ["first", "first, other numbers", "second", "third"]
    # Sent by urgency; earlier progress may be superseded by "third" (stale, the same run).
    assert {"second", "third"} <= set(sent) <= {"first", "first, other numbers", "second", "third"}


def test_a_disabled_manager_takes_no_posted_event(tmp_path: Path) -> None:
    manager, channel = capturing_manager(tmp_path, enabled=False)
    with manager:
        manager.post(run_event("nothing"))
        manager.flush(1)
    assert channel.events == [] and not (tmp_path / "outbox.sqlite3").exists()
