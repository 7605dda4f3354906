"""Storage faults with real files, real mounts and real processes: a disk that fills, a
read-only mount, a file corrupted in place, another process holding the write lock.

In every case ``notify()`` returns at once, nothing is raised into the caller (``flush()``
included), one log line names the file and the cause, the messages are delivered from
memory, and the history is written once the file is usable again. The mount tests need
``mount`` (root, as in CI); where it is not permitted they skip and say so.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hook import manager_for, wait_until

from afs_callbacks import EventType, NotificationManager
from afs_callbacks.delivery import outbox
from afs_callbacks.monitors import SystemMonitor
from afs_callbacks.testing import CapturingHandler


def stored_titles(state_dir: Path) -> list[str]:
    """Titles in the outbox file, read by a connection of its own."""
    conn = sqlite3.connect(state_dir / "outbox.sqlite3", timeout=5)
    try:
        return [row[0] for row in conn.execute("SELECT title FROM events ORDER BY created")]
    except sqlite3.OperationalError:  # the tables are not created yet
        return []
    finally:
        conn.close()


def history_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "notification history" in r.getMessage()]


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount is not permitted here ({result.stderr.strip()}); CI runs these as root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where))
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no space left; return it."""
    filler = disk / "filler"
    try:
        with filler.open("wb") as out:
            while True:
                out.write(b"\0" * 4096)
                out.flush()
    except OSError:  # ENOSPC, from a write or from the close's last flush
        pass
    return filler


def test_a_full_disk_costs_no_message_and_the_history_resumes_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = small_disk / "state"
    captured = CapturingHandler()
    manager = manager_for(state, {"capture": captured})
    manager.notify("before the disk filled")
    manager.flush(10)
    filler = fill(small_disk)

    with caplog.at_level(logging.WARNING):
        for index in range(40):
            assert manager.notify(f"while full {index}", "x" * 4000) is not None
        # The library's own disk alert goes out although nothing can be written.
        SystemMonitor(manager, paths=[small_disk], disk_free_threshold=0.5).poll_once()
        captured.wait_for(count=42)
        report = manager.flush(5)  # never raises

    assert report.pending == 0
    assert any(e.event_type is EventType.DISK_SPACE for e in captured.events)
    [line] = history_lines(caplog)
    assert str(state / "outbox.sqlite3") in line and "the disk is full" in line
    assert "Traceback" not in caplog.text

    filler.unlink()
    wait_until(lambda: len(stored_titles(state)) == 42, timeout=15, what="kept messages written")
    assert "while full 39" in stored_titles(state)
    assert any("writable again" in message for message in history_lines(caplog))
    assert len(captured.events) == 42  # none sent twice on the way back to the file
    manager.close()


def test_a_read_only_state_dir_delivers_from_memory_and_writes_once_it_is_writable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, state = tmp_path / "source", tmp_path / "state"
    source.mkdir()
    state.mkdir()
    mount("--bind", str(source), str(state))
    try:
        mount("-o", "remount,ro,bind", str(state))
        captured = CapturingHandler()
        manager = manager_for(state, {"capture": captured})
        sent = [manager.notify(f"read-only {index}") for index in range(5)]
        captured.wait_for(count=5)
        assert manager.flush(5).pending == 0
        [line] = history_lines(caplog)
        assert str(state / "outbox.sqlite3") in line and "Set AFS_STATE_DIR" not in line

        mount("-o", "remount,rw,bind", str(state))  # the open is retried in the background
        wait_until(lambda: (state / "outbox.sqlite3").exists() and len(stored_titles(state)) == 5, timeout=15)
        [entry] = manager.outbox.history(event_id=sent[0].id if sent[0] else "")
        assert [d.state for d in entry.deliveries] == ["delivered"]  # the outcome came along
        manager.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_a_file_corrupted_in_place_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    first = manager_for(state, {"capture": CapturingHandler()})
    for index in range(200):
        first.notify(f"history {index}", "y" * 500)
    first.flush(10)
    first.close()
    path = state / "outbox.sqlite3"
    with path.open("r+b") as raw:  # the header (first page) intact, the pages after it garbage
        raw.seek(4096)
        raw.write(uuid.uuid4().bytes * (path.stat().st_size // 16))

    captured = CapturingHandler()
    manager = manager_for(state, {"capture": captured})
    assert manager.notify("after the damage") is not None
    captured.wait_for(count=1)
    wait_until(lambda: stored_titles(state) == ["after the damage"], what="a fresh history")
    [aside] = [p for p in state.iterdir() if re.fullmatch(r"outbox\.sqlite3\.corrupt-[0-9T]+", p.name)]
    assert any(str(aside) in message for message in history_lines(caplog))
    assert manager.flush(5).pending == 0
    manager.close()


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def test_another_process_holding_the_write_lock_delays_no_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "LOCK_PATIENCE", 3.0)  # a held lock becomes a fault sooner
    state = tmp_path / "state"
    captured = CapturingHandler()
    manager = manager_for(state, {"capture": captured})
    manager.notify("first")
    manager.flush(10)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state / "outbox.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        sent = [manager.notify(f"during the lock {index}") for index in range(20)]
        captured.wait_for(count=21, timeout=20)  # delivered while the other process still holds it
        assert holder.poll() is None
        # The history (what `afs-notify send` reports from) shows them, kept in memory.
        [entry] = manager.outbox.history(event_id=sent[-1].id if sent[-1] else "")
        assert [d.state for d in entry.deliveries] == ["delivered"]
        # Held past the patience: a fault, said once, with how long.
        wait_until(lambda: history_lines(caplog), timeout=20, what="the lock reported")
        [line] = history_lines(caplog)
        assert "another process holds its write lock (for 3 s now)" in line and str(state) in line
    finally:
        assert holder.stdin is not None
        holder.stdin.write("release\n")
        holder.stdin.close()
        holder.wait(10)
    wait_until(lambda: len(stored_titles(state)) == 21, timeout=15, what="kept messages written")
    manager.close()


def test_a_lock_held_for_a_moment_is_waited_for_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the write lock for longer than one statement waits (2 s), then
    lets go: the messages wait in memory meanwhile (and are delivered), nothing is logged,
    and all of them reach the file."""
    state = tmp_path / "state"
    captured = CapturingHandler()
    manager = manager_for(state, {"capture": captured})
    manager.notify("first")
    manager.flush(10)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state / "outbox.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        for index in range(5):
            manager.notify(f"during the lock {index}")
        captured.wait_for(count=6, timeout=20)  # from memory: the file is still locked
        assert holder.poll() is None
        assert len(stored_titles(state)) == 1
    finally:
        assert holder.stdin is not None
        holder.stdin.write("release\n")
        holder.stdin.close()
        holder.wait(10)
    wait_until(lambda: len(stored_titles(state)) == 6, timeout=15, what="kept messages written")
    manager.close()
    assert history_lines(caplog) == []


def test_invalid_and_huge_text_is_made_valid_bounded_and_delivered(tmp_path: Path) -> None:
    captured = CapturingHandler()
    manager = manager_for(tmp_path, {"capture": captured})
    broken = "file \udcff.txt not found"  # a non-UTF-8 file name decoded with surrogateescape
    huge = "z" * 10_000_000
    assert manager.notify(broken, huge, error=broken) is not None
    [got] = captured.wait_for(count=1)
    assert got.title == "file \ufffd.txt not found" and got.context["error"] == got.title
    assert len(got.message) < 70_000 and "more characters were not stored" in got.message
    manager.close()


def test_a_secret_straddling_the_cut_is_masked_not_halved(tmp_path: Path) -> None:
    from afs_callbacks.delivery.admission import MAX_TEXT_CHARS
    from afs_callbacks.redaction import register_secret

    secret = "sk-" + uuid.uuid4().hex * 2
    register_secret(secret)
    captured = CapturingHandler()
    manager = manager_for(tmp_path, {"capture": captured})
    text = "a" * (MAX_TEXT_CHARS - 10) + secret + "b" * 100
    manager.notify("echo", text)
    [got] = captured.wait_for(count=1)
    assert secret[:10] not in got.message and secret[-10:] not in got.message
    manager.close()


def test_notify_stays_inert_with_afs_enabled_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFS_ENABLED", "false")
    monkeypatch.setenv("AFS_STATE_DIR", str(tmp_path / "state"))
    captured = CapturingHandler()
    manager = NotificationManager({"capture": captured})
    assert manager.notify("nothing") is None
    from afs_callbacks.monitors import start_monitors

    assert list(start_monitors(manager)) == []
    assert manager.flush(1).pending == 0
    manager.close()
    assert captured.events == [] and not (tmp_path / "state").exists()


EXCLUSIVE_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS other_tool (x)")
conn.execute("BEGIN EXCLUSIVE")
print("holding", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def test_a_lock_at_the_first_open_is_retried_in_the_background(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "LOCK_PATIENCE", 3.0)
    state = tmp_path / "state"
    state.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", EXCLUSIVE_HOLDER, str(state / "outbox.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        captured = CapturingHandler()
        manager = manager_for(state, {"capture": captured})
        for index in range(3):
            assert manager.notify(f"locked out {index}") is not None
        captured.wait_for(count=3, timeout=20)
        wait_until(lambda: history_lines(caplog), timeout=20, what="the lock reported")
        [line] = history_lines(caplog)
        assert "cannot open" in line and "another process holds its write lock (for 3 s now)" in line
        assert "Set AFS_STATE_DIR" not in caplog.text
    finally:
        assert holder.stdin is not None
        holder.stdin.write("release\n")
        holder.stdin.close()
        holder.wait(10)
    wait_until(lambda: len(stored_titles(state)) == 3, timeout=15, what="the history opened after the lock")
    manager.close()
