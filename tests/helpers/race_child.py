"""Child process for the start-up race test: one of many trainings started at the same moment.

Usage: python race_child.py STATE_DIR BARRIER INDEX
Imports the library, waits until the file BARRIER exists (every process is ready by then),
then runs a short training loop with :class:`RunNotifier` (steps that keep the CPU busy, as
a real training's do) and a few ``notify()`` calls, and prints the run id and the ids of
the events ``notify()`` accepted as one JSON line. It exits normally.
"""

from __future__ import annotations

import json
import os
import sys
import time

from afs_callbacks import NotificationManager
from afs_callbacks.integrations.loop import RunNotifier

STEPS = 60


def busy(seconds: float) -> None:
    """Keep the CPU busy in Python for ``seconds`` (a training step holds the GIL too)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    state_dir, barrier, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    manager = NotificationManager.from_env({"AFS_STATE_DIR": state_dir, "AFS_CONSOLE": "never"})
    while not os.path.exists(barrier):
        time.sleep(0.001)
    ids = []
    run_id = f"racer-{index}"
    with RunNotifier(manager, model_name=run_id, run_id=run_id, total_steps=STEPS, chart=False) as run:
        for step in range(STEPS):
            run.step(loss=1.0 / (step + 1))
            busy(0.002)
            if step % 20 == 19:
                run.epoch({"val_loss": 1.0 / (step + 1)})
                event = manager.notify(f"racer {index} at step {step + 1}", run_id=run_id)
                if event is not None:
                    ids.append(event.id)
    print(json.dumps({"run_id": run_id, "ids": ids}), flush=True)


if __name__ == "__main__":
    main()
