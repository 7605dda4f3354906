"""The SQLite outbox: states, leases, concurrent claimers (threads and processes), history."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers.hook import HookChannel, event_ids

from afs_callbacks import EventType, NotificationEvent, NotificationLevel, NotificationManager, Settings
from afs_callbacks.delivery.outbox import (
    DEAD,
    DELIVERED,
    FOLDED,
    PENDING,
    SENDING,
    STATES,
    SUPERSEDED,
    Outbox,
    lease_owner,
)
from afs_callbacks.testing import LoopbackReceiver

HELPERS = Path(__file__).parent / "helpers"


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


def event(
    title: str = "e",
    *,
    run: str = "r1",
    kind: EventType = EventType.EPOCH_COMPLETED,
    level: NotificationLevel = NotificationLevel.INFO,
    age: float = 0.0,
) -> NotificationEvent:
    when = datetime.now(timezone.utc) - timedelta(seconds=age)
    return NotificationEvent(kind, level, title, "", {"run_id": run}, timestamp=when)


def states(outbox: Outbox, channel: str = "slack") -> dict[str, int]:
    return outbox.counts().get(channel, {})


def test_wal_mode_is_on(tmp_path: Path, outbox: Outbox) -> None:
    outbox.enqueue(event(), ["slack"])
    with sqlite3.connect(outbox.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_every_store_has_the_run_index_superseding_uses(tmp_path: Path, outbox: Outbox) -> None:
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT 1 FROM events WHERE run_id = ? AND event_type = ?", ("r", "x")
            )
        )
    assert "events_run" in indexes and "events_run" in plan
    assert outbox.supersede_stale("slack") == 0  # the lazy path stays harmless


def test_states_include_the_senders_finished_states() -> None:
    assert STATES == (PENDING, SENDING, DELIVERED, DEAD, SUPERSEDED, FOLDED)


def test_enqueue_then_claim_then_deliver(outbox: Outbox) -> None:
    first, second = event("one", run="r1", age=2), event("two", run="r2", age=1)
    outbox.enqueue(first, ["slack", "email"])
    outbox.enqueue(second, ["slack"])
    assert outbox.counts() == {"slack": {PENDING: 2}, "email": {PENDING: 1}}
    claims = outbox.claim("slack", lease_seconds=60)
    assert [c.event for c in claims] == [first, second]  # oldest first, event intact
    assert [c.attempts for c in claims] == [0, 0]
    assert states(outbox) == {SENDING: 2}
    assert outbox.claim("slack", lease_seconds=60) == []  # leased: nobody else gets them
    outbox.mark_delivered(first.id, "slack")
    outbox.release(second.id, "slack")
    assert states(outbox) == {DELIVERED: 1, PENDING: 1}
    assert outbox.outstanding() == 2  # one slack, one email
    assert outbox.outstanding(["email"]) == 1


def test_enqueue_is_idempotent_per_event_and_channel(outbox: Outbox) -> None:
    one = event()
    outbox.enqueue(one, ["slack"])
    outbox.enqueue(one, ["slack"])
    assert states(outbox) == {PENDING: 1}


def test_retry_waits_for_its_time_unless_forced_and_counts_attempts(outbox: Outbox) -> None:
    one = event()
    outbox.enqueue(one, ["slack"])
    assert len(outbox.claim("slack", lease_seconds=60)) == 1
    outbox.mark_retry(one.id, "slack", time.time() + 3600, "HTTP 503")
    assert outbox.claim("slack", lease_seconds=60) == []
    assert outbox.next_due("slack") == pytest.approx(time.time() + 3600, abs=5)
    flush_started = time.time()
    [forced] = outbox.claim("slack", lease_seconds=60, forced_since=flush_started)
    assert forced.attempts == 1
    outbox.mark_retry(one.id, "slack", time.time() + 3600, "HTTP 503")
    # Attempted since the flush began: a flush tries each message once, not in a loop.
    assert outbox.claim("slack", lease_seconds=60, forced_since=flush_started) == []
    assert outbox.untried_since(["slack"], flush_started) == 0
    [entry] = outbox.history()
    assert entry.deliveries[0].attempts == 2 and entry.deliveries[0].last_error == "HTTP 503"


def test_expired_lease_is_claimed_again(outbox: Outbox) -> None:
    one = event()
    outbox.enqueue(one, ["slack"])
    assert outbox.claim("slack", lease_seconds=-1, owner="other-host:1")  # a lease already over
    [again] = outbox.claim("slack", lease_seconds=60)
    assert again.event.id == one.id


def test_late_report_of_an_expired_lease_does_not_undo_a_delivery(outbox: Outbox) -> None:
    one = event()
    outbox.enqueue(one, ["slack"])
    outbox.claim("slack", lease_seconds=-1, owner="slow-host:1")
    outbox.claim("slack", lease_seconds=60)
    outbox.mark_delivered(one.id, "slack")
    outbox.mark_retry(one.id, "slack", time.time(), "timeout")  # the slow sender, late
    outbox.mark_dead(one.id, "slack", "gave up")
    assert states(outbox) == {DELIVERED: 1}


def test_mark_dead_records_the_redacted_reason(outbox: Outbox) -> None:
    one = event()
    outbox.enqueue(one, ["discord"])
    outbox.claim("discord", lease_seconds=60)
    outbox.mark_dead(one.id, "discord", "HTTP 404 for https://discord.com/api/webhooks/1/tok-en")
    [delivery] = outbox.history()[0].deliveries
    assert delivery.state == DEAD and delivery.attempts == 1
    assert delivery.last_error == "HTTP 404 for https://discord.com/api/webhooks/***"


def test_unreadable_row_goes_dead_instead_of_blocking_the_queue(outbox: Outbox) -> None:
    bad, good = event("bad", age=2), event("good", age=1)
    outbox.enqueue(bad, ["slack"])
    outbox.enqueue(good, ["slack"])
    with sqlite3.connect(outbox.path) as conn:
        conn.execute("UPDATE events SET payload = '{broken' WHERE id = ?", (bad.id,))
    assert [c.event.id for c in outbox.claim("slack", lease_seconds=60)] == [good.id]
    assert states(outbox) == {DEAD: 1, SENDING: 1}


def claim_all(outbox: Outbox, channel: str, limit: int) -> list[str]:
    claimed = []
    while claims := outbox.claim(channel, lease_seconds=60, limit=limit):
        for claim in claims:
            claimed.append(claim.event.id)
            outbox.mark_delivered(claim.event.id, channel)
    return claimed


def test_concurrent_threads_never_claim_the_same_row(tmp_path: Path, outbox: Outbox) -> None:
    ids = []
    for index in range(300):
        one = event(str(index), run=f"r{index}")  # a run's own messages go one at a time
        ids.append(one.id)
        outbox.enqueue(one, ["slack"])
    # Half the threads share one Outbox (one connection), half open their own.
    boxes = [outbox, outbox, outbox, Outbox(outbox.path), Outbox(outbox.path), Outbox(outbox.path)]
    results: list[list[str]] = [[] for _ in boxes]
    start = threading.Barrier(len(boxes))
    first_done = threading.Barrier(len(boxes))

    def work(index: int) -> None:
        box, limit = boxes[index], 1 + index % 3
        start.wait()
        # Every thread makes its first claim while rows remain (300 rows, at most 18 taken
        # by first claims), so they compete whatever the scheduler does; then all drain.
        first = [claim.event.id for claim in box.claim("slack", lease_seconds=60, limit=limit)]
        for event_id in first:
            box.mark_delivered(event_id, "slack")
        first_done.wait()
        results[index] = first + claim_all(box, "slack", limit=limit)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(boxes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = [event_id for result in results for event_id in result]
    assert sorted(claimed) == sorted(ids)  # every row once, none twice
    assert all(results)  # they did compete: each took rows


def test_a_pick_overtaken_by_another_sender_leases_nothing_of_its_run(
    tmp_path: Path, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim reads the queue outside the write lock; here another process's sender leases
    # the picked row in between. The claim must neither lease it too nor send the run's
    # next message past the one now in flight.
    from afs_callbacks.delivery import outbox as module

    first, second = event("one", age=2), event("two", age=1)
    outbox.enqueue(first, ["slack"])
    outbox.enqueue(second, ["slack"])
    other = Outbox(tmp_path / "outbox.sqlite3")
    real_pick = module._pick
    overtaken: list[list[str]] = []

    def pick_then_overtaken(*args: object, **kwargs: object) -> object:
        picked = real_pick(*args, **kwargs)  # type: ignore[arg-type]
        if not overtaken:  # once, and not for the other outbox's own pick
            overtaken.append([])
            overtaken[0] = [c.event.id for c in other.claim("slack", lease_seconds=60, owner="elsewhere:1")]
        return picked

    monkeypatch.setattr(module, "_pick", pick_then_overtaken)
    assert outbox.claim("slack", lease_seconds=60) == []
    assert overtaken == [[first.id]]
    rows = dict(other._query("SELECT event_id, lease_owner FROM deliveries WHERE state = 'sending'"))
    assert rows == {first.id: "elsewhere:1"}
    other.close()


def test_two_processes_never_claim_the_same_row(tmp_path: Path, outbox: Outbox) -> None:
    ids = []
    for index in range(400):
        one = event(str(index))
        ids.append(one.id)
        outbox.enqueue(one, ["slack"])
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, str(HELPERS / "claim_rows.py"), outbox.path, "slack", str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0]
    claimed = [json.loads(output) for output in outputs]
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)
    assert states(outbox) == {DELIVERED: 400}


def finished_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: a zombie would still answer kill(pid, 0)
    return child.pid


def test_rows_leased_by_a_dead_local_process_are_reclaimed(outbox: Outbox) -> None:
    host = socket.gethostname()
    dead, alive, remote = event("dead"), event("alive"), event("remote")
    for one in (dead, alive, remote):
        outbox.enqueue(one, ["slack"])
    outbox.claim("slack", lease_seconds=600, limit=1, owner=f"{host}:{finished_pid()}")
    outbox.claim("slack", lease_seconds=600, limit=1, owner=f"{host}:{os.getppid()}")
    outbox.claim("slack", lease_seconds=600, limit=1, owner="some-other-host:1")
    assert outbox.reclaim_orphans() == 1
    assert [c.event.title for c in outbox.claim("slack", lease_seconds=60)] == ["dead"]
    assert outbox.reclaim_orphans() == 0  # our own live lease is not an orphan
    assert lease_owner() == f"{host}:{os.getpid()}"


def test_prune_drops_old_finished_events_but_keeps_pending_ones(outbox: Outbox) -> None:
    old_done, old_pending, old_dead = (
        event("old done", age=90_000),
        event("old pending", age=90_001),
        event("old dead", age=90_002),
    )
    for one in (old_done, old_pending, old_dead):
        outbox.enqueue(one, ["slack"])
    outbox.claim("slack", lease_seconds=60)
    outbox.mark_delivered(old_done.id, "slack")
    outbox.mark_dead(old_dead.id, "slack", "404")
    outbox.release(old_pending.id, "slack")
    recent = [event(f"new {i}", age=10 - i) for i in range(5)]
    for one in recent:
        outbox.enqueue(one, ["slack"])
    assert outbox.prune(max_age_seconds=86_400, max_events=100) == 2
    assert {e.event.title for e in outbox.history(limit=100)} == {"old pending"} | {e.title for e in recent}
    # The count bound keeps the newest finished events and every pending one.
    for one in recent[:3]:
        outbox.claim("slack", lease_seconds=60, limit=1)
        outbox.mark_delivered(one.id, "slack")
    outbox.prune(max_age_seconds=86_400, max_events=2)
    titles = [e.event.title for e in outbox.history(limit=100)]
    assert "old pending" in titles and "new 3" in titles and "new 4" in titles
    assert "new 0" not in titles
    with sqlite3.connect(outbox.path) as conn:  # no orphan delivery rows left behind
        assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == len(titles)


def test_history_filters(outbox: Outbox) -> None:
    nan = event("nan", run="r1", kind=EventType.NAN_DETECTED, level=NotificationLevel.ERROR, age=3)
    done = event("done", run="r2", kind=EventType.TRAINING_COMPLETED, level=NotificationLevel.SUCCESS, age=2)
    oom = event("oom", run="r1", kind=EventType.OUT_OF_MEMORY, level=NotificationLevel.CRITICAL, age=1)
    outbox.enqueue(nan, ["slack", "email"])
    outbox.enqueue(done, ["slack"])
    outbox.enqueue(oom, ["email"])
    outbox.mark_delivered(nan.id, "slack")

    def titles(**filters: object) -> list[str]:
        return [entry.event.title for entry in outbox.history(**filters)]  # type: ignore[arg-type]

    assert titles() == ["oom", "done", "nan"]  # newest first
    assert titles(limit=1) == ["oom"]
    assert titles(run_id="r1") == ["oom", "nan"]
    assert titles(event_type="training_completed") == ["done"]
    assert titles(level="critical") == ["oom"]
    assert titles(channel="email") == ["oom", "nan"]
    assert titles(state=DELIVERED) == ["nan"]
    assert titles(state=PENDING, channel="slack") == ["done"]
    [entry] = outbox.history(run_id="r1", level="error")
    assert [(d.channel, d.state) for d in entry.deliveries] == [("email", PENDING), ("slack", DELIVERED)]
    assert entry.deliveries[1].delivered_at is not None and entry.deliveries[1].next_attempt is None


def test_memory_outbox_works_for_a_process_without_a_disk() -> None:
    box = Outbox(":memory:")
    box.enqueue(event(), ["slack"])
    assert len(box.claim("slack", lease_seconds=60)) == 1


def test_a_fork_waits_for_a_thread_inside_sqlite(tmp_path: Path) -> None:
    """A thread in the middle of an SQLite call at the fork would leave SQLite's mutexes
    held in the child, whose first connection then hangs for ever (the fork test below hung
    about once in 50 so): the fork waits for the call to end."""
    box = Outbox(tmp_path / "outbox.sqlite3")
    box.enqueue(event(), ["slack"])
    inside = threading.Event()

    def in_a_statement() -> None:
        with box._lock:  # what every statement on the file's connection holds
            inside.set()
            time.sleep(0.3)

    thread = threading.Thread(target=in_a_statement)
    thread.start()
    assert inside.wait(5)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: its own connection opens and reads
        os._exit(0 if box.outstanding(["slack"]) == 1 else 1)
    waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
    assert waited >= 0.2  # the fork began once the statement was over
    box.close()


def test_fork_child_uses_outbox_and_manager_and_parent_keeps_working(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    """A DataLoader worker forks: the child gets its own connection, session and thread."""
    settings = Settings(state_dir=tmp_path / "state", dedup_window=0)
    manager = NotificationManager({"hook": HookChannel(receiver.url("/hook"))}, settings=settings)
    before = manager.notify("before fork")
    assert before is not None and manager.flush(10).pending == 0  # thread, session, connection live
    receiver.wait_for(1)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            child_event = manager.notify("from child")
            manager.outbox.enqueue(event("direct from child"), ["elsewhere"])
            report = manager.flush(10)
            delivered = manager.outbox.history(state="delivered", channel="hook")
            if child_event is not None and report.by_channel["hook"]["pending"] == 0 and len(delivered) == 2:
                code = 0 if manager.outbox.outstanding(["elsewhere"]) == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    after = manager.notify("after fork")
    assert after is not None
    assert manager.flush(10).by_channel["hook"]["pending"] == 0
    receiver.wait_for(3)
    assert len(set(event_ids(receiver.requests))) == 3
    assert manager.outbox.outstanding(["elsewhere"]) == 1  # the child's write is visible here
    manager.close()
