"""``afs-notify status``: every channel, whether it can send, why not, what it gets; with
``--check``, a reachability probe where the service has one that posts nothing.

With ``AFS_ENABLED=false`` the first line says so and each channel gets nothing; a history
that cannot be read is named in the footer with what to do (the same sentence ``test``
says), and the channel table is still shown. Neither case creates or moves a file.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from dataclasses import asdict, dataclass

from afs_callbacks.channels import CHANNELS
from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.channels.hosts import url_warnings
from afs_callbacks.channels.variables import unknown_variables
from afs_callbacks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Session,
    channel_order,
    not_set_up,
    open_session,
    release,
    requested_channels,
)
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._store_check import history_path
from afs_callbacks.config import Env, off_line
from afs_callbacks.delivery import deathwatch
from afs_callbacks.delivery.outbox import DEAD, DELIVERED, FOLDED, PENDING, SENDING, SUPERSEDED
from afs_callbacks.events import NotificationLevel
from afs_callbacks.manager import NotificationManager, Route
from afs_callbacks.redaction import redact

# A channel without a probe answers check() with a permanent result saying so (the base
# class's default, and channels that override it only to explain why).
_NO_PROBE = re.compile(r"cannot be probed", re.I)


@dataclass
class ChannelRow:
    """One line of the status table."""

    channel: str
    state: str
    detail: str
    gets: str = ""
    check: str = ""


def command_status(args: argparse.Namespace, output: Output) -> int:
    """Print every channel's state; exit 2 on a configuration error or a history that
    cannot be read, 1 on a failed probe."""
    session = open_session(args, check_store=True)
    manager, env = session.manager, session.env
    settings_errors = [p.reason for p in session.problems if p.name == "settings"]
    warnings = setting_warnings(env)
    off = session.off
    history = None if session.store_problem else session.read_history()
    try:
        rows = channel_rows(session, requested_channels(args))
        if args.check:
            probe_all(manager, rows, timeout=manager.settings.send_timeout + 2.0)
        counts = history.counts() if history is not None else {}
        path = str(history_path(manager.state_dir))
        watcher_pid, watcher_log = deathwatch.watcher_pid(), deathwatch.watcher_log()
        if output.json_mode:
            output.json(
                {
                    "enabled": off is None,
                    "disabled": off_line(off, stored=True) if off else None,
                    "channels": [asdict(row) for row in rows],
                    "settings_errors": settings_errors,
                    "warnings": warnings,
                    "env_file": str(env.env_file) if env.env_file else None,
                    "outbox": {"path": path, "deliveries": counts, "problem": session.store_problem},
                    "watcher": {"pid": watcher_pid, "log": watcher_log},
                }
            )
        else:
            if off:
                output.line(off_line(off, stored=True))
                output.line()
            headers = ["CHANNEL", "STATE", "GETS", "DESTINATION / REASON"]
            table = [[r.channel, r.state, r.gets, r.detail] for r in rows]
            if args.check:
                headers.insert(3, "CHECK")
                for line, row in zip(table, rows, strict=True):
                    line.insert(3, row.check)
            output.table(headers, table)
            output.line()
            output.line(f"Settings: environment{f' + {env.env_file}' if env.env_file else ''}")
            for reason in settings_errors:
                output.line(f"          {output.paint('error', 'red')}: {reason}")
            for warning in warnings:
                output.line(f"          {output.paint('warning', 'yellow')}: {warning}")
            output.line(f"History:  {path}")
            if session.store_problem:
                output.line(f"          {output.paint('error', 'red')}: {session.store_problem}")
            elif history is None:
                output.line("          none yet (nothing is stored while AFS_ENABLED is off)")
            else:
                output.line(f"          {outbox_summary(counts)}")
            output.line(f"Watcher:  {watcher_words(watcher_pid, watcher_log)}")
        if settings_errors or session.store_problem or any(row.state == "config error" for row in rows):
            return EXIT_USAGE
        return EXIT_FAILED if any(row.check.startswith("unreachable") for row in rows) else EXIT_OK
    finally:
        if history is not None and not manager.enabled:
            history.close()  # the read-only one (the manager's is closed by release)
        release(manager, store=session.store_problem is None)


def setting_warnings(env: Env) -> list[str]:
    """Misspelt-looking variables (with the likely intended name) and accepted URLs with an
    unexpected host, one sentence each, for the settings read into ``env``."""
    lines = [str(unknown) for unknown in unknown_variables(env, env.file_names)]
    lines += [f"{name}: {text}" for name, text in sorted(url_warnings().items()) if env.text(name)]
    return lines


def channel_rows(session: Session, requested: list[str] | None) -> list[ChannelRow]:
    """A row for every known channel (or only the requested ones) and every channel set in code."""
    manager = session.manager
    registrations = dict(manager.handlers_items())
    names = channel_order(list(dict.fromkeys([*(requested or CHANNELS), *registrations])))
    off = session.off
    rows = []
    for name in names:
        status = session.statuses.get(name)
        if name == "console":
            rows.append(
                ChannelRow("console", "off", off)
                if off
                else _console_row(manager.settings.console, bool(session.usable))
            )
        elif name in manager.config_errors:
            rows.append(ChannelRow(name, "config error", manager.config_errors[name]))
        elif status is None:
            rows.append(ChannelRow(name, "not set up", not_set_up(name).removeprefix("not set up: ")))
        else:
            handler, route = registrations[name].handler, registrations[name].route
            gets = "nothing (switched off)" if off else describe_route(route)
            if status.configured:
                rows.append(ChannelRow(name, "ready", status.destination or handler.describe(), gets))
            else:
                rows.append(ChannelRow(name, "not usable", status.reason, gets))
    return rows


def _console_row(mode: str, others_usable: bool) -> ChannelRow:
    if mode == "never":
        return ChannelRow("console", "off", "AFS_CONSOLE=never")
    if mode == "always":
        return ChannelRow("console", "active", "stderr (AFS_CONSOLE=always)", "everything")
    state = "standby" if others_usable else "active"
    return ChannelRow(
        "console", state, "stderr, while no other channel is usable (AFS_CONSOLE=auto)", "everything"
    )


def describe_route(route: Route) -> str:
    """What a channel gets: ``everything``, ``error+``, ``warning+: nan_detected, ...``."""
    parts = []
    if route.min_level is not NotificationLevel.INFO:
        parts.append(f"{route.min_level.value}+")
    if route.events is not None:
        parts.append(", ".join(sorted(event.value for event in route.events)))
    return ": ".join(parts) if parts else "everything"


def probe_all(manager: NotificationManager, rows: list[ChannelRow], *, timeout: float) -> None:
    """Fill each ready row's ``check`` with the channel's probe result, all probes at once."""
    handlers = manager.handlers
    ready = [row for row in rows if row.state == "ready" and row.channel in handlers]
    results: dict[str, DeliveryResult] = {}
    threads = []
    for row in ready:
        handler = handlers[row.channel]
        thread = threading.Thread(target=_probe, args=(row.channel, handler, results), daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    for row in ready:
        result = results.get(row.channel)
        if result is None:
            row.check = f"unreachable: no answer within {timeout:g} s"
        elif result.ok:
            row.check = f"reachable{': ' + result.detail if result.detail else ''}"
        elif type(handlers[row.channel]).check is NotificationHandler.check or _NO_PROBE.search(
            result.detail
        ):
            row.check = "no probe (afs-notify test sends one)"
        else:
            row.check = f"unreachable: {result.detail}"


def _probe(name: str, handler: NotificationHandler, results: dict[str, DeliveryResult]) -> None:
    try:
        results[name] = handler.check()
    except Exception as error:  # a probe is a channel's code: it must not break status
        results[name] = DeliveryResult.retry(f"probe failed: {redact(error)}")


# (label, states) in the order the summary names them.
_SUMMARY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("delivered", (DELIVERED,)),
    ("pending", (PENDING, SENDING)),
    ("dead", (DEAD,)),
    (SUPERSEDED, (SUPERSEDED,)),
    (FOLDED, (FOLDED,)),
)


def watcher_words(pid: int | None, log_path: str | None) -> str:
    """The death watcher of this user and host: whether it runs, and where its log is."""
    if pid is None:
        state = "not running (the next run starts it)"
    else:
        state = "running" if pid < 0 else f"running (pid {pid})"
    return state if log_path is None else f"{state}; log {log_path}"


def outbox_summary(counts: dict[str, dict[str, int]]) -> str:
    """``"12 delivered, 3 pending (slack 3), 1 dead (email 1)"`` from outbox counts, then
    ``superseded`` and ``folded`` (messages not sent on purpose) when there are any."""
    parts = []
    for label, states in _SUMMARY:
        per_channel = {
            name: sum(by_state.get(s, 0) for s in states)
            for name, by_state in counts.items()
            if sum(by_state.get(s, 0) for s in states)
        }
        total = sum(per_channel.values())
        if not total and label in (SUPERSEDED, FOLDED):
            continue
        text = f"{total} {label}"
        if total and label != "delivered":
            text += " (" + ", ".join(f"{name} {n}" for name, n in sorted(per_channel.items())) + ")"
        parts.append(text)
    return ", ".join(parts)
