"""Child process for the storage-window test: a burst of ``notify()`` calls, then SIGKILL.

Usage: python burst_child.py STATE_DIR ACKS RATE
Builds a manager on STATE_DIR (no channel), then calls ``notify()`` RATE times a second
until it is killed. ACKS is a file of float64 slots, memory-mapped so that what is written
survives the kill: slot 0 gets the burst's start, slot n + 1 the moment ``notify()`` number
n returned (``time.monotonic()``, one clock for every process on the machine). Each event
carries its number as ``seq``.
"""

from __future__ import annotations

import mmap
import struct
import sys
import time

from afs_callbacks import NotificationManager, Settings

SLOTS = 100_000


def main() -> None:
    state_dir, acks_path, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    manager = NotificationManager({}, settings=Settings(state_dir=state_dir, console="never"))
    manager.notify("warm-up", run_id="burst")  # starts the writer, opens the file
    manager.flush(30)
    with open(acks_path, "r+b") as file:
        acks = mmap.mmap(file.fileno(), SLOTS * 8)
    start = time.monotonic()
    struct.pack_into("d", acks, 0, start)
    for n in range(SLOTS - 1):
        ahead = start + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        manager.notify(f"burst {n}", "one of many", run_id="burst", seq=n)
        struct.pack_into("d", acks, 8 * (n + 1), time.monotonic())
    time.sleep(3600)  # the burst outlived the test's kill: wait for it


if __name__ == "__main__":
    main()
