"""An event storm: 100,000 NaN events in a tight loop.

Measures how many messages leave per channel (target: one plus one digest per window), the
caller's time per event, and memory growth (target: bounded, a few MB).

    python benchmarks/bench_storm.py [--quick]
"""

from __future__ import annotations

import json
import time
import tracemalloc

from _common import fresh_state_dir, parse_args, print_table

from afs_callbacks import EventType, Settings
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import CapturingHandler


def main() -> None:
    args = parse_args(__doc__ or "")
    events = 10_000 if args.quick else 100_000
    window = 1.0 if args.quick else 2.0
    handlers = {"fast": CapturingHandler(), "second": CapturingHandler()}
    manager = NotificationManager(
        handlers, settings=Settings(state_dir=fresh_state_dir(), dedup_window=window)
    )
    manager.notify("warm-up", "", EventType.CUSTOM)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    start = time.perf_counter()
    for step in range(events):
        manager.notify("NaN loss", f"loss is NaN at step {step}", EventType.NAN_DETECTED, run_id="storm", step=step)
    elapsed = time.perf_counter() - start
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The digest goes out when the window closes; wait for it on a condition.
    for handler in handlers.values():
        handler.wait_for(lambda e: e.context.get("digest_count") is not None, timeout=window * 10)
    manager.close()
    rows = []
    for name, handler in handlers.items():
        nan_messages = [e for e in handler.events if e.event_type is EventType.NAN_DETECTED]
        digest = next(e for e in nan_messages if e.context.get("digest_count") is not None)
        rows.append((name, events, len(nan_messages), digest.context["digest_count"]))
    result = {
        "events": events,
        "us_per_event": elapsed / events * 1e6,
        "memory_growth_mb": (after - before) / 2**20,
        "peak_mb": (peak - before) / 2**20,
    }
    if args.json:
        print(json.dumps({**result, "channels": rows}))
        return
    print_table(
        f"Storm of {events:,} NaN events, dedup window {window:g} s",
        ("channel", "events", "messages sent", "digest count"),
        rows,
    )
    print_table(
        "Caller cost",
        ("µs per event", "memory growth MB", "peak MB"),
        [(result["us_per_event"], result["memory_growth_mb"], result["peak_mb"])],
    )


if __name__ == "__main__":
    main()
