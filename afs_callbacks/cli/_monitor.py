"""``afs-notify monitor``: the GPU, system and cost monitors standalone, for a job that has no
framework callback (a shell pipeline, another framework), until a duration passes or the
process is told to stop.
"""

from __future__ import annotations

import argparse
import signal
import threading

from afs_callbacks.cli._common import EXIT_OK, open_session
from afs_callbacks.cli._output import Output


def command_monitor(args: argparse.Namespace, output: Output) -> int:
    """Start the monitors the environment configures, watch, then print their summary."""
    from afs_callbacks.monitors import start_monitors

    session = open_session(args)
    manager = session.manager
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    monitors = start_monitors(manager, paths=args.path or (), run_id=args.run_id, model=args.model)
    try:
        rows = [[s.name, "yes" if s.active else "no", s.reason] for s in monitors.status()]
        output.table(["monitor", "active", "detail"], rows)
        output.note(
            "watching" + (f" for {args.duration:g} s" if args.duration else " until Ctrl-C or SIGTERM")
        )
        stop.wait(args.duration or None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        monitors.stop()
        manager.close(args.timeout)
    lines = monitors.summary().lines()
    for line in lines or ["no figures (no GPU stats and no price set)"]:
        output.line(line)
    return EXIT_OK
