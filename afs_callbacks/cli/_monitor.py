"""``afs-notify monitor``: the GPU, system and cost monitors standalone, for a job that has no
framework callback (a shell pipeline, another framework), until a duration passes or the
process is told to stop.

With ``--json`` it prints one JSON object per line as things happen, for a script or a log
shipper to read: the monitors' status, a reading every ``--interval`` seconds, each alert
as it is accepted, and the summary at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from afs_callbacks.cli._common import EXIT_OK, non_negative, open_session, say_off
from afs_callbacks.cli._output import Output
from afs_callbacks.events import NotificationEvent
from afs_callbacks.redaction import redact

if TYPE_CHECKING:
    from afs_callbacks.manager import NotificationManager
    from afs_callbacks.monitors import Monitors


#: The shortest ``--interval``: readings faster than this would only spin the CPU.
MIN_INTERVAL = 0.1


def reading_interval(text: str) -> float:
    """An argparse type for ``--interval``: seconds, at least :data:`MIN_INTERVAL`."""
    value = non_negative(text)
    if value < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_INTERVAL:g} seconds, got {text}")
    return value


def command_monitor(args: argparse.Namespace, output: Output) -> int:
    """Start the monitors the environment configures, watch, then print their summary."""
    from afs_callbacks.monitors import start_monitors

    session = open_session(args)
    manager = session.manager
    if session.off:
        say_off(output, session.off, "the readings are only printed")
    lines = JsonLines(output) if args.json else None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    watched = manager if lines is None else cast("NotificationManager", _AlertTap(manager, lines.alert))
    monitors = start_monitors(watched, paths=args.path or (), run_id=args.run_id, model=args.model)
    try:
        if lines is None:
            rows = [[s.name, "yes" if s.active else "no", s.reason] for s in monitors.status()]
            output.table(["monitor", "active", "detail"], rows)
            output.note(
                "watching" + (f" for {args.duration:g} s" if args.duration else " until Ctrl-C or SIGTERM")
            )
            stop.wait(args.duration or None)
        else:
            lines.status(monitors)
            _watch(monitors, lines, stop, duration=args.duration, interval=args.interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        monitors.stop()
        manager.close(args.timeout)
    if lines is not None:
        lines.summary(monitors)
        return EXIT_OK
    for line in monitors.summary().lines() or ["no figures (no GPU stats and no price set)"]:
        output.line(line)
    return EXIT_OK


def _watch(
    monitors: Monitors, lines: JsonLines, stop: threading.Event, *, duration: float, interval: float
) -> None:
    """Print a reading every ``interval`` seconds until ``duration`` passes or ``stop`` is set."""
    deadline = time.monotonic() + duration if duration else None
    while True:
        wait = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
        if stop.wait(wait):
            return
        lines.reading(monitors)
        if deadline is not None and time.monotonic() >= deadline:
            return


class JsonLines:
    """One JSON object per line on stdout, each with ``type`` and ``time``; secrets masked.

    Alerts arrive from the monitors' threads, so writes are serialised.
    """

    def __init__(self, output: Output) -> None:
        self._stream = output.stdout
        self._lock = threading.Lock()

    def write(self, kind: str, **fields: Any) -> None:
        """Print ``{"type": kind, "time": now, **fields}`` as one line."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        text = redact(json.dumps({"type": kind, "time": now, **fields}, ensure_ascii=False, default=str))
        with self._lock:
            try:
                self._stream.write(text + "\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError):  # the reader left: keep watching, stop printing
                pass

    def status(self, monitors: Monitors) -> None:
        """What each monitor watches, or why it cannot."""
        items = [{"name": s.name, "active": s.active, "detail": s.reason} for s in monitors.status()]
        self.write("status", monitors=items)

    def reading(self, monitors: Monitors) -> None:
        """The latest figures of every monitor."""
        figures: dict[str, Any] = {}
        if monitors.gpu is not None:
            gpu = monitors.gpu
            figures["gpu"] = {label: dataclasses.asdict(r) for label, r in gpu.readings.items()}
            if gpu.unavailable is not None:
                figures["gpu_status"] = gpu.unavailable
        if monitors.system is not None:
            figures["system"] = monitors.system.last_readings
        if monitors.cost is not None:
            figures["cost"] = monitors.cost.summary()
        self.write("reading", **figures)

    def alert(self, event: NotificationEvent) -> None:
        """An alert a monitor raised, as the manager accepted it."""
        self.write(
            "alert",
            event_type=event.event_type.value,
            level=event.level.value,
            title=event.title,
            message=event.message,
            context=dict(event.context),
        )

    def summary(self, monitors: Monitors) -> None:
        """Peak GPU memory and cost, as the training summary has them."""
        summary = monitors.summary()
        self.write("summary", **summary.to_dict(), lines=summary.lines())


class _AlertTap:
    """Stands in for the manager in front of the monitors: each alert goes to the manager as
    usual (channels, history), and the event it accepted is also shown as a JSON line."""

    def __init__(self, manager: NotificationManager, on_event: Any) -> None:
        self._manager = manager
        self._on_event = on_event

    def notify(self, *args: Any, **kwargs: Any) -> NotificationEvent | None:
        """Forward to the manager; show what it accepted."""
        return self._shown(self._manager.notify(*args, **kwargs))

    def emit(self, event: NotificationEvent) -> NotificationEvent | None:
        """Forward to the manager; show what it accepted."""
        return self._shown(self._manager.emit(event))

    def _shown(self, event: NotificationEvent | None) -> NotificationEvent | None:
        if isinstance(event, NotificationEvent):
            self._on_event(event)
        return event

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._manager, name)
        if name.startswith("notify_") and callable(value):
            # notify_cost_alert() and friends return the event they accepted, like notify().
            return lambda *args, **kwargs: self._shown(value(*args, **kwargs))
        return value
