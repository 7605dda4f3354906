"""Watch GPUs, disk space, memory and cost without any training framework.

Runs in a few seconds on any machine, with no account: alerts go to an in-memory channel
and are printed. On a machine with an NVIDIA GPU (``pip install 'afs-callbacks[gpu]'``) it
shows real NVML readings; without one the GPU monitor says why it has no stats.

    python examples/gpu_monitor_example.py

To send the alerts to your own channels instead, build the manager with
``NotificationManager.from_env()`` (reads ``SLACK_WEBHOOK_URL``, ``SMTP_*``, ... from the
environment or ``.env``). Inside a framework you need none of this: the callbacks start
the monitors for the run (``AFS_MONITORS=none`` turns them off).
"""

from __future__ import annotations

import tempfile
import time

import psutil

from afs_callbacks.formatting import plain_text
from afs_callbacks.monitors import CostMonitor, GPUMonitor, Monitors, SystemMonitor
from afs_callbacks.testing import capturing_manager


def pretend_to_train(seconds: float) -> None:
    """Stands in for a training loop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(i * i for i in range(10_000))


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        manager, captured = capturing_manager(workdir)
        free = psutil.disk_usage(workdir).free
        monitors = Monitors(
            # Every GPU this process may use; alerts at 85% memory (warning) and 97% (critical).
            gpu=GPUMonitor(manager, interval=1, run_id="demo", model="tiny-net"),
            # The threshold is set above the real free space here, so the demo alert fires.
            system=SystemMonitor(manager, paths=[workdir], disk_free_threshold=free + 2**30, interval=1),
            # A price of $7,200/h ($2/s) so the $1 and $4 thresholds pass within the demo.
            cost=CostMonitor(manager, hourly_cost=7200.0, thresholds=[1.0, 4.0], model="tiny-net"),
        )
        with monitors:
            pretend_to_train(2.5)
        manager.flush(timeout=5)

        print(f"--- {len(captured.events)} alert(s) sent ---\n")
        for event in captured.events:
            print(plain_text(event), end="\n\n")
        print("--- status ---")
        for status in monitors.status():
            print(f"{status.name}: {status.reason}")
        print("--- summary ---")
        print("\n".join(monitors.summary().lines()) or "(nothing to summarise)")
        manager.close()


if __name__ == "__main__":
    main()
