"""Watch GPUs, disk space, memory and cost without any training framework.

Runs in a few seconds on any machine, with no account. The alerts go to your channels when
the environment or ``.env`` configures one, else to a demo webhook on 127.0.0.1 (see
``examples/_demo.py``); ``afs-notify history`` shows them afterwards. On a machine with an
NVIDIA GPU (``pip install 'afs-callbacks[gpu]'``) it shows real NVML readings; without one
the GPU monitor says why it has no stats.

    python examples/gpu_monitor_example.py

Inside a framework you need none of this: the callbacks start the monitors for the run
(``AFS_MONITORS=none`` turns them off); ``afs-notify monitor`` runs them from a shell.
"""

from __future__ import annotations

import tempfile
import time

import psutil
from _demo import notifications  # your channels from .env, or a local demo receiver

from afs_callbacks.monitors import CostMonitor, GPUMonitor, Monitors, SystemMonitor


def pretend_to_train(seconds: float) -> None:
    """Stands in for a training loop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(i * i for i in range(10_000))


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir, notifications() as manager:
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
        print("--- status ---")
        for status in monitors.status():
            print(f"{status.name}: {status.reason}")
        print("--- summary ---")
        print("\n".join(monitors.summary().lines()) or "(nothing to summarise)")


if __name__ == "__main__":
    main()
