"""What the Prometheus textfile writer costs a training run (issue #26).

With ``AFS_PROMETHEUS_TEXTFILE_DIR`` set, every run state the tracker hands over also goes
to the textfile writer. The script measures:

1. the training thread's part: ``manager.update_run(state)`` with and without the
   textfile, per call (the tracker calls it every 5 s and at news, not per step);
2. who writes: every file write is counted by thread name (target: none on the training
   thread);
3. how often: states are handed over every millisecond for a while; the run's file must
   be written at most once a second (the gaps between writes), its last state at close;
4. a hand-written training loop (``RunNotifier``, floats for losses) with and without the
   textfile: steps per second.

    python benchmarks/bench_textfile.py            # 10 s of states, 200,000 steps
    python benchmarks/bench_textfile.py --quick    # 3 s, 20,000 steps
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import Report, median, parse_args

from afs_callbacks.config import Settings
from afs_callbacks.integrations.loop import RunNotifier
from afs_callbacks.manager import NotificationManager
from afs_callbacks.prometheus.textfile import TextfileWriter, run_file_name
from afs_callbacks.runstate import RunState


def manager(root: Path, textfile: Path | None) -> NotificationManager:
    settings = Settings(
        state_dir=root / "state", console="never", card=False, prometheus_textfile_dir=textfile
    )
    return NotificationManager(settings=settings)


def update_cost(root: Path, textfile: Path | None, calls: int) -> float:
    """Microseconds per ``update_run`` call on this (the training) thread."""
    m = manager(root, textfile)
    state = RunState(run_id="cost", model="m", host="h", step=0, updated_at=time.time())
    m.update_run(state)  # the first call builds the writer and starts threads: not timed
    times = []
    for step in range(calls):
        fresh = replace(state, step=step)
        started = time.perf_counter()
        m.update_run(fresh)
        times.append(time.perf_counter() - started)
    m.close(timeout=5)
    return median(times) * 1e6


def writes_while_flooded(textfile: Path, seconds: float) -> tuple[list[float], dict[str, int], int]:
    """States every millisecond for ``seconds``: the run file's write times, writes per
    thread, and the states handed over."""
    times: list[float] = []
    threads: dict[str, int] = {}
    original = TextfileWriter._write

    def counted(self: TextfileWriter, name: str, families: list[Any]) -> None:
        if name == run_file_name("flood"):
            times.append(time.monotonic())  # when the write starts: rounds are paced from there
        original(self, name, families)
        thread = threading.current_thread().name
        threads[thread] = threads.get(thread, 0) + 1

    TextfileWriter._write = counted  # type: ignore[method-assign]
    try:
        writer = TextfileWriter(textfile, store="bench", health=list)
        state = RunState(run_id="flood", model="m", host="h", updated_at=time.time())
        offered = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            offered += 1
            writer.offer(replace(state, step=offered))
            time.sleep(0.001)
        writer.offer(replace(state, step=offered + 1, status="completed", ended_at=time.time()))
        writer.close(5.0)
    finally:
        TextfileWriter._write = original  # type: ignore[method-assign]
    return times, threads, offered


def loop_rate(root: Path, textfile: Path | None, steps: int) -> float:
    """Steps per second of a hand-written loop under RunNotifier."""
    m = manager(root, textfile)
    with RunNotifier(m, model_name="bench", total_steps=steps, monitors=False, chart=False) as run:
        started = time.perf_counter()
        for step in range(steps):
            run.step(loss=1.0 / (step + 1))
        elapsed = time.perf_counter() - started
    m.close(timeout=5)
    return steps / elapsed


def main() -> None:
    args = parse_args(__doc__ or "")
    report = Report("textfile", args)
    seconds, steps, calls = (3.0, 20_000, 2_000) if args.quick else (10.0, 200_000, 20_000)
    # The runs' death watcher outlives them by design (it lingers a minute and may still
    # write its files while the folder goes): what it leaves is not the benchmark's error.
    with tempfile.TemporaryDirectory(prefix="afs-bench-textfile-", ignore_cleanup_errors=True) as folder:
        root = Path(folder)
        textfile = root / "textfile"
        textfile.mkdir()
        without = update_cost(root / "a", None, calls)
        with_textfile = update_cost(root / "b", textfile, calls)
        report.table(
            "Training thread: manager.update_run(state), median per call",
            ("textfile", "µs per call"),
            [("off", f"{without:.2f}"), ("on", f"{with_textfile:.2f}")],
        )
        times, threads, offered = writes_while_flooded(textfile, seconds)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # The last write is the end, written at close at once: not paced.
        paced = gaps[:-1] if len(gaps) > 1 else gaps
        report.table(
            f"A state every millisecond for {seconds:g} s",
            ("states handed over", "run file writes", "shortest gap (s)", "writes by thread"),
            [(offered, len(times), f"{min(paced):.3f}" if paced else "-", threads)],
        )
        rate_off = loop_rate(root / "c", None, steps)
        rate_on = loop_rate(root / "d", textfile, steps)
        report.table(
            f"RunNotifier loop, {steps:,} steps",
            ("textfile", "steps/s"),
            [("off", f"{rate_off:,.0f}"), ("on", f"{rate_on:,.0f}")],
        )
    training_writes = sum(count for name, count in threads.items() if name != "afs-prometheus")
    report.target("file writes on the training thread", "none", str(training_writes), training_writes == 0)
    shortest = min(paced) if paced else float("inf")
    report.target(
        "writes of a run's file", "at most 1 per second", f"shortest gap {shortest:.3f} s", shortest >= 0.99
    )
    extra = with_textfile - without
    report.target(
        "update_run cost added on the training thread",
        "a dict store and a wake-up (a few µs, once per snapshot, not per step)",
        f"{extra:+.2f} µs",
        extra < 10.0,
    )
    report.finish(
        update_us={"off": without, "on": with_textfile},
        writes=len(times),
        offered=offered,
        shortest_gap=shortest,
        threads=threads,
        loop_steps_per_second={"off": rate_off, "on": rate_on},
    )


if __name__ == "__main__":
    main()
