"""The dashboard's JSON and HTML over a real history file, through a real server on loopback."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.redaction import register_secret
from tests.dashboard.support import add_event, base_url, curve, request, run_state, running_dashboard


@pytest.fixture
def history(isolated_env: Path) -> Path:
    """A history with three runs (one failed), curves, and deliveries in every state."""
    path = isolated_env / "outbox.sqlite3"
    outbox = Outbox(path)
    now = time.time()
    outbox.save_run(
        run_state("old-run", status="completed", started=now - 3000, model="resnet"), curve("loss", 5)
    )
    outbox.save_run(
        run_state(
            "crashed_run",
            status="failed",
            started=now - 2000,
            model="bert",
            error_type="RuntimeError",
            error="CUDA out of memory",
            summary="stopped at epoch 2",
        )
    )
    outbox.save_run(
        run_state("new-run", started=now - 100, model="resnet", peak_gpu_memory=8.0e9, gpu_utilization=81.0),
        [*curve("loss", 30), *curve("val_loss", 3, axis="epoch")],
    )
    started = add_event(outbox, "new-run", "resnet started", ["slack", "email"], created=now - 90)
    outbox.mark_delivered(started.id, "slack")
    outbox.mark_retry(started.id, "email", now + 300, "connection refused")
    warned = add_event(
        outbox,
        "new-run",
        "GPU memory high",
        ["email", "ntfy"],
        level=NotificationLevel.WARNING,
        created=now - 50,
    )
    outbox.mark_dead(warned.id, "email", "SMTP 535 authentication failed")
    with sqlite3.connect(path) as conn:  # a state a newer sender writes, unknown to this code
        conn.execute(
            "UPDATE deliveries SET state = 'folded' WHERE event_id = ? AND channel = 'ntfy'", (warned.id,)
        )
    add_event(
        outbox,
        "crashed_run",
        "bert failed",
        ["email"],
        event_type=EventType.TRAINING_FAILED,
        created=now - 10,
    )
    outbox.close()
    return path


def test_runs_are_listed_newest_first_with_their_facts(history: Path) -> None:
    with running_dashboard(history) as server:
        data = request(base_url(server), "/api/runs").json()
    assert [run["run_id"] for run in data["runs"]] == ["new-run", "crashed_run", "old-run"]
    new = data["runs"][0]
    assert (new["model"], new["host"], new["status"]) == ("resnet", "workstation", "running")
    assert new["progress"] == pytest.approx(0.5)
    assert (new["latest_name"], new["latest"]) == ("val_loss", 0.6)
    assert (new["best"], new["cost"]) == (0.6, 1.25)
    assert new["duration"] == pytest.approx(100, abs=5)
    assert data["statuses"] == {"running": 1, "failed": 1, "completed": 1}
    assert data["models"] == ["bert", "resnet"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?status=failed", ["crashed_run"]),
        ("?model=resnet", ["new-run", "old-run"]),
        ("?q=new", ["new-run"]),
        ("?q=_", ["crashed_run"]),  # an underscore is a character, not SQL's wildcard
        ("?status=running&model=bert", []),
    ],
)
def test_runs_filter_by_status_model_and_run_id(history: Path, query: str, expected: list[str]) -> None:
    with running_dashboard(history) as server:
        data = request(base_url(server), "/api/runs" + query).json()
    assert [run["run_id"] for run in data["runs"]] == expected


def test_a_run_has_its_curves_events_and_each_delivery(history: Path) -> None:
    with running_dashboard(history) as server:
        data = request(base_url(server), "/api/run/new-run").json()
    series = {(s["series"], s["axis"]): s for s in data["series"]}
    assert len(series["loss", "step"]["x"]) == 30
    assert series["val_loss", "epoch"]["y"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert (data["state"]["peak_gpu_memory"], data["state"]["gpu_utilization"]) == (8.0e9, 81.0)
    assert [e["title"] for e in data["events"]] == ["GPU memory high", "resnet started"]
    high, started = data["events"]
    assert high["level"] == "warning"
    by_channel = {d["channel"]: d for d in high["deliveries"] + started["deliveries"]}
    assert by_channel["slack"]["label"] == "delivered" and by_channel["slack"]["delivered_at"]
    email_retry = next(d for d in started["deliveries"] if d["channel"] == "email")
    assert email_retry["label"] == "retrying"
    assert email_retry["next_attempt"] > time.time() + 200
    assert email_retry["detail"] == "connection refused"
    email_dead = next(d for d in high["deliveries"] if d["channel"] == "email")
    assert (email_dead["label"], email_dead["detail"]) == ("dead", "SMTP 535 authentication failed")
    assert by_channel["ntfy"]["label"] == "folded"  # unknown states are shown as they are


def test_a_failed_run_shows_its_exception_and_summary(history: Path) -> None:
    with running_dashboard(history) as server:
        data = request(base_url(server), "/api/run/crashed_run").json()
    state = data["state"]
    assert (state["status"], state["error_type"], state["error"]) == (
        "failed",
        "RuntimeError",
        "CUDA out of memory",
    )
    assert state["summary"] == "stopped at epoch 2"
    assert data["events"][0]["event_type"] == "training_failed"


def test_an_unknown_run_is_a_json_404(history: Path) -> None:
    with running_dashboard(history) as server:
        answer = request(base_url(server), "/api/run/nope")
    assert answer.status == 404
    assert "nope" in answer.json()["error"]


def test_events_endpoint_lists_every_run_newest_first(history: Path) -> None:
    with running_dashboard(history) as server:
        data = request(base_url(server), "/api/events?limit=2").json()
    assert [e["title"] for e in data["events"]] == ["bert failed", "GPU memory high"]


def test_the_outbox_counts_every_state_and_lists_what_did_not_arrive(history: Path) -> None:
    with running_dashboard(
        history, channels=[{"channel": "email", "state": "ready", "detail": "a@b.c"}]
    ) as server:
        data = request(base_url(server), "/api/outbox").json()
    assert data["counts"]["email"] == {"pending": 2, "dead": 1}
    assert data["counts"]["ntfy"] == {"folded": 1}
    labels = sorted((m["channel"], m["label"]) for m in data["messages"])
    assert labels == [("email", "dead"), ("email", "pending"), ("email", "retrying")]
    assert data["channels"] == [{"channel": "email", "state": "ready", "detail": "a@b.c"}]


def test_no_secret_reaches_any_answer(history: Path) -> None:
    secret = "xoxb-dashboard-s3cr3t-token"
    register_secret(secret)
    with sqlite3.connect(history) as conn:  # as if an old writer had stored it unredacted
        conn.execute("UPDATE deliveries SET last_error = ? WHERE state = 'dead'", (f"denied for {secret}",))
        conn.execute("UPDATE events SET title = ? WHERE title = 'GPU memory high'", (f"token {secret}",))
    with running_dashboard(
        history, channels=[{"channel": "slack", "state": "ready", "detail": secret}]
    ) as server:
        url = base_url(server)
        answers = [
            request(url, path).text
            for path in ("/api/runs", "/api/run/new-run", "/api/outbox", "/api/events")
        ]
    assert all(secret not in text for text in answers)
    assert "denied for ***" in answers[2]


def test_missing_history_gets_a_page_naming_the_file(isolated_env: Path) -> None:
    path = isolated_env / "outbox.sqlite3"
    with running_dashboard(path) as server:
        page = request(base_url(server), "/")
        api = request(base_url(server), "/api/runs")
    assert page.status == 503 and page.headers["content-type"].startswith("text/html")
    assert "No history yet" in page.text and str(path) in page.text
    assert "Traceback" not in page.text
    assert api.status == 503 and api.json()["store"] == str(path)
    assert not path.exists()  # reading never creates it


def test_corrupt_history_gets_a_page_naming_the_file(isolated_env: Path) -> None:
    path = isolated_env / "outbox.sqlite3"
    isolated_env.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database, it was overwritten by accident\n" * 100)
    with running_dashboard(path) as server:
        page = request(base_url(server), "/run/x")
        api = request(base_url(server), "/api/run/x")
    assert page.status == 503
    assert "cannot be read" in page.text and str(path) in page.text
    assert "Traceback" not in page.text
    assert api.status == 503 and api.json()["reason"] == "unreadable"


def test_only_the_shipped_static_files_are_served(history: Path) -> None:
    with running_dashboard(history) as server:
        url = base_url(server)
        script = request(url, "/static/app.js")
        escape = request(url, "/static/../server.py")
        other = request(url, "/static/store.py")
    assert script.status == 200 and "AfsChart" in script.text
    assert script.headers["content-security-policy"].startswith("default-src 'self'")
    assert escape.status == 404 and other.status == 404


def test_a_running_run_whose_process_is_gone_shows_as_killed(isolated_env: Path) -> None:
    path = isolated_env / "outbox.sqlite3"
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()  # reaped: its pid names no process now
    outbox = Outbox(path)
    here = socket.gethostname()
    outbox.save_run(run_state("orphan", started=time.time() - 60, host=here, pid=dead_pid.pid))
    outbox.save_run(run_state("alive", started=time.time() - 30, host=here, pid=os.getpid()))
    outbox.close()
    with running_dashboard(path) as server:
        runs = {run["run_id"]: run for run in request(base_url(server), "/api/runs").json()["runs"]}
    assert runs["orphan"]["status"] == "killed" and "gone" in runs["orphan"]["status_note"]
    assert runs["alive"]["status"] == "running"


@pytest.mark.slow
def test_the_benchmark_runs_in_quick_mode() -> None:
    """benchmarks/bench_dashboard.py keeps working (its figures are not asserted: not a test's job)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_dashboard.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [t["what"] for t in result["targets"]] == [
        "runs page answers",
        "a run's page answers",
        "writes with an open dashboard",
    ]
    assert all(result["figures"]["writes"][side]["count"] > 0 for side in result["figures"]["writes"])


def test_an_unchanged_history_answers_not_modified(history: Path) -> None:
    """An open tab revalidates every second; nothing written means no query and no body."""
    with running_dashboard(history) as server:
        url = base_url(server)
        first = request(url, "/api/run/new-run")
        tag = first.headers["etag"]
        again = request(url, "/api/run/new-run", headers={"If-None-Match": tag})
        outbox = Outbox(history)
        outbox.save_run(run_state("new-run", started=time.time() - 100, step=30))
        outbox.close()
        changed = request(url, "/api/run/new-run", headers={"If-None-Match": tag})
    assert first.headers["cache-control"] == "no-cache"
    assert again.status == 304 and again.text == ""
    assert changed.status == 200 and changed.headers["etag"] != tag
    assert changed.json()["state"]["step"] == 30
