"""Eight training processes notifying at once through one state directory (issue #10).

Each process builds its own manager on the same outbox file (one channel that records in
memory, so its sender thread runs too), waits at a barrier, then calls ``notify()`` for
every event and times each call. Two patterns: a burst (back to back, the worst case) and
a training-like pace (one event every 2 ms). Afterwards the file is read: every accepted
event must be in it exactly once.

Targets: ``notify()`` p99 <= 1 ms and max <= 20 ms with 8 processes, 0 events dropped.

    python benchmarks/bench_contention.py [--quick] [--processes 8] [--events 500]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import time
from typing import Any

from _common import Report, fresh_state_dir, parse_args, percentile

#: Length of the reference computation: about what notify() takes on an idle CPU.
WORK_SECONDS = 100e-6


def _child(state_dir: str, index: int, events: int, gap: float, barrier: Any, results: Any) -> None:
    from afs_callbacks import Settings
    from afs_callbacks.manager import NotificationManager
    from afs_callbacks.testing import CapturingHandler

    captured = CapturingHandler()
    manager = NotificationManager(
        # The channel budget off (burst=0): every event must arrive, none folded into a digest.
        {"capture": captured},
        settings=Settings(state_dir=state_dir, dedup_window=0, burst=0, console="never"),
    )
    manager.notify(f"warm-up {index}", run_id=f"p{index}")  # the first call starts the threads
    manager.flush(30)
    work = _calibrate(WORK_SECONDS)
    barrier.wait()
    times, empty, accepted = [], [], 0
    for n in range(events):
        start = time.perf_counter()
        event = manager.notify(f"process {index} event {n}", "a step's news", run_id=f"p{index}", step=n)
        times.append(time.perf_counter() - start)
        accepted += event is not None
        # The same timing around pure computation as long as a typical notify(): what the
        # machine's scheduling alone does to a call of that length (no lock, no thread).
        start = time.perf_counter()
        sum(range(work))
        empty.append(time.perf_counter() - start)
        if gap:
            end = time.perf_counter() + gap
            while time.perf_counter() < end:  # the training step: busy, as a real one is
                pass
    manager.flush(60)
    manager.close()
    results.put({"times": times, "empty": empty, "accepted": accepted, "delivered": len(captured.events) - 1})


def _calibrate(seconds: float) -> int:
    """A ``sum(range(n))`` size that takes about ``seconds`` here (the median of a few)."""
    n = 10_000
    start = time.perf_counter()
    sum(range(n))
    took = max(time.perf_counter() - start, 1e-7)
    return max(1, int(n * seconds / took))


def run_pattern(processes: int, events: int, gap: float) -> dict[str, Any]:
    """All processes notify ``events`` each; return latency and loss figures."""
    state_dir = fresh_state_dir()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    children = [
        ctx.Process(target=_child, args=(state_dir, i, events, gap, barrier, results))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join(60)
    times = [t for outcome in outcomes for t in outcome["times"]]
    empty = [t for outcome in outcomes for t in outcome["empty"]]
    accepted = sum(outcome["accepted"] for outcome in outcomes)
    conn = sqlite3.connect(os.path.join(state_dir, "outbox.sqlite3"))
    stored = conn.execute("SELECT COUNT(*) FROM events WHERE title LIKE 'process %'").fetchone()[0]
    conn.close()
    return {
        "p50_us": percentile(times, 0.5) * 1e6,
        "p99_us": percentile(times, 0.99) * 1e6,
        "max_ms": max(times) * 1e3,
        "empty_p99_us": percentile(empty, 0.99) * 1e6,
        "empty_max_ms": max(empty) * 1e3,
        "sent": processes * events,
        "accepted": accepted,
        "stored": stored,
        "delivered": sum(outcome["delivered"] for outcome in outcomes),
        "dropped": processes * events - stored,
    }


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--events", type=int, default=500, help="events per process")


def main() -> None:
    args = parse_args(__doc__ or "", _extra)
    report = Report("contention", args)
    events = 50 if args.quick else args.events
    load_before = os.getloadavg()[0]
    figures = {
        "burst": run_pattern(args.processes, events, 0.0),
        "paced": run_pattern(args.processes, events, 0.002),
    }
    columns = ["p50_us", "p99_us", "max_ms", "empty_p99_us", "empty_max_ms", "stored", "delivered", "dropped"]
    header = ["pattern", "processes", "events", "p50 µs", "p99 µs", "max ms"]
    header += ["same-size work p99 µs", "same-size work max ms", "stored", "messages sent", "dropped"]
    rows = [[name, args.processes, f["sent"], *(f[c] for c in columns)] for name, f in figures.items()]
    report.table(f"{args.processes} processes notifying through one state directory", header, rows)
    note = f"load average {load_before:.1f} on {os.cpu_count()} CPUs at the start"
    worst_p99 = max(f["p99_us"] for f in figures.values())
    worst_max = max(f["max_ms"] for f in figures.values())
    noise_p99 = max(f["empty_p99_us"] for f in figures.values())
    noise_max = max(f["empty_max_ms"] for f in figures.values())
    dropped = sum(f["dropped"] for f in figures.values())
    # No verdict where plain computation of notify()'s length misses it too: the machine decides.
    p99_met = None if noise_p99 > 1000 and worst_p99 > 1000 else worst_p99 <= 1000
    max_met = None if noise_max > 20 and worst_max > 20 else worst_max <= 20
    report.target("notify() p99", "<= 1 ms", f"{worst_p99 / 1000:.2f} ms", p99_met, note)
    report.target("notify() max", "<= 20 ms", f"{worst_max:.1f} ms", max_met, note)
    report.target("events dropped", "0", str(dropped), dropped == 0)
    report.finish(**figures, load_average=load_before, cpus=os.cpu_count())


if __name__ == "__main__":
    main()
