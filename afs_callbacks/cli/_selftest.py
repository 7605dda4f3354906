"""``afs-notify test``: a test message to every configured channel (or the ones named),
and per channel the result: delivered, or the exact reason it was not.

It is the first command a new user runs, so every outcome ends in a sentence that says
what to do next, fitted to the case: the switch is off (nothing is sent, exit 2); a
variable is misspelt (its likely intended name); a ``.env`` sets no destination; the
history cannot be read (the test goes through a throwaway one, the file is left alone and
named with what to do, as ``status`` names it, exit 2).
"""

from __future__ import annotations

import argparse
import socket
import tempfile

from afs_callbacks._install import docs_page
from afs_callbacks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Session,
    channel_order,
    deliveries_of,
    delivery_result,
    library_silenced,
    no_channel_advice,
    open_session,
    requested_channels,
    settings_env,
)
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._store_check import history_path, history_problem
from afs_callbacks.config import default_state_dir, off_line, switched_off
from afs_callbacks.delivery.outbox import DELIVERED, PENDING, SENDING
from afs_callbacks.events import EventType
from afs_callbacks.manager import NotificationManager

TITLE = "Test notification from afs-notify"


def command_test(args: argparse.Namespace, output: Output) -> int:
    """Send the test event, wait up to ``--timeout`` and print each channel's result.

    Exit code: 0 all delivered, 1 one failed, 2 a channel's configuration is wrong, the
    switch is off, or the history cannot be read.
    """
    with tempfile.TemporaryDirectory(prefix="afs-notify-test-") as scratch:
        return _test(args, output, scratch)


def _test(args: argparse.Namespace, output: Output, scratch: str) -> int:
    env = settings_env(args)
    switch = switched_off(env) if env is not None else None
    if switch is not None:
        output.error(off_line(switch, "unset it to test"))
        if output.json_mode:  # a script reading stdout gets the same answer
            output.json({"results": [], "ok": False, "disabled": off_line(switch, "unset it to test")})
        return EXIT_USAGE
    store_problem = history_problem(history_path(default_state_dir(env))) if env is not None else None
    # A damaged history is not moved aside behind the user's back: the test goes through
    # a throwaway one, and the file is named below with what to do.
    session = open_session(args, state_dir=scratch if store_problem else None)
    manager = session.manager
    try:
        with library_silenced():
            # A test goes to every channel whatever its routing (EMAIL_MIN_LEVEL=error
            # would otherwise keep an INFO test from email): register them again unrouted.
            for name in session.usable:
                manager.register_handler(name, manager.handlers[name])
        rows = _send_test(manager, args.timeout) if session.can_send else {}
        named = requested_channels(args) or []
        for problem in session.problems:
            state = (
                "config error" if problem.config_error else "failed" if problem.name in named else "skipped"
            )
            rows[problem.name] = (state, problem.reason)
        ordered = [(name, *rows[name]) for name in channel_order(list(rows))]
        failed = any(state in ("failed", "pending") for _, state, _ in ordered)
        if output.json_mode:
            results = [{"channel": c, "result": r, "detail": d} for c, r, d in ordered]
            ok = not failed and not session.config_error and not store_problem
            output.json({"results": results, "ok": ok, "history_problem": store_problem})
        else:
            advice = _advice(ordered, session, store_problem)
            # Each misspelt-looking variable is said once: in the advice when it is why no
            # channel is configured, else as a warning (it may be why one is missing).
            for unknown in session.unknown:
                if str(unknown) not in advice:
                    output.note(f"warning: {unknown}")
            output.table(["CHANNEL", "RESULT", "DETAIL"], ordered)
            output.line()
            output.line(advice)
        if session.config_error or store_problem:
            return EXIT_USAGE
        return EXIT_FAILED if failed else EXIT_OK
    finally:
        manager.close(timeout=0)


def _send_test(manager: NotificationManager, timeout: float) -> dict[str, tuple[str, str]]:
    """Send the test event and return each channel's ``(result, detail)``."""
    event = manager.notify(
        TITLE,
        f"If you can read this, training notifications from {socket.gethostname()} reach you here.",
        EventType.TEST,
        no_dedup=True,
    )
    if event is None:
        # notify() logs why (held back by the library's silencer here): say it plainly.
        return {"(all)": ("failed", "the test event was not accepted (run again with -v for the reason)")}
    manager.flush(timeout)
    rows = {}
    for delivery in deliveries_of(manager, event.id):
        rows[delivery.channel] = delivery_result(delivery)
        if delivery.state in (PENDING, SENDING):
            # A test is not retried later: a stale test message an hour after the user
            # fixed the cause would only confuse.
            reason = delivery.last_error or f"no answer within {timeout:g} s"
            manager.outbox.mark_dead(
                event.id, delivery.channel, f"test not retried: {reason}", attempted=False
            )
            rows[delivery.channel] = ("failed", reason)
    return rows


def _advice(rows: list[tuple[str, str, str]], session: Session, store_problem: str | None) -> str:
    """The next step, in one sentence."""
    states = {state for _, state, _ in rows}
    usable = session.usable
    broken = [name for name, state, _ in rows if state == "config error" and name != "settings"]
    troubleshooting = docs_page("troubleshooting.md")
    again = "run `afs-notify test` again"
    if store_problem:
        advice = f"The test went through a temporary history: {store_problem}."
    elif broken:
        # Name the channel and point at its reason in the table: "copy .env.example" would
        # send someone whose settings are merely wrong back to the start.
        advice = (
            f"{_names(broken)} could not be set up: {'its' if len(broken) == 1 else 'each'} reason is "
            f"in the table above. Fix it and {again}; {troubleshooting} explains each message."
        )
        if not usable:
            advice += " Until then messages go to the console only."
    elif not usable and any(name == "console" for name, _, _ in rows):
        advice = no_channel_advice(session.env, "the test", again)
    elif "config error" in states:
        advice = "A core setting is wrong and keeps its default: fix the value named above."
    elif states & {"failed", "pending"}:
        advice = f"See {troubleshooting} for what each failure means and how to fix it."
    elif DELIVERED in states:
        advice = "All set: check that the message arrived where you expected it."
    else:
        advice = "Nothing was sent: see `afs-notify status`."
    return advice


def _names(channels: list[str]) -> str:
    """``The slack channel`` / ``The slack and sms channels``."""
    if len(channels) == 1:
        return f"The {channels[0]} channel"
    return f"The {', '.join(channels[:-1])} and {channels[-1]} channels"
