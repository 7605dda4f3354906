"""The channel budget end to end: ``AFS_BURST``/``AFS_PACE`` from the environment, through
``NotificationManager.from_env`` and a real webhook channel, to a loopback receiver.

A loop calling ``notify()`` with a new title each time gets the burst out at once; the rest
arrives as one digest naming the first held titles and how many there were.
"""

from __future__ import annotations

from pathlib import Path

from afs_callbacks.delivery.priority import FOLDED
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
