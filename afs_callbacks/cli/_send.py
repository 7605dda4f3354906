"""The subcommands that send one event: start, complete, error, cost-alert, evaluation,
notify. Each builds the manager from the environment, sends through it, waits up to
``--timeout`` for delivery and prints the result per channel.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from afs_callbacks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    deliveries_of,
    delivery_result,
    no_channel_advice,
    open_session,
    parse_metrics,
    print_problems,
    say_off,
)
from afs_callbacks.cli._output import Output
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.manager import NotificationManager

#: Builds and sends the event through the manager; None when it was not accepted.
Sender = Callable[[NotificationManager], "NotificationEvent | None"]


def send_and_report(args: argparse.Namespace, output: Output, sender: Sender) -> int:
    """Send one event, wait for its delivery (``args.timeout``) and print each channel's result.

    Exit code: 0 when every channel delivered it, 1 when one failed or is still pending,
    2 when a channel's configuration is wrong (the others still get the event).
    """
    session = open_session(args)
    manager = session.manager
    try:
        if session.off:
            # A job script that calls afs-notify keeps working with the switch off.
            say_off(output, session.off, "unset it to send")
            return EXIT_OK
        print_problems(output, session.problems, session)
        if not session.can_send:
            raise UsageError("no channel can send this; see `afs-notify status`")
        event = sender(manager)
        if event is None:
            output.error("the event was not accepted (run again with -v for the reason)")
            return EXIT_FAILED
        manager.flush(args.timeout)
        results = [(d.channel, *delivery_result(d)) for d in deliveries_of(manager, event.id)]
        failed = any(result != "delivered" for _, result, _ in results)
        if output.json_mode:
            output.json(
                {
                    "event": {k: v for k, v in event.to_dict().items() if k != "attachments"},
                    "results": [{"channel": c, "result": r, "detail": d} for c, r, d in results],
                    "ok": not failed and not session.config_error,
                }
            )
        else:
            output.line(f"{event.title} ({event.event_type.value}, {event.level.value})")
            if results:
                output.table(["CHANNEL", "RESULT", "DETAIL"], results, indent="  ")
            else:
                output.line("  no channel takes this event (see the routing in `afs-notify status`)")
            if any(name == "console" for name, _, _ in results) and not session.usable:
                output.note(no_channel_advice(session.env, "it", "send it again"))
        if session.config_error:
            return EXIT_USAGE
        return EXIT_FAILED if failed else EXIT_OK
    finally:
        # Already flushed above: do not spend the exit flush retrying what just failed.
        manager.close(timeout=0)


def command_start(args: argparse.Namespace, output: Output) -> int:
    """``afs-notify start``: training began."""
    return send_and_report(
        args,
        output,
        lambda m: m.notify_training_started(args.model, args.run_id, args.epochs, args.batch_size),
    )


def command_complete(args: argparse.Namespace, output: Output) -> int:
    """``afs-notify complete``: training finished, with duration, final loss and metrics."""
    metrics = parse_metrics(args.metrics) if args.metrics else None
    return send_and_report(
        args,
        output,
        lambda m: m.notify_training_completed(args.model, args.run_id, args.duration, args.loss, metrics),
    )


def command_error(args: argparse.Namespace, output: Output) -> int:
    """``afs-notify error``: training failed with a message."""
    if not args.error.strip():
        raise UsageError("--error must not be empty; say what went wrong")
    return send_and_report(
        args, output, lambda m: m.notify_training_failed(args.model, args.run_id, args.error)
    )


def command_cost_alert(args: argparse.Namespace, output: Output) -> int:
    """``afs-notify cost-alert``: the run's cost passed a threshold."""
    context = {"run_id": args.run_id} if args.run_id else {}
    return send_and_report(
        args,
        output,
        lambda m: m.notify_cost_alert(args.cost, args.threshold, args.model, **context),
    )


def command_evaluation(args: argparse.Namespace, output: Output) -> int:
    """``afs-notify evaluation``: an evaluation finished with metrics."""
    metrics = parse_metrics(args.metrics)
    if not metrics:
        raise UsageError('--metrics needs at least one NAME=NUMBER, e.g. --metrics "accuracy=0.95"')
    return send_and_report(
        args, output, lambda m: m.notify_evaluation_completed(args.model, args.run_id, metrics)
    )


def command_notify(args: argparse.Namespace, output: Output) -> int:
    """``afs-notify notify``: any title and message, with a type and level of your choice."""
    try:
        event_type = EventType.parse(args.type)
    except ValueError:
        names = ", ".join(member.value for member in EventType)
        raise UsageError(f"--type: unknown event type {args.type!r}; use one of {names}") from None
    try:
        level = NotificationLevel.parse(args.level) if args.level else None
    except ValueError as error:
        raise UsageError(f"--level: {error}") from None
    if not args.title.strip():
        raise UsageError("--title must not be empty")
    context: dict[str, Any] = {}
    if args.model:
        context["model"] = args.model
    if args.run_id:
        context["run_id"] = args.run_id
    if args.metrics:
        context["metrics"] = parse_metrics(args.metrics)
    return send_and_report(
        args,
        output,
        lambda m: m.notify(args.title, args.message, event_type, level, **context),
    )
