"""An event storm: 100,000 NaN events in a tight loop.

Measures how many messages leave per channel (target: one plus one digest per window), the
caller's time per event, and memory growth (target: bounded, a few MB): the process's RSS
over the storm, and the Python heap over a second storm traced with ``tracemalloc``.

    python benchmarks/bench_storm.py [--quick]
"""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable

import psutil
from _common import Report, fresh_state_dir, parse_args

from afs_callbacks import EventType, NotificationEvent, Settings
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import CapturingHandler

MEMORY_MB = 5.0  # what "a few MB" is judged against


def _storm(manager: NotificationManager, run_id: str, events: int) -> float:
    """``events`` NaN notifications of one run in a tight loop; the seconds it took.

    Each names its step, so only the explicit ``key`` makes them true repeats (as the NaN
    detector marks its alerts); without it every one would be a distinct message.
    """
    start = time.perf_counter()
    for step in range(events):
        manager.notify(
            "NaN loss",
            f"loss is NaN at step {step}",
            EventType.NAN_DETECTED,
            key="loss",
            run_id=run_id,
            step=step,
        )
    return time.perf_counter() - start


def main() -> None:
    args = parse_args(__doc__ or "")
    events = 10_000 if args.quick else 100_000
    window = 1.0 if args.quick else 2.0
    handlers = {"fast": CapturingHandler(), "second": CapturingHandler()}
    manager = NotificationManager(
        handlers, settings=Settings(state_dir=fresh_state_dir(), dedup_window=window)
    )
    manager.notify("warm-up", "", EventType.CUSTOM)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    elapsed = _storm(manager, "storm", events)
    rss_after = process.memory_info().rss
    # A second storm (another run) under tracemalloc, which slows every allocation down:
    # it measures the Python heap, the first one the caller's time and the process's RSS.
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    _storm(manager, "storm-traced", events)
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def digest_of(run_id: str) -> Callable[[NotificationEvent], bool]:
        return lambda e: e.run_id == run_id and e.digest_count > 0

    # The digest goes out when the window closes; wait for it on a condition.
    for handler in handlers.values():
        handler.wait_for(digest_of("storm"), timeout=window * 10)
    manager.close()
    rows = []
    for name, handler in handlers.items():
        nan_messages = [
            e for e in handler.events if e.event_type is EventType.NAN_DETECTED and e.run_id == "storm"
        ]
        digest = next(e for e in nan_messages if digest_of("storm")(e))
        rows.append((name, events, len(nan_messages), digest.digest_count))
    result = {
        "events": events,
        "us_per_event": elapsed / events * 1e6,
        "rss_growth_mb": (rss_after - rss_before) / 2**20,
        "memory_growth_mb": (after - before) / 2**20,
        "peak_mb": (peak - before) / 2**20,
    }
    report = Report("storm", args)
    report.table(
        f"Storm of {events:,} NaN events, dedup window {window:g} s",
        ("channel", "events", "messages sent", "digest count"),
        rows,
    )
    report.table(
        "Caller cost",
        ("µs per event", "RSS growth MB", "Python heap growth MB", "heap peak MB"),
        [(result["us_per_event"], result["rss_growth_mb"], result["memory_growth_mb"], result["peak_mb"])],
    )
    # One message, then one digest per window the storm lasted into.
    allowed = 1 + math.ceil(elapsed / window)
    worst = max(row[2] for row in rows)
    report.target(
        "messages per channel",
        "one + one digest per window",
        f"{worst} (allowed {allowed})",
        worst <= allowed,
    )
    grown = max(result["rss_growth_mb"], result["peak_mb"])
    report.target(
        "memory growth",
        "bounded, a few MB",
        f"RSS +{result['rss_growth_mb']:.1f} MB, heap peak {result['peak_mb']:.2f} MB",
        grown < MEMORY_MB,
    )
    report.finish(**result, channels=rows)


if __name__ == "__main__":
    main()
