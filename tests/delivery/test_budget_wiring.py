"""The channel budget end to end: ``AFS_BURST``/``AFS_PACE`` from the environment, through
``NotificationManager.from_env`` and a real webhook channel, to a loopback receiver.

A loop calling ``notify()`` with a new title each time gets the burst out at once; the rest
arrives as one digest naming the first held titles and how many there were.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.hook import wait_until

from afs_callbacks.delivery.priority import FOLDED
from afs_callbacks.events import EventType
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver


def test_a_flood_of_distinct_notifications_is_a_burst_then_one_digest(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    env = {
        "AFS_STATE_DIR": str(tmp_path),
        "AFS_BURST": "5",
        "AFS_PACE": "0.5",
        "AFS_CONSOLE": "never",
        "WEBHOOK_URL": receiver.url("/hook"),
    }
    manager = NotificationManager.from_env(env, env_file=False)
    assert manager.settings.burst == 5 and manager.settings.pace == 0.5
    try:
        for n in range(1, 101):
            assert manager.notify(f"note {n}") is not None
        receiver.wait_for(6, timeout=20)
        manager.flush(timeout=5)
        posted = [request.json() for request in receiver.requests]
        folded = manager.outbox.history(state=FOLDED, limit=200)
    finally:
        manager.close(timeout=1)
    assert [body["title"] for body in posted[:5]] == [f"note {n}" for n in range(1, 6)]
    digest = posted[5]
    assert digest["event_type"] == "digest" and digest["control"]["digest_count"] == 95
    assert digest["title"] == "95 messages held back (too many at once)"
    assert digest["message"].splitlines()[:2] == ["• note 6", "• note 7"]
    assert "… and 90 more." in digest["message"]
    assert len(posted) == 6  # nothing held back was also sent one by one
    assert len(folded) == 95


def test_a_sender_waiting_for_its_budget_is_not_woken_by_rows_that_would_wait_too(
    tmp_path: Path, receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the burst is spent, every notification the writer stores would wait for the
    budget: the sender does not look at each batch (a queue read to claim a held row, then
    its release; at 10,000 a second the sender's looks took as much CPU as the writer, and
    the storage window doubled). An alert skips the budget: it still wakes the sender, and
    goes at once."""
    env = {
        "AFS_STATE_DIR": str(tmp_path),
        "AFS_BURST": "2",
        "AFS_PACE": "600",
        "AFS_CONSOLE": "never",
        "WEBHOOK_URL": receiver.url("/hook"),
    }
    manager = NotificationManager.from_env(env, env_file=False)
    try:
        for n in range(1, 4):
            manager.notify(f"note {n}")
        receiver.wait_for(2, timeout=20)
        worker = manager._delivery.worker("webhook", manager.handlers["webhook"])
        wait_until(lambda: worker._held, what="the third note held for the budget")
        claims: list[str] = []
        real_claim = worker.outbox.claim

        def counted(*args: object, **kwargs: object) -> object:
            claims.append("claim")
            return real_claim(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(worker.outbox, "claim", counted)
        for n in range(4, 54):
            manager.notify(f"note {n}")
            assert manager._delivery.store_queued(5)  # one stored batch, one wake each
        assert claims == []
        manager.notify("NaN loss", event_type=EventType.NAN_DETECTED, level="error")
        receiver.wait_for(3, timeout=20)
        assert receiver.requests[2].json()["title"] == "NaN loss"
        assert claims  # the alert woke it
    finally:
        manager.close(timeout=1)
