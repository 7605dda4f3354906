"""The CLI over the sender's finished states (superseded, folded) and over a history file
it cannot read: a real outbox file, a real ``afs-notify`` subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from afs_callbacks.cli._status import outbox_summary
from afs_callbacks.delivery.limits import fold_digest
from afs_callbacks.delivery.outbox import FOLDED, SUPERSEDED, Outbox
from afs_callbacks.events import EventType, NotificationEvent
from cli.helpers import afs_notify, cli_env


def epoch(n: int) -> NotificationEvent:
    return NotificationEvent(EventType.EPOCH_COMPLETED, "info", f"Epoch {n}", context={"run_id": "r1"})


def test_history_lists_superseded_and_folded_messages(isolated_env: Path) -> None:
    outbox = Outbox(isolated_env / "outbox.sqlite3")
    try:
        for n in (1, 2):
            outbox.enqueue(epoch(n), ["webhook"])
        assert outbox.supersede_stale("webhook") == 1
        for n in (1, 2, 3):
            note = NotificationEvent(EventType.CUSTOM, "info", f"note {n}")
            outbox.enqueue(note, ["ntfy"])
        digest = outbox.fold_due("ntfy", fold_digest)
        assert digest is not None
    finally:
        outbox.close()
    env = cli_env()

    superseded = afs_notify("history", "--state", "superseded", env=env)
    folded = afs_notify("history", "--state", "folded", "--json", env=env)
    wrong = afs_notify("history", "--state", "vanished", env=env)

    assert superseded.returncode == 0, superseded.stderr
    assert "Epoch 1" in superseded.stdout and "Epoch 2" not in superseded.stdout
    assert "superseded" in superseded.stdout
    assert folded.returncode == 0, folded.stderr
    states = {d["state"] for event in json.loads(folded.stdout) for d in event["deliveries"]}
    assert states == {FOLDED}
    assert wrong.returncode == 2 and "superseded" in wrong.stderr and "folded" in wrong.stderr


def test_the_status_summary_names_messages_not_sent_on_purpose() -> None:
    counts = {"slack": {"delivered": 4, SUPERSEDED: 3}, "ntfy": {FOLDED: 18, "pending": 1}}
    assert outbox_summary(counts) == (
        "4 delivered, 1 pending (ntfy 1), 0 dead, 3 superseded (slack 3), 18 folded (ntfy 18)"
    )
    assert outbox_summary({"slack": {"delivered": 2}}) == "2 delivered, 0 pending, 0 dead"


def test_a_corrupted_history_is_named_in_one_line_and_left_in_place(isolated_env: Path) -> None:
    isolated_env.mkdir(parents=True, exist_ok=True)
    damaged = isolated_env / "outbox.sqlite3"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    before = damaged.read_bytes()

    result = afs_notify("history", env=cli_env())

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr + result.stdout
    assert str(damaged) in lines[0] and "corrupted" in lines[0] and "move it aside" in lines[0]
    assert damaged.read_bytes() == before  # a command that reads does not move the file
    assert sorted(p.name for p in isolated_env.iterdir() if p.name.startswith("outbox")) == [damaged.name]
