"""What AFSNotify's background threads do while there is nothing to do (issue #16).

A manager with a webhook channel on a loopback receiver, and a run started with the
defaults (stall watchdog and monitors on), then left alone: no step, no event. For each of
the library's threads (names ``afs…``) the script counts, over a quiet window, how often
the thread woke up (``voluntary_ctxt_switches`` in ``/proc/self/task/<tid>/status``: each
wake-up ends in one more voluntary switch when the thread sleeps again) and the CPU time
it used. Then the run ends and the same is counted for a manager that has sent everything.

Targets: every idle thread wakes at most once a second, and a thread with no timed duty
(the writer, the loss reader, the card thread) not at all. The watchdog and the monitors
wake on their period (at least a second): checking is their job. The death watcher is a
separate process polling once a second; its CPU is counted too.

Both are measured twice in the same run, run control off and on (``AFS_CONTROL``): the
run's control reads its commands on the senders' once-a-second look at the store, so it
must add no wake-up.

    python benchmarks/bench_idle.py            # four 10 s windows
    python benchmarks/bench_idle.py --quick    # four 2 s windows
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import Report, parse_args

from afs_callbacks import Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver
from afs_callbacks.tracking import RunTracker, TrackerConfig

PREFIX = "afs"
#: Threads that have no timed duty: idle, they must not wake at all.
NO_TIMER = ("afs-writer", "afs-loss-reader", "afs-cards", "afs-control")
TICK = os.sysconf("SC_CLK_TCK")


def _task(tid: int) -> tuple[int, float] | None:
    """(voluntary context switches, CPU seconds) of one thread of this process."""
    base = Path(f"/proc/self/task/{tid}")
    try:
        status = (base / "status").read_text()
        stat = (base / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    switches = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_"))
    return switches, (int(stat[11]) + int(stat[12])) / TICK


def _process_cpu(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / TICK


def _watcher_pid(state_dir: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(state_dir, "deathwatch.lock").read_text().split()[0])
    return None


def window(seconds: float, state_dir: str) -> list[tuple[str, float, float]]:
    """(thread name, wake-ups per second, CPU ms) for each library thread over ``seconds``."""
    threads = {t.native_id: t.name for t in threading.enumerate() if t.name.startswith(PREFIX)}
    before = {tid: _task(tid) for tid in threads if tid is not None}
    watcher = _watcher_pid(state_dir)
    watcher_before = _process_cpu(watcher) if watcher else None
    time.sleep(seconds)  # the measurement itself: nothing else happens meanwhile
    rows = []
    for tid, start in before.items():
        end = _task(tid)
        if start is None or end is None:
            continue
        rows.append((threads[tid], (end[0] - start[0]) / seconds, (end[1] - start[1]) * 1000))
    if watcher and watcher_before is not None:
        after = _process_cpu(watcher)
        if after is not None:
            rows.append(("death watcher (process)", float("nan"), (after - watcher_before) * 1000))
    return sorted(rows)


def scenario(seconds: float, state_dir: str, *, control: bool) -> dict[str, list[tuple[str, float, float]]]:
    """A run between steps, then after its end, each over a quiet window of ``seconds``."""
    results: dict[str, list[tuple[str, float, float]]] = {}
    with LoopbackReceiver() as receiver:
        settings = Settings(state_dir=state_dir, control=("cli", "dashboard") if control else ())
        manager = NotificationManager({"webhook": WebhookNotifier(receiver.url("/hook"))}, settings=settings)
        run = RunTracker(manager, TrackerConfig(model_name="idle", stall_timeout=3600))
        run.start(epochs=1)
        if control:
            from afs_callbacks.control import attach

            attach(run)  # what the adapters do at the start
        manager.flush(10)  # the start message out: from here on nothing is to be done
        time.sleep(1.0)  # let the start's own work finish (senders back to sleep)
        results["during a run, between steps"] = window(seconds, state_dir)
        run.completed()
        manager.flush(10)
        time.sleep(1.0)
        results["after the run, everything sent"] = window(seconds, state_dir)
        manager.close()
    return results


def main() -> None:
    args = parse_args(__doc__ or "")
    seconds = 2.0 if args.quick else 10.0
    report = Report("idle", args)
    results: dict[str, Any] = {}
    # The same scenario twice in one run: run control off (the default), then on
    # (AFS_CONTROL=cli,dashboard: the run listens for commands on the senders' looks).
    for control in (False, True):
        suffix = " (control on)" if control else " (control off)"
        measured = scenario(seconds, tempfile.mkdtemp(prefix="afs-bench-idle-"), control=control)
        results.update({label + suffix: rows for label, rows in measured.items()})
    for label, rows in results.items():
        report.table(
            f"{label}: {seconds:.0f} s quiet window",
            ("thread", "wake-ups / s", "CPU ms"),
            [(name, "-" if wakes != wakes else f"{wakes:.2f}", f"{cpu:.1f}") for name, wakes, cpu in rows],
        )
        threads = [(name, wakes) for name, wakes, _ in rows if wakes == wakes]
        worst = max(threads, key=lambda item: item[1], default=("none", 0.0))
        report.target(
            f"{label}: any thread", "≤ 1 wake-up / s", f"{worst[1]:.2f} ({worst[0]})", worst[1] <= 1.05
        )
        untimed = [(n, w) for n, w in threads if n.startswith(NO_TIMER)]
        busiest = max(untimed, key=lambda item: item[1], default=("none", 0.0))
        report.target(
            f"{label}: threads without a timer",
            "0 wake-ups",
            f"{busiest[1]:.2f} ({busiest[0]})",
            busiest[1] == 0,
        )
    for label in ("during a run, between steps", "after the run, everything sent"):
        off, on = (
            sum(w for _, w, _ in results[f"{label} ({c})"] if w == w) for c in ("control off", "control on")
        )
        report.target(
            f"{label}: all threads, control on beside off",
            "no extra wake-up (≤ +0.1 / s)",
            f"{on:.2f} vs {off:.2f} / s",
            on <= off + 0.1,
        )
    report.finish(seconds=seconds, windows={k: [list(r) for r in v] for k, v in results.items()})


if __name__ == "__main__":
    main()
