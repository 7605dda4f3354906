"""The storage window: how long an acknowledged event can wait before it is stored (issue #22).

``notify()`` returns once the event is in the writer's in-process queue; the writer thread
stores it in the outbox soon after. A SIGKILL in between loses it. This benchmark measures
that window from outside, with a real process and a real SIGKILL: a child process calls
``notify()`` in a burst (paced at a rate, or back to back) with one webhook channel to a
loopback receiver, and writes the time each call returned (``time.monotonic()``, the same
clock in every process on Linux) into a memory-mapped file, which outlives the kill. The
parent kills it at a random moment of the burst, then reads the outbox: every acknowledged
event that is not stored, and the age at the kill of the oldest of them.

Target: the oldest acknowledged-but-unstored event <= 50 ms old at the kill, at 10,000
events/s from one process.

    python benchmarks/bench_storage_window.py [--quick] [--kills 12] [--seconds 2.5]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Report, parse_args, percentile

HERE = Path(__file__).resolve().parent
#: Slots in the acknowledgement file: slot 0 holds the child's start mark, slot n + 1 the
#: time notify() number n returned (0.0: not returned).
SLOTS = 200_000
#: The issue's target, milliseconds.
TARGET_MS = 50.0


def child(state_dir: str, acks_path: str, url: str, rate: float, seconds: float) -> None:
    """The killed process: a manager with one webhook, then ``notify()`` for ``seconds``
    at ``rate`` per second (0: back to back), each return time written to ``acks_path``."""
    from afs_callbacks import Settings
    from afs_callbacks.channels.webhook import WebhookNotifier
    from afs_callbacks.manager import NotificationManager

    channels = {"webhook": WebhookNotifier(url)} if url != "-" else {}
    manager = NotificationManager(channels, settings=Settings(state_dir=state_dir, console="never"))
    manager.notify("warm-up", run_id="burst")  # starts the writer and the sender, opens the file
    manager.flush(30)
    with open(acks_path, "r+b") as file:
        acks = mmap.mmap(file.fileno(), SLOTS * 8)
    start = time.monotonic()
    struct.pack_into("d", acks, 0, start)
    n = 0
    while n < SLOTS - 1:
        now = time.monotonic()
        if now - start > seconds:
            break
        if rate and now < start + n / rate:
            time.sleep(start + n / rate - now)
        manager.notify(f"burst {n}", "one of many", run_id="burst", seq=n)
        struct.pack_into("d", acks, 8 * (n + 1), time.monotonic())
        n += 1
    manager.close()


def one_kill(rate: float, seconds: float, url: str, rng: random.Random) -> dict[str, Any]:
    """Start a child, kill it at a random moment of its burst; the window it left."""
    state_dir = tempfile.mkdtemp(prefix="afs-bench-window-")
    acks_path = os.path.join(state_dir, "acks")
    with open(acks_path, "wb") as file:
        file.truncate(SLOTS * 8)
    paths = [str(HERE.parent), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--child", state_dir, acks_path, url, str(rate), str(seconds)]
    # A file, not a pipe, for the child's errors: a full pipe would stall it.
    errors = open(os.path.join(state_dir, "stderr"), "w+b")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, env=env, stderr=errors)
    with open(acks_path, "r+b") as file:
        acks = mmap.mmap(file.fileno(), SLOTS * 8)
    deadline = time.monotonic() + 120
    while struct.unpack_from("d", acks, 0)[0] == 0.0:
        if process.poll() is not None or time.monotonic() > deadline:
            errors.seek(0)
            raise RuntimeError(f"the child did not start: {errors.read().decode()[-2000:]}")
        time.sleep(0.01)
    started = struct.unpack_from("d", acks, 0)[0]
    # Anywhere in the burst after its first 0.2 s (the queue has had time to fill).
    time.sleep(max(0.0, started + rng.uniform(0.2, seconds * 0.95) - time.monotonic()))
    killed_at = time.monotonic()
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    errors.close()
    acked = {}
    for n in range(SLOTS - 1):
        at = struct.unpack_from("d", acks, 8 * (n + 1))[0]
        if at == 0.0:
            break
        acked[n] = at
    acks.close()
    conn = sqlite3.connect(os.path.join(state_dir, "outbox.sqlite3"))
    stored = {
        int(row[0])
        for row in conn.execute(
            "SELECT json_extract(payload, '$.context.seq') FROM events WHERE title LIKE 'burst %'"
        )
    }
    conn.close()
    unstored = [killed_at - at for n, at in acked.items() if n not in stored]
    burst = max(acked.values()) - started if acked else 0.0
    return {
        "killed_after_s": killed_at - started,
        "acked": len(acked),
        "stored": len(stored & set(acked)),
        "unstored": len(unstored),
        "oldest_unstored_ms": max(unstored, default=0.0) * 1e3,
        "rate": len(acked) / burst if burst else 0.0,
    }


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs per pattern")
    parser.add_argument("--seconds", type=float, default=2.5, help="length of each burst")
    parser.add_argument("--seed", type=int, default=None, help="for the random kill moments")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        state_dir, acks_path, url, rate, seconds = sys.argv[2:7]
        child(state_dir, acks_path, url, float(rate), float(seconds))
        return
    args = parse_args(__doc__ or "", _extra)
    report = Report("storage_window", args)
    kills = 3 if args.quick else args.kills
    seconds = 0.8 if args.quick else args.seconds
    rng = random.Random(args.seed)
    from afs_callbacks.testing import LoopbackReceiver

    load_before = os.getloadavg()[0]
    figures: dict[str, list[dict[str, Any]]] = {}
    with LoopbackReceiver() as receiver:
        for channel, url in (("none", "-"), ("a webhook", receiver.url("/hook"))):
            for pace, rate in (("10,000 events/s", 10_000.0), ("back to back", 0.0)):
                name = f"{pace}, channel: {channel}"
                figures[name] = [one_kill(rate, seconds, url, rng) for _ in range(kills)]
    rows = []
    for name, trials in figures.items():
        oldest = [t["oldest_unstored_ms"] for t in trials]
        rows.append(
            [
                name,
                len(trials),
                f"{percentile([t['rate'] for t in trials], 0.5):,.0f}",
                sum(t["acked"] for t in trials),
                sum(t["unstored"] for t in trials),
                percentile(oldest, 0.5),
                max(oldest),
            ]
        )
    header = ["burst", "kills", "events/s (median)", "acknowledged", "unstored at the kill"]
    header += ["oldest unstored ms (median)", "oldest unstored ms (max)"]
    report.table("SIGKILL during a burst of notify(): acknowledged but not stored", header, rows)
    note = f"load average {load_before:.1f} on {os.cpu_count()} CPUs at the start"
    for name, trials in figures.items():
        if name.startswith("10,000"):
            worst = max(t["oldest_unstored_ms"] for t in trials)
            what = f"oldest acknowledged, unstored at a SIGKILL ({name})"
            report.target(what, f"<= {TARGET_MS:g} ms", f"{worst:.1f} ms", worst <= TARGET_MS, note)
    report.finish(**figures, load_average=load_before, cpus=os.cpu_count())


if __name__ == "__main__":
    main()
