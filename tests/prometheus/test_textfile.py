"""The textfile writer: atomic files off the training thread, at most one write per second
per run, an ended run marked then removed, other processes' stale files swept."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from afs_callbacks.config import Settings
from afs_callbacks.delivery.outbox import ChannelHealth
from afs_callbacks.manager import NotificationManager
from afs_callbacks.prometheus.textfile import TextfileWriter, outbox_file_name, run_file_name
from afs_callbacks.runstate import RunState
from tests.helpers.services import eventually

STATE = RunState(run_id="run-1", model="bert", host="h", status="running", step=1, updated_at=time.time())


def read(path: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def test_states_are_written_at_most_once_a_second_and_the_last_one_at_close(tmp_path: Path) -> None:
    writer = TextfileWriter(tmp_path, store="/state", health=lambda: [], interval=1.0)
    path = tmp_path / run_file_name("run-1")
    start = time.monotonic()
    step = 0
    while time.monotonic() - start < 2.5:  # a state every 10 ms: 250 offers
        step += 1
        writer.offer(replace(STATE, step=step))
        time.sleep(0.01)
    writer.offer(replace(STATE, step=step + 1, status="completed", ended_at=time.time()))
    writer.close(5.0)
    run_writes = writer.writes - 1  # one outbox file besides (written at the first round)
    assert 2 <= run_writes <= 5, f"{run_writes} writes of the run's file in 2.5 s"
    found = read(path)
    assert found["afs_run_step"][0][1] == step + 1  # the last state, written at close
    assert found["afs_run_info"][0][0]["status"] == "ended"
    assert [p.name for p in tmp_path.iterdir() if ".prom." in p.name] == []  # no temporary left
    assert (tmp_path / outbox_file_name("/state")).exists()


def test_the_training_thread_does_no_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writers: list[str] = []
    original = TextfileWriter._write

    def spy(self: TextfileWriter, name: str, families: list) -> None:
        writers.append(threading.current_thread().name)
        original(self, name, families)

    monkeypatch.setattr(TextfileWriter, "_write", spy)
    writer = TextfileWriter(tmp_path, store="/s", health=lambda: [])
    writer.offer(STATE)
    writer.close(5.0)
    assert writers and set(writers) == {"afs-prometheus"}


def test_a_live_run_keeps_its_heartbeat_fresh(tmp_path: Path) -> None:
    writer = TextfileWriter(tmp_path, heartbeat=0.3, interval=0.1)
    writer.offer(STATE)
    path = tmp_path / run_file_name("run-1")
    first = eventually(lambda: path.exists() and read(path)["afs_run_heartbeat_timestamp_seconds"][0][1])
    later = eventually(
        lambda: (beat := read(path)["afs_run_heartbeat_timestamp_seconds"][0][1]) > first and beat
    )
    assert later > first
    writer.close(2.0)


def test_an_ended_run_is_marked_then_removed_after_keep(tmp_path: Path) -> None:
    writer = TextfileWriter(tmp_path, keep=0.5, heartbeat=0.1, interval=0.05)
    path = tmp_path / run_file_name("run-1")
    writer.offer(replace(STATE, status="failed", ended_at=time.time()))
    eventually(lambda: path.exists() and read(path)["afs_run_info"][0][0]["outcome"] == "failed", 5)
    assert "afs_run_heartbeat_timestamp_seconds" not in read(path)
    eventually(lambda: not path.exists(), 5)
    writer.close(2.0)


def test_files_nobody_rewrites_are_swept_and_others_are_left_alone(tmp_path: Path) -> None:
    stale = tmp_path / run_file_name("vanished")
    fresh = tmp_path / run_file_name("alive-elsewhere")
    foreign = tmp_path / "node_custom.prom"
    leftover = tmp_path / (run_file_name("crashed") + ".123.456")
    for path in (stale, fresh, foreign, leftover):
        path.write_text("# nothing\n")
    old = time.time() - 7200
    for path in (stale, foreign, leftover):
        os.utime(path, (old, old))
    writer = TextfileWriter(tmp_path, keep=3600)
    writer.offer(STATE)
    writer.close(5.0)
    assert not stale.exists() and not leftover.exists()
    assert fresh.exists() and foreign.exists()  # another process's live run; not ours at all


def test_a_missing_folder_is_said_once_and_costs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = TextfileWriter(tmp_path / "nope")
    writer.offer(STATE)
    writer.close(5.0)
    writer.offer(STATE)  # disabled: returns at once
    assert caplog.text.count("AFS_PROMETHEUS_TEXTFILE_DIR") == 1 and "node exporter" in caplog.text


def test_a_failing_health_read_is_logged_and_the_run_still_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    def broken() -> list[ChannelHealth]:
        raise OSError("disk gone")

    writer = TextfileWriter(tmp_path, health=broken, interval=0.05)
    writer.offer(STATE)
    writer.close(5.0)
    assert (tmp_path / run_file_name("run-1")).exists()
    assert "disk gone" in caplog.text


def test_the_manager_writes_its_runs_and_outbox_when_the_folder_is_set(tmp_path: Path) -> None:
    folder = tmp_path / "textfile"
    folder.mkdir()
    settings = Settings(state_dir=tmp_path / "state", console="never", prometheus_textfile_dir=folder)
    manager = NotificationManager(settings=settings)
    manager.notify("hello", run_id="run-1")
    manager.update_run(STATE)
    manager.update_run(replace(STATE, status="completed", step=9, ended_at=time.time()))
    manager.close(timeout=5)
    found = read(folder / run_file_name("run-1"))
    assert found["afs_run_step"][0][1] == 9
    outbox = read(folder / outbox_file_name(os.path.realpath(tmp_path / "state")))
    assert outbox["afs_outbox_up"][0][1] == 1


def test_importing_the_package_and_making_a_manager_does_not_import_prometheus_client(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "import afs_callbacks\n"
        "from afs_callbacks import NotificationManager\n"
        "m = NotificationManager.from_env()\n"
        "m.notify('x')\n"
        "m.close(timeout=1)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    env = {**os.environ, "AFS_STATE_DIR": str(tmp_path), "AFS_CONSOLE": "never"}
    env.pop("AFS_PROMETHEUS_TEXTFILE_DIR", None)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
