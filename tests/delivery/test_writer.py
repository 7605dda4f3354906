"""The writer thread: a run's progress that no channel takes waits for company, and
anything a channel takes ends the wait at once. A real outbox file; the gather is made
long, so the test does not depend on the machine's speed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from afs_callbacks.delivery import writer as writer_module
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.delivery.writer import Handover, Ready, Writer
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from tests.helpers.hook import wait_until


def event(kind: EventType, title: str) -> NotificationEvent:
    return NotificationEvent(kind, NotificationLevel.INFO, title, "", {"run_id": "r1"})


def to(*channels: str) -> writer_module.Admit:
    def admit(item: NotificationEvent, verbosity: str) -> list[Ready]:
        return [(item, channels)]

    return admit


def test_unpushed_progress_is_stored_with_the_next_pushed_event_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "PROGRESS_GATHER_SECONDS", 60.0)
    store = Outbox(str(tmp_path / "outbox.sqlite3"), tolerant=True)
    writes: list[list[str]] = []
    real_write = store.write

    def counted(items: Sequence[Ready], *args: object, **kwargs: object) -> bool:
        writes.append([item.title for item, _ in items])
        return real_write(items, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write", counted)
    woken: list[dict[str, bool]] = []
    writer = Writer(store, woken.append)
    try:
        for epoch in (1, 2, 3):
            assert writer.put(Handover(event(EventType.EPOCH_COMPLETED, f"epoch {epoch}"), "normal", to()))
        writer.put(Handover(event(EventType.NAN_DETECTED, "NaN"), "normal", to("slack")), hurry=True)
        # Long before the 60 s gather is over: the pushed event ended it.
        wait_until(lambda: woken, timeout=20, what="the writer's first write")
        assert writes == [["epoch 1", "epoch 2", "epoch 3", "NaN"]]
        assert woken == [{"slack": True}]  # no sender for progress no channel takes; a NaN skips budgets
    finally:
        writer.stop()
        store.close()
