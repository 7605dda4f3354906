"""What every afs-notify subcommand shares: exit codes, input parsing, building the manager
from the environment, reading an event's per-channel result from the history, and the
sentences several commands say alike (the switch is off, no channel is configured, a
variable is misspelt, the history cannot be read).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime

from afs_callbacks._install import docs_page, env_example
from afs_callbacks.channels import CHANNELS
from afs_callbacks.channels.base import ChannelStatus, NotificationHandler
from afs_callbacks.channels.variables import UnknownVariable, unknown_variables
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._store_check import history_path, history_problem
from afs_callbacks.config import Env, Settings, off_line, switched_off
from afs_callbacks.delivery.outbox import (
    DEAD,
    DELIVERED,
    FOLDED,
    PENDING,
    SUPERSEDED,
    Delivery,
    Outbox,
    OutboxUnavailable,
)
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.redaction import redact

#: Exit codes: success, a delivery failed, bad input or configuration.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the command line: printed as one sentence, exit code 2."""


# Input -------------------------------------------------------------------------------


def parse_metrics(text: str, option: str = "--metrics") -> dict[str, float]:
    """``"accuracy=0.95,f1=0.92"`` → ``{"accuracy": 0.95, "f1": 0.92}``.

    Raises:
        UsageError: an item is not ``NAME=NUMBER`` or a name repeats.
    """
    metrics: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise UsageError(
                f"{option}: {item.strip()!r} is not NAME=NUMBER; write it like "
                f'{option} "accuracy=0.95,f1=0.92"'
            )
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"{option}: the value of {name!r} must be a number, got {value!r}") from None
        if name in metrics:
            raise UsageError(f"{option}: {name!r} is given twice")
        metrics[name] = number
    return metrics


def number(text: str) -> float:
    """An argparse type: any number, ``nan`` and ``inf`` included (a loss can be NaN)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def non_negative(text: str) -> float:
    """An argparse type: a finite number of at least 0 (a cost, a duration, a timeout)."""
    value = number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def requested_channels(args: argparse.Namespace) -> list[str] | None:
    """The channel names from every ``--channel`` (repeatable, comma-separated), or None."""
    values: Sequence[str] = getattr(args, "channel", None) or ()
    names = [name.strip().lower() for value in values for name in value.split(",") if name.strip()]
    return list(dict.fromkeys(names)) or None


# The manager ------------------------------------------------------------------------


@contextmanager
def library_silenced() -> Iterator[None]:
    """Hold back the library's own log lines while the CLI builds channels.

    The CLI reports configuration problems itself (as table rows or one warning each);
    the library's log lines would say the same thing a second time.
    """
    logger = logging.getLogger("afs_callbacks")
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


@dataclass(frozen=True)
class ChannelProblem:
    """Something that keeps a channel (or the settings) from working, and whether it is a
    configuration error (exit code 2) or a condition such as no desktop session."""

    name: str
    reason: str
    config_error: bool


@dataclass
class Session:
    """What a subcommand works with: the settings read, the manager built from them, each
    registered channel's status, and every problem found on the way."""

    env: Env
    manager: NotificationManager
    statuses: dict[str, ChannelStatus]
    problems: list[ChannelProblem]
    #: Why the history file cannot be read (a :func:`history_fault` sentence), when asked
    #: to check it; the manager has not opened it then (it would move a damaged file aside).
    store_problem: str | None = None

    @property
    def off(self) -> str | None:
        """``AFS_ENABLED=false`` as written, when the switch turns everything off."""
        return switched_off(self.env)

    @property
    def unknown(self) -> list[UnknownVariable]:
        """Set variables that look like ours but are not (``SLAK_WEBHOOK_URL``)."""
        return unknown_variables(self.env, self.env.file_names)

    def require_store(self) -> None:
        """Stop a command that reads the history when it cannot be read.

        Raises:
            UsageError: the :attr:`store_problem` sentence.
        """
        if self.store_problem is not None:
            raise UsageError(self.store_problem)

    def read_history(self) -> Outbox | None:
        """The history to read from: the manager's (opened now); while the switch is off,
        the existing file opened read-only, or None when there is none (nothing is
        created then). Close it with :func:`release` (the manager's) or ``close()``."""
        if self.manager.enabled:
            return self.manager.outbox
        try:
            return Outbox(history_path(self.manager.state_dir), read_only=True)
        except OutboxUnavailable:
            return None

    @property
    def config_error(self) -> bool:
        """Whether some setting is wrong (the command exits 2 after doing what it can)."""
        return any(problem.config_error for problem in self.problems)

    @property
    def usable(self) -> list[str]:
        """The registered channels that can send."""
        return [name for name, status in self.statuses.items() if status.configured]

    @property
    def can_send(self) -> bool:
        """Whether an event would reach anyone: a usable channel or the console fallback."""
        return bool(self.usable) or self.manager.settings.console != "never"


def open_session(
    args: argparse.Namespace,
    *,
    channels: bool = True,
    check_store: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
) -> Session:
    """Read the settings (the environment over ``--env-file``, default ``AFS_ENV_FILE`` or
    ``./.env``) and build the manager with every channel they configure (``channels``),
    restricted to ``--channel``. With ``check_store``, the history file is checked first,
    read-only, and what is wrong with it kept as ``store_problem``: a command that reads
    it says which file is damaged instead of moving it aside. ``state_dir`` puts the
    manager's history elsewhere (``test`` past a damaged file).

    With ``--channel`` and no ``console`` among the names, the console fallback is off:
    ``--channel slack`` means Slack only, not the console when Slack is unusable. A bad
    value is a problem of the session, not an exception, so that ``run`` still runs.

    Raises:
        ConfigurationError: ``--env-file`` names no file, a ``--channel`` name is unknown,
            or ``AFS_STRICT`` is on and a setting is wrong.
    """
    requested = requested_channels(args)
    environ = dict(os.environ)
    if requested is not None and "console" not in requested:
        environ["AFS_CONSOLE"] = "never"
    errors: list[tuple[ConfigurationError, str]] = []
    named = getattr(args, "env_file", None)
    try:
        env = Env(environ, env_file=named)
    except ConfigurationError as error:
        if named:
            raise
        errors.append((error, "no .env file is read"))  # AFS_ENV_FILE names a missing file
        env = Env(environ, env_file=False)
    settings = Settings.from_env(env, on_error=lambda error: errors.append((error, "its default is used")))
    if settings.strict and errors:
        raise errors[0][0]
    problems = [ChannelProblem("settings", f"{error} ({outcome})", True) for error, outcome in errors]
    store_problem = history_problem(history_path(settings.state_dir)) if check_store else None
    with library_silenced():
        if channels:
            manager = NotificationManager.from_env(env, channels=requested, state_dir=state_dir)
        else:
            manager = NotificationManager(settings=settings, state_dir=state_dir)
    problems += [ChannelProblem(name, reason, True) for name, reason in manager.config_errors.items()]
    statuses = {name: channel_status(name, handler) for name, handler in manager.handlers.items()}
    problems += [
        ChannelProblem(name, status.reason or "not usable", False)
        for name, status in statuses.items()
        if not status.configured
    ]
    for name in (requested or []) if channels else []:
        if name not in statuses and name not in manager.config_errors and name != "console":
            problems.append(ChannelProblem(name, not_set_up(name), True))
    return Session(env, manager, statuses, problems, store_problem)


def channel_status(name: str, handler: NotificationHandler) -> ChannelStatus:
    """``handler.status()``, or a not-usable status naming the error when it raises."""
    try:
        return handler.status()
    except Exception as error:
        return ChannelStatus(name, False, f"status check failed: {redact(error)}")


def not_set_up(name: str) -> str:
    """Why a channel with no settings at all is not used, and where to read how to set it."""
    return f"not set up: none of its settings are present (see {docs_page(f'channels/{name}.md')})"


def no_channel_advice(env: Env, what: str, then: str) -> str:
    """Why no channel is configured, and the next step, in a few sentences that fit the
    user's case: a misspelt variable names the intended one; a ``.env`` file that sets no
    destination is named; only without one is copying ``.env.example`` the advice (from
    the copy this install has: a checkout's, or the one installed with the wheel).

    ``what`` is what went to the console (``the test``), ``then`` the step after the fix
    (``run `afs-notify test` again``).
    """
    unknown = unknown_variables(env, env.file_names)
    settings = docs_page("configuration.md")
    if unknown:
        where = (
            f"in {env.env_file}" if any(u.name in env.file_names for u in unknown) else "in your environment"
        )
        names = "; ".join(f"{u}" for u in unknown)
        return (
            f"No channel is configured, so {what} went to the console only: {names}"
            f"{'' if names.endswith('?') else '.'} Fix the name {where} and {then}."
        )
    if env.env_file is not None:
        return (
            f"No channel is configured in {env.env_file}, so {what} went to the console only. Set one"
            f" destination there (e.g. SLACK_WEBHOOK_URL or NTFY_TOPIC) and {then}; {settings} lists every"
            " setting."
        )
    example = env_example()
    start = f"Copy {example} to .env" if example else "Create a file named .env here"
    return (
        f"No channel is configured yet, so {what} went to the console only. {start}, set one destination"
        f" (e.g. SLACK_WEBHOOK_URL or NTFY_TOPIC) and {then}; {settings} lists every setting."
    )


def say_off(output: Output, switch: str, todo: str, *, stored: bool = False) -> None:
    """The switch's one line (:func:`~afs_callbacks.config.off_line`) as a note on stderr."""
    output.note(off_line(switch, todo, stored=stored))


def settings_env(args: argparse.Namespace) -> Env | None:
    """The settings :func:`open_session` reads (the environment over ``--env-file`` or
    ``./.env``), for a look before building anything; None when the named file is missing
    (the session then says so)."""
    try:
        return Env(None, env_file=getattr(args, "env_file", None))
    except ConfigurationError:
        return None


def switch_of(args: argparse.Namespace) -> str | None:
    """:attr:`Session.off` for a command that builds no session (retry, dashboard)."""
    env = settings_env(args)
    return switched_off(env) if env is not None else None


def channel_order(names: Sequence[str]) -> list[str]:
    """``names`` in the order ``CHANNELS`` lists them, other names (set in code) after."""
    known = [name for name in CHANNELS if name in names]
    return known + sorted(set(names) - set(known))


# Results -----------------------------------------------------------------------------


def deliveries_of(manager: NotificationManager, event_id: str) -> list[Delivery]:
    """The per-channel delivery rows of one event, in channel order."""
    entries = manager.outbox.history(limit=1, event_id=event_id)
    deliveries = entries[0].deliveries if entries else ()
    order = channel_order([d.channel for d in deliveries])
    return sorted(deliveries, key=lambda d: order.index(d.channel))


def delivery_result(delivery: Delivery, *, now: float | None = None) -> tuple[str, str]:
    """``(result, detail)`` of one delivery for people: delivered, pending (why, and when
    next), failed (the redacted reason), superseded or folded (not sent, and why)."""
    now = time.time() if now is None else now
    error = redact(delivery.last_error or "")
    if delivery.state == DELIVERED:
        when = f"at {clock(delivery.delivered_at)}" if delivery.delivered_at else ""
        return "delivered", "; ".join(part for part in (when, error) if part)  # error: a note
    if delivery.state == DEAD:
        tries = f" (after {delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''})"
        return "failed", (error or "no reason recorded") + (tries if delivery.attempts > 1 else "")
    if delivery.state == SUPERSEDED:
        return "superseded", "not sent: its run moved on or ended first (kept in the history)"
    if delivery.state == FOLDED:
        return "folded", error or "held back by the channel's budget and named in a digest"
    if delivery.state == PENDING and delivery.attempts == 0 and not error:
        return "pending", "not attempted yet; it stays queued (afs-notify flush)"
    due = delivery.next_attempt
    when = f"next attempt {relative(due - now)}" if due is not None else "being sent"
    return ("pending" if delivery.state == PENDING else delivery.state), "; ".join(
        p for p in (error, when) if p
    )


def clock(epoch: float | None) -> str:
    """Epoch seconds as local ``HH:MM:SS`` (today) or ``YYYY-MM-DD HH:MM`` (other days)."""
    if epoch is None:
        return ""
    moment = datetime.fromtimestamp(epoch)
    if moment.date() == datetime.now().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def relative(seconds: float) -> str:
    """``"in 42 s"``, ``"in 3 min"``, or ``"now"``."""
    if seconds <= 1:
        return "now"
    if seconds < 120:
        return f"in {seconds:.0f} s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f} min"
    return f"in {seconds / 3600:.1f} h"


def print_problems(
    output: Output, problems: Sequence[ChannelProblem], session: Session | None = None
) -> None:
    """One line per configuration error (unusable channels are left to status), and with
    ``session`` one warning per misspelt-looking variable."""
    for problem in problems:
        if problem.name == "settings":
            output.error(problem.reason)
        elif problem.config_error:
            output.error(f"{problem.name} channel not used: {problem.reason}")
    for unknown in session.unknown if session is not None else ():
        output.note(f"warning: {unknown}")


def release(manager: NotificationManager, *, store: bool = True) -> None:
    """Let go of a manager that sent nothing, without its exit flush.

    ``close()`` would start every channel's sender to flush the backlog: a read-only
    command (status, history) must not send anything. While the switch is off, or when
    ``store`` is False (a damaged file the command only looked at), the manager's history
    was never opened and is not opened now: that would create it, or move it aside.
    """
    if store and manager.enabled:
        manager.outbox.close()
    for handler in manager.handlers.values():
        with suppress(Exception):  # a channel's close must not turn a report into a crash
            handler.close()
