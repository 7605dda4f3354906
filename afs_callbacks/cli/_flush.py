"""``afs-notify flush``: deliver what is pending now (a crashed run's backlog, messages
queued while offline), ignoring backoff, and report per channel what happened.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Mapping

from afs_callbacks._install import docs_page
from afs_callbacks.channels.console import ConsoleNotifier
from afs_callbacks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ChannelProblem,
    channel_order,
    library_silenced,
    open_session,
    print_problems,
    release,
    requested_channels,
    say_off,
)
from afs_callbacks.cli._output import Output
from afs_callbacks.delivery.outbox import DEAD, DELIVERED, PENDING, SENDING
from afs_callbacks.manager import FlushReport, NotificationManager
from afs_callbacks.redaction import redact


def command_flush(args: argparse.Namespace, output: Output) -> int:
    """Flush and print delivered / failed / still pending per channel.

    Exit code: 0 when nothing is left pending and nothing failed, 1 otherwise, 2 on a
    configuration error.
    """
    session = open_session(args, check_store=True)
    manager, problems = session.manager, session.problems
    if session.off:
        say_off(output, session.off, "unset it to flush")
        release(manager)
        return EXIT_OK
    if session.store_problem:
        release(manager, store=False)
        session.require_store()
    try:
        print_problems(output, problems)
        requested = requested_channels(args)
        outbox = manager.outbox
        if args.retry_dead:
            count = outbox.requeue_dead(requested)
            output.note(f"{count} failed message{'s' if count != 1 else ''} queued again")
        active = session.usable + (["console"] if _adopt_console_backlog(manager, requested) else [])
        report = _flush_with_progress(manager, active, args.timeout, output)
        shown = {
            name: counts
            for name, counts in report.by_channel.items()
            if (requested is None or name in requested) and (name in active or any(counts.values()))
        }
        notes = {
            name: "; ".join(
                part for part in (_unsent(shown[name]), _note(manager, name, active, problems)) if part
            )
            for name in shown
        }
        ok = all(counts["pending"] == 0 and counts["dead"] == 0 for counts in shown.values())
        if output.json_mode:
            output.json(
                {
                    "channels": {name: {**shown[name], "note": notes[name]} for name in shown},
                    "ok": ok,
                }
            )
        elif not any(any(counts.values()) for counts in shown.values()):
            output.line("Nothing to deliver: no message is pending.")
        else:
            rows = [
                [
                    name,
                    str(shown[name]["delivered"]),
                    str(shown[name]["dead"]),
                    str(shown[name]["pending"]),
                    notes[name],
                ]
                for name in channel_order(list(shown))
            ]
            output.table(["CHANNEL", "DELIVERED", "FAILED", "PENDING", "NOTE"], rows)
        if session.config_error:
            return EXIT_USAGE
        return EXIT_OK if ok else EXIT_FAILED
    finally:
        manager.close(timeout=0)


def _adopt_console_backlog(manager: NotificationManager, requested: list[str] | None) -> bool:
    """Register the console when it has pending rows (a crashed run's) that are ours to print.

    The manager creates its console channel only when a new event needs it, so a flush
    would otherwise leave them pending.
    """
    if manager.settings.console == "never" or (requested is not None and "console" not in requested):
        return False
    counts = manager.outbox.counts(["console"]).get("console", {})
    if not counts.get(PENDING, 0) + counts.get(SENDING, 0):
        return False
    with library_silenced():
        manager.register_handler("console", ConsoleNotifier())
    return True


def _flush_with_progress(
    manager: NotificationManager, active: list[str], timeout: float, output: Output
) -> FlushReport:
    outbox = manager.outbox

    def finished() -> int:
        counts = outbox.counts(active)
        return sum(c.get(DELIVERED, 0) + c.get(DEAD, 0) for c in counts.values())

    before = finished()
    total = outbox.outstanding(active)
    box: list[FlushReport] = []
    worker = threading.Thread(
        target=lambda: box.append(manager.flush(timeout)), name="afs-notify-flush", daemon=True
    )
    with output.progress(lambda: f"flushing: {min(finished() - before, total)} of {total} done"):
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    return box[0] if box else manager.flush(0)


def _unsent(counts: Mapping[str, int]) -> str:
    """What the flush ended without sending, on purpose: stale progress, a folded flood."""
    parts = []
    if counts.get("superseded"):
        parts.append(f"{counts['superseded']} superseded (stale progress, not sent)")
    if counts.get("folded"):
        parts.append(f"{counts['folded']} folded into a digest")
    return ", ".join(parts)


def _note(manager: NotificationManager, name: str, active: list[str], problems: list[ChannelProblem]) -> str:
    """Why a channel still has pending messages, or what to do about them."""
    for problem in problems:
        if problem.name == name:
            return problem.reason
    if name not in active:
        return f"no settings for it here (see {docs_page(f'channels/{name}.md')}); set them and flush again"
    pending = manager.outbox.history(limit=1, channel=name, state=PENDING)
    for entry in pending:
        for delivery in entry.deliveries:
            if delivery.channel == name and delivery.last_error:
                return f"last error: {redact(delivery.last_error)}"
    return ""
