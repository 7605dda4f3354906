"""``afs-notify retry``: dead messages queued again, all or one channel's or one message,
run as a user's shell runs it (a real subprocess over a real history file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.testing import LoopbackReceiver
from tests.cli.helpers import afs_notify, cli_env
from tests.dashboard.support import add_event
from tests.dashboard.test_security import states


@pytest.fixture
def dead(isolated_env: Path) -> list[str]:
    """Two messages dead on email, the first also dead on slack."""
    outbox = Outbox(isolated_env / "outbox.sqlite3")
    ids = []
    for title in ("first", "second"):
        event = add_event(outbox, "run-1", title, ["email", "slack"])
        outbox.mark_dead(event.id, "email", "SMTP 535 authentication failed")
        ids.append(event.id)
    outbox.mark_dead(ids[0], "slack", "HTTP 404")
    outbox.mark_delivered(ids[1], "slack")
    outbox.close()
    return ids


def test_retry_one_channel_queues_only_its_dead_messages(isolated_env: Path, dead: list[str]) -> None:
    result = afs_notify("retry", "--channel", "email")
    assert result.returncode == 0, result.stderr
    assert "2 failed messages queued again (channel email)." in result.stdout
    after = states(isolated_env / "outbox.sqlite3")
    assert [after[i, "email"] for i in dead] == ["pending", "pending"]
    assert after[dead[0], "slack"] == "dead"


def test_retry_one_message_on_every_channel(isolated_env: Path, dead: list[str]) -> None:
    result = afs_notify("retry", "--event", dead[0], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requeued"] == 2
    after = states(isolated_env / "outbox.sqlite3")
    assert (after[dead[0], "email"], after[dead[0], "slack"], after[dead[1], "email"]) == (
        "pending",
        "pending",
        "dead",
    )


def test_retry_with_nothing_dead_says_so(isolated_env: Path, dead: list[str], tmp_path: Path) -> None:
    assert afs_notify("retry").returncode == 0
    again = afs_notify("retry")
    assert again.returncode == 0 and "No failed message to retry." in again.stdout
    elsewhere = afs_notify("retry", "--state-dir", str(tmp_path / "none"), env=cli_env())
    assert elsewhere.returncode == 2
    assert str(tmp_path / "none" / "outbox.sqlite3") in elsewhere.stderr


def test_retry_send_delivers_the_message_now(isolated_env: Path, receiver: LoopbackReceiver) -> None:
    """After the cause is fixed (here: the webhook answers again), --send delivers at once."""
    outbox = Outbox(isolated_env / "outbox.sqlite3")
    event = add_event(outbox, "run-1", "checkpoint saved: epoch 3", ["webhook"])
    outbox.mark_dead(event.id, "webhook", "HTTP 404 not found")
    outbox.close()
    result = afs_notify(
        "retry", "--channel", "webhook", "--send", env=cli_env(WEBHOOK_URL=receiver.url("/hook"))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 failed message queued again (channel webhook); delivering now" in result.stderr
    posted = receiver.wait_for(1)
    assert "checkpoint saved: epoch 3" in posted[0].body.decode()
    assert states(isolated_env / "outbox.sqlite3")[event.id, "webhook"] == "delivered"
