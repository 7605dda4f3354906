"""``afs-notify history``: recent events and, per channel, where each one went.

It only reads the outbox: no channel is built and nothing is sent. A run's end says how the
run ended (its :class:`~afs_callbacks.outcome.Outcome`, as the tracker decided it): in the
text as ``outcome=stopped_on_problem`` after the type, in ``--json`` as the ``outcome`` key
(also for ends stored before outcomes existed, from their type).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from afs_callbacks.cli._common import (
    EXIT_OK,
    UsageError,
    clock,
    delivery_result,
    open_session,
    print_problems,
    release,
    requested_channels,
    say_off,
)
from afs_callbacks.cli._output import Output, render_table
from afs_callbacks.delivery.outbox import DEAD, STATES, HistoryEntry, Outbox
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.outcome import Outcome

#: Words accepted by ``--state``, beyond the outbox's own state names.
STATE_ALIASES = {"failed": DEAD}


def command_history(args: argparse.Namespace, output: Output) -> int:
    """Print the newest ``--limit`` events matching the filters, with their deliveries."""
    filters = _filters(args)
    channels = requested_channels(args)
    session = open_session(args, channels=False, check_store=True)
    manager = session.manager
    if session.store_problem:
        release(manager, store=False)
        session.require_store()
    print_problems(output, session.problems)
    if session.off:
        say_off(output, session.off, "what is shown was stored before it was set", stored=True)
    outbox = session.read_history()
    try:
        entries = _query(outbox, filters, channels, args.limit) if outbox is not None else []
    finally:
        if outbox is not None and not manager.enabled:
            outbox.close()
        release(manager)
    if output.json_mode:
        output.json([_as_json(entry, channels) for entry in entries])
        return EXIT_OK
    if not entries:
        output.line("No events match." if any(filters.values()) or channels else "No events yet.")
        return EXIT_OK
    times = [clock(entry.event.timestamp.timestamp()) for entry in entries]
    width = max(len(when) for when in times)
    paint = output.paint if output.color else None
    for when, entry in zip(times, entries, strict=True):
        output.line(f"{when:<{width}}  {_event_line(entry, output)}")
        rows = [(d.channel, *delivery_result(d)) for d in _deliveries(entry, channels)]
        if not rows:
            output.line("    (sent to no channel)")
        for line in render_table(None, rows, indent="    ", paint=paint):
            output.line(line)
    return EXIT_OK


def _filters(args: argparse.Namespace) -> dict[str, str | None]:
    event_type = level = state = None
    if args.type:
        try:
            event_type = EventType.parse(args.type).value
        except ValueError:
            names = ", ".join(member.value for member in EventType)
            raise UsageError(f"--type: unknown event type {args.type!r}; use one of {names}") from None
    if args.level:
        try:
            level = NotificationLevel.parse(args.level).value
        except ValueError as error:
            raise UsageError(f"--level: {error}") from None
    if args.state:
        state = STATE_ALIASES.get(args.state.lower(), args.state.lower())
        if state not in STATES:
            names = ", ".join([*STATES, *STATE_ALIASES])
            raise UsageError(f"--state: unknown state {args.state!r}; use one of {names}")
    return {"run_id": args.run, "event_type": event_type, "level": level, "state": state}


def _query(
    outbox: Outbox, filters: dict[str, str | None], channels: list[str] | None, limit: int
) -> list[HistoryEntry]:
    if channels is None:
        return outbox.history(limit=limit, **filters)
    # One query per channel (the outbox filters on one), merged newest first.
    merged: dict[str, HistoryEntry] = {}
    for channel in channels:
        for entry in outbox.history(limit=limit, channel=channel, **filters):
            merged[entry.event.id] = entry
    newest = sorted(merged.values(), key=lambda entry: entry.event.timestamp, reverse=True)
    return newest[:limit]


def _deliveries(entry: HistoryEntry, channels: list[str] | None) -> list[Any]:
    return [d for d in entry.deliveries if channels is None or d.channel in channels]


def _event_line(entry: HistoryEntry, output: Output) -> str:
    event = entry.event
    level = output.paint(f"{event.level.value:<8}", _LEVEL_STYLE.get(event.level))
    run = f"run={event.run_id}  " if event.run_id else ""
    outcome = Outcome.of_event(event)
    ended = f"outcome={outcome.value}  " if outcome is not None else ""
    return f"{level}  {event.event_type.value:<20}  {run}{ended}{event.title}"


_LEVEL_STYLE = {
    NotificationLevel.SUCCESS: "green",
    NotificationLevel.WARNING: "yellow",
    NotificationLevel.ERROR: "red",
    NotificationLevel.CRITICAL: "red",
}


def _as_json(entry: HistoryEntry, channels: list[str] | None) -> dict[str, Any]:
    event = entry.event.to_dict()
    outcome = Outcome.of_event(entry.event)
    if outcome is not None:
        event["outcome"] = outcome.value
    event["attachments"] = [a["filename"] for a in event["attachments"]]
    event["deliveries"] = [
        {
            "channel": d.channel,
            "state": d.state,
            "attempts": d.attempts,
            "next_attempt": _iso(d.next_attempt),
            "last_error": d.last_error,
            "delivered_at": _iso(d.delivered_at),
        }
        for d in _deliveries(entry, channels)
    ]
    return event


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
