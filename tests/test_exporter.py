"""``afs-notify exporter`` and its collector over a real outbox: which runs it shows, their
heartbeat, the channels' health, a store it cannot read, and the command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from afs_callbacks.cli import main
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox
from afs_callbacks.events import EventType, NotificationEvent
from afs_callbacks.exporter import make_exporter
from afs_callbacks.runstate import RunState
from tests.helpers.services import eventually, free_port

HOST = socket.gethostname()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Outbox]:
    outbox = Outbox(tmp_path / OUTBOX_FILE)
    now = time.time()
    live = RunState(run_id="live", model="m", host=HOST, pid=os.getpid(), started_at=now, updated_at=now)
    gone = RunState(
        run_id="gone", model="m", host=HOST, pid=dead_pid(), started_at=now - 90, updated_at=now - 80
    )
    elsewhere = RunState(run_id="elsewhere", model="m", host="other-node", pid=1, updated_at=now - 5)
    ended = RunState(
        run_id="ended", model="m", host=HOST, status="failed", updated_at=now - 10, ended_at=now - 10
    )
    old = RunState(
        run_id="old", model="m", host=HOST, status="completed", updated_at=now - 9000, ended_at=now - 9000
    )
    ancient = RunState(run_id="ancient", model="m", host=HOST, pid=dead_pid(), updated_at=now - 9000)
    for state in (live, gone, elsewhere, ended, old, ancient):
        outbox.save_run(state)
    events = [
        NotificationEvent(EventType.CUSTOM, "info", f"e{i}", context={"run_id": "live"}) for i in range(3)
    ]
    outbox.write([(event, ("slack", "webhook")) for event in events])
    outbox.mark_delivered(events[0].id, "slack")
    outbox.mark_dead(events[1].id, "slack", "HTTP 404: no_service")
    outbox.mark_retry(events[2].id, "webhook", time.time() + 60, "HTTP 503")
    yield outbox
    outbox.close()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[str]:
    server, collector = make_exporter("127.0.0.1", 0, tmp_path, keep=3600)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()
    collector.close()


def test_it_shows_live_runs_and_recent_ends_with_their_heartbeat(store: Outbox, exporter: str) -> None:
    before = time.time()
    found = scrape(exporter)
    runs = {labels["run_id"]: labels for labels, _ in found["afs_run_info"]}
    assert set(runs) == {"live", "gone", "elsewhere", "ended"}  # not the old end, nor the long-gone
    assert runs["ended"]["outcome"] == "failed" and runs["live"]["status"] == "running"
    beats = {labels["run_id"]: value for labels, value in found["afs_run_heartbeat_timestamp_seconds"]}
    assert beats["live"] >= before  # its process is alive: now
    assert beats["gone"] == pytest.approx(time.time() - 80, abs=5)  # gone: its last word
    assert "elsewhere" not in beats and "ended" not in beats  # another host's; an ended run


def test_it_shows_each_channels_health(store: Outbox, exporter: str) -> None:
    found = scrape(exporter)
    counts = {(labels["channel"], labels["state"]): v for labels, v in found["afs_outbox_deliveries"]}
    assert counts[("slack", "delivered")] == 1 and counts[("slack", "dead")] == 1
    assert counts[("webhook", "pending")] == 3
    retrying = {labels["channel"]: v for labels, v in found["afs_outbox_retrying"]}
    assert retrying == {"slack": 0, "webhook": 1}
    assert {labels["channel"] for labels, _ in found["afs_outbox_failing_since_timestamp_seconds"]} == {
        "webhook"
    }
    assert {labels["channel"] for labels, _ in found["afs_outbox_last_dead_timestamp_seconds"]} == {"slack"}
    assert found["afs_outbox_up"][0][1] == 1


def test_a_missing_store_says_so_and_is_read_once_it_appears(tmp_path: Path, exporter: str) -> None:
    assert scrape(exporter)["afs_outbox_up"][0][1] == 0
    with Outbox(tmp_path / OUTBOX_FILE) as outbox:
        outbox.save_run(RunState(run_id="late", model="m", host=HOST, pid=os.getpid()))
    found = scrape(exporter)
    assert found["afs_outbox_up"][0][1] == 1
    assert [labels["run_id"] for labels, _ in found["afs_run_info"]] == ["late"]


def test_the_command_serves_metrics_until_stopped(store: Outbox, tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "afs_callbacks",
            "exporter",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"afs-notify exporter: http://127.0.0.1:{port}/metrics"
        found = eventually(lambda: scrape(f"http://127.0.0.1:{port}/metrics"))
        assert "live" in {labels["run_id"] for labels, _ in found["afs_run_info"]}
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("listen", ["9464", "host:", "127.0.0.1:99999", "a:b"])
def test_a_bad_listen_address_is_one_sentence(listen: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exporter", "--listen", listen]) == 2
    assert "--listen must be HOST:PORT" in capsys.readouterr().err


def test_a_port_in_use_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["exporter", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path)]) == 2
    assert "cannot listen on" in capsys.readouterr().err
