"""The dashboard over a big history: 1,000 runs and 100,000 events (issue #14).

1. Answer times of a real ``afs-notify dashboard`` process (its own interpreter, as a user
   runs it): the runs page (``/api/runs``, unfiltered and filtered, plus the page shell)
   and a run's page (``/api/run/<id>``: a run with 2 x 2,000 step points, its epoch curves
   and 100 events with their deliveries). Targets: runs < 200 ms, a run < 300 ms.
2. A training's writes are not slowed by an open dashboard: a loop writes as fast as it
   can what the tracker writes (``save_run`` with new points) and what notify() writes
   (``enqueue``), alone and then with a client polling the dashboard as an open tab does
   (both pages every second), and with one polling as fast as it can (the worst case).
   Rounds alternate so the machine's load drifts across both sides alike.

    python benchmarks/bench_dashboard.py [--quick]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import Report, fresh_state_dir, median, parse_args, percentile

from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.runstate import MetricPoint, RunState

RUNS_MS, RUN_MS = 200.0, 300.0
STATUSES = ("completed", "completed", "completed", "failed", "interrupted", "running")
POLLER = """
import sys, time, urllib.request
base, period = sys.argv[1], float(sys.argv[2])
while True:
    for path in ("/api/runs", "/api/run/" + sys.argv[3]):
        urllib.request.urlopen(base + path).read()
    time.sleep(period)
"""


def build(path: Path, runs: int, events: int, points: int) -> None:
    """A history of ``runs`` runs and ``events`` events (2 deliveries each), written in bulk."""
    Outbox(path).close()  # the schema, exactly as the library creates it
    now = time.time()
    conn = sqlite3.connect(path)
    states, point_rows, event_rows, delivery_rows = [], [], [], []
    per_run = max(1, events // runs)
    for n in range(runs):
        run_id = f"run-{n:05d}"
        status = STATUSES[n % len(STATUSES)]
        started = now - (runs - n) * 600
        state = RunState(
            run_id=run_id,
            model=f"model-{n % 7}",
            host="workstation",
            status=status,
            started_at=started,
            updated_at=started + 500,
            ended_at=None if status == "running" else started + 500,
            epoch=10,
            total_epochs=10,
            step=1000,
            total_steps=1000,
            metrics={"loss": 0.1, "val_loss": 0.2, "val_acc": 0.9},
            monitor="val_loss",
            best=0.2,
            best_epoch=9,
            cost=1.5,
            summary="Run finished." if status == "completed" else None,
        )
        states.append(
            (
                run_id,
                state.model,
                state.host,
                None,
                status,
                started,
                state.updated_at,
                state.ended_at,
                json.dumps(state.to_dict()),
            )
        )
        count = points if n in (0, runs - 1) else 50  # the runs whose pages are timed have full curves
        for series in ("loss", "lr"):
            point_rows += [(run_id, series, "step", float(x), 1.0 / (x + 1)) for x in range(count)]
        point_rows += [
            (run_id, s, "epoch", float(e), 0.5 / e) for s in ("val_loss", "val_acc") for e in range(1, 11)
        ]
        for k in range(per_run):
            event = NotificationEvent(
                EventType.EPOCH_COMPLETED if k % 10 else EventType.CHECKPOINT_SAVED,
                NotificationLevel.INFO,
                f"Epoch {k} completed: {state.model}",
                "loss=0.1 val_loss=0.2",
                {"run_id": run_id, "model": state.model, "epoch": k, "metrics": {"loss": 0.1}},
            )
            created = started + k
            event_rows.append(
                (event.id, created, event.event_type.value, "info", run_id, event.title, event.to_json())
            )
            delivery_rows.append((event.id, "slack", "delivered", 1, created, created, created))
            dead = k % 50 == 0
            delivery_rows.append(
                (
                    event.id,
                    "email",
                    "dead" if dead else "delivered",
                    1,
                    created,
                    created,
                    None if dead else created,
                )
            )
    with conn:
        conn.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", states)
        conn.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", point_rows)
        conn.executemany(
            "INSERT INTO events (id, created, event_type, level, run_id, title, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        conn.executemany(
            "INSERT INTO deliveries (event_id, channel, state, attempts, next_attempt, last_attempt,"
            " delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            delivery_rows,
        )
    conn.close()


@contextmanager
def dashboard(state_dir: str) -> Iterator[str]:
    """A real ``afs-notify dashboard --port 0 --no-token`` process (a benchmark's own loopback
    server: the token would only be one more header); yields its base URL."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "afs_callbacks", "dashboard", "--port", "0", "--no-token"),
            *("--state-dir", state_dir, "-q"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"(http://\S+?)/?$", process.stdout.readline().strip())
        assert match, "the dashboard printed no URL"
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def answer_times(url: str, paths: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Milliseconds per full answer (connect, query, JSON, read) of each path, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for path in paths.values():  # warm: the first answer pays for the page cache
        urllib.request.urlopen(url + path).read()
    for _ in range(repeats):
        for name, path in paths.items():
            start = time.perf_counter()
            body = urllib.request.urlopen(url + path).read()
            times[name].append((time.perf_counter() - start) * 1000)
            assert body
    return times


def write_loop(outbox: Outbox, seconds: float, tag: str) -> list[float]:
    """What a training writes, as fast as it can for ``seconds``; microseconds per write."""
    latencies = []
    end = time.perf_counter() + seconds
    step = 0
    started = time.time()
    while time.perf_counter() < end:
        step += 1
        begin = time.perf_counter()
        if step % 2:
            state = RunState(
                run_id=f"writer-{tag}", model="writer", status="running", started_at=started, step=step
            )
            outbox.save_run(state, [MetricPoint("loss", float(step), 1.0 / step)])
        else:
            event = NotificationEvent(
                EventType.CUSTOM, NotificationLevel.INFO, f"step {step}", "", {"run_id": f"writer-{tag}"}
            )
            outbox.enqueue(event, ["slack"])
        latencies.append((time.perf_counter() - begin) * 1e6)
    return latencies


@contextmanager
def poller(url: str, period: float, run_id: str) -> Iterator[None]:
    """A client in its own process fetching both pages every ``period`` seconds."""
    process = subprocess.Popen(
        [sys.executable, "-c", POLLER, url, str(period), run_id], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    args = parse_args(__doc__ or "")
    runs, events, points = (50, 2_000, 500) if args.quick else (1_000, 100_000, 2_000)
    repeats, seconds, rounds = (5, 0.5, 1) if args.quick else (30, 3.0, 3)
    report = Report("dashboard", args)
    state_dir = fresh_state_dir()
    path = Path(state_dir) / "outbox.sqlite3"
    start = time.perf_counter()
    build(path, runs, events, points)
    size_mb = os.path.getsize(path) / 1e6
    built = time.perf_counter() - start

    with dashboard(state_dir) as url:
        paths = {
            "/ (page shell)": "/",
            "/api/runs": "/api/runs",
            "/api/runs?status=failed&model=model-3": "/api/runs?status=failed&model=model-3",
            "/api/runs?q=run-0099": "/api/runs?q=run-0099",
            "/api/run/<newest>": f"/api/run/run-{runs - 1:05d}",
            "/api/run/<oldest>": "/api/run/run-00000",
            "/api/outbox": "/api/outbox",
        }
        times = answer_times(url, paths, repeats)
        with sqlite3.connect(path) as conn:  # what an index on events.run_id would give
            conn.execute("CREATE INDEX IF NOT EXISTS events_run ON events (run_id, created)")
        indexed = answer_times(url, {k: v for k, v in paths.items() if "/run/" in v}, repeats)
        times.update({f"{name} + events(run_id) index": t for name, t in indexed.items()})
        report.table(
            f"Answer times, {runs:,} runs and {runs * max(1, events // runs):,} events"
            f" ({size_mb:.0f} MB, built in {built:.0f} s; load average {os.getloadavg()[0]:.1f}"
            f" on {os.cpu_count()} CPUs)",
            ("request", "median ms", "p95 ms", "max ms"),
            [(name, median(t), percentile(t, 0.95), max(t)) for name, t in times.items()],
        )
        runs_p95 = percentile(times["/api/runs"], 0.95)
        run_p95 = max(percentile(times[name], 0.95) for name in ("/api/run/<newest>", "/api/run/<oldest>"))
        report.target(
            "runs page answers", f"< {RUNS_MS:.0f} ms", f"p95 {runs_p95:.0f} ms", runs_p95 < RUNS_MS
        )
        report.target("a run's page answers", f"< {RUN_MS:.0f} ms", f"p95 {run_p95:.0f} ms", run_p95 < RUN_MS)

        newest = f"run-{runs - 1:05d}"
        outbox = Outbox(path)
        sides: dict[str, list[float]] = {
            "no dashboard client": [],
            "a tab polling (1/s)": [],
            "polling flat out": [],
        }
        for n in range(rounds):
            sides["no dashboard client"] += write_loop(outbox, seconds, f"a{n}")
            with poller(url, 1.0, newest):
                sides["a tab polling (1/s)"] += write_loop(outbox, seconds, f"b{n}")
            with poller(url, 0.0, newest):
                sides["polling flat out"] += write_loop(outbox, seconds, f"c{n}")
        outbox.close()
    rows = [
        (name, len(lat) / (rounds * seconds), median(lat), percentile(lat, 0.99), max(lat))
        for name, lat in sides.items()
    ]
    report.table(
        f"A training's writes (save_run + enqueue, {rounds} x {seconds:g} s per side)",
        ("while", "writes/s", "median us", "p99 us", "max us"),
        rows,
    )
    alone, tab = median(sides["no dashboard client"]), median(sides["a tab polling (1/s)"])
    slower = tab / alone - 1
    report.target(
        "writes with an open dashboard",
        "not slowed",
        f"median {tab:.0f} us vs {alone:.0f} us alone ({slower:+.0%})",
        None if args.quick else slower < 0.10,
        "quick mode: too short to decide" if args.quick else "",
    )
    shutil.rmtree(state_dir, ignore_errors=True)  # 100 MB
    report.finish(
        times=times, writes={name: {"count": len(v), "median_us": median(v)} for name, v in sides.items()}
    )


if __name__ == "__main__":
    main()
