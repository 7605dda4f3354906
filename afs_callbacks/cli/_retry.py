"""``afs-notify retry``: queue failed (dead) messages again, all of them or those of one
channel or one message, after the cause is fixed. The dashboard's retry button does the same.

Queued messages go out with the next sender that runs (a training's, or ``afs-notify
flush``); ``--send`` delivers them now, as ``flush`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
from collections.abc import Iterator

from afs_callbacks.cli._common import EXIT_OK, UsageError, requested_channels, say_off, switch_of
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._store_check import history_path
from afs_callbacks.delivery.faults import history_fault
from afs_callbacks.delivery.outbox import Outbox


def command_retry(args: argparse.Namespace, output: Output) -> int:
    """Queue dead messages again and say how many; with ``--send``, deliver them now."""
    path = history_path(args.state_dir)
    channels = requested_channels(args)
    switch = switch_of(args)
    if switch is not None:
        say_off(output, switch, "unset it to retry")
        return EXIT_OK
    if not path.is_file():
        raise UsageError(f"no history at {path}: nothing was ever queued there (see --state-dir)")
    try:
        # A writer for one statement, waiting its turn politely (BEGIN IMMEDIATE with a
        # timeout) instead of holding a lock; it never moves a damaged file aside.
        with Outbox(path) as outbox:
            count = outbox.requeue_dead(channels, event_id=args.event)
    except sqlite3.DatabaseError as error:
        raise UsageError(history_fault(path, error)) from None
    what = f"failed message{'s' if count != 1 else ''}"
    scope = []
    if args.event:
        scope.append(f"message {args.event}")
    if channels:
        scope.append("channel " + ", ".join(channels))
    where = f" ({'; '.join(scope)})" if scope else ""
    if args.send and count:
        from afs_callbacks.cli._flush import command_flush

        output.note(f"{count} {what} queued again{where}; delivering now")
        flush_args = argparse.Namespace(**{**vars(args), "retry_dead": False})
        with _state_dir(args.state_dir):
            return command_flush(flush_args, output)
    if output.json_mode:
        output.json({"requeued": count, "event": args.event, "channels": channels, "history": str(path)})
    elif count:
        output.line(f"{count} {what} queued again{where}.")
        output.line("They go out with the next sender that runs; `afs-notify flush` delivers them now.")
    else:
        output.line(f"No failed message to retry{where}.")
    return EXIT_OK


@contextlib.contextmanager
def _state_dir(state_dir: str | None) -> Iterator[None]:
    """``AFS_STATE_DIR`` set to ``--state-dir`` while flush builds its manager, then restored."""
    if not state_dir:
        yield
        return
    saved = os.environ.get("AFS_STATE_DIR")
    os.environ["AFS_STATE_DIR"] = state_dir
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AFS_STATE_DIR", None)
        else:
            os.environ["AFS_STATE_DIR"] = saved
