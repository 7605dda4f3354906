"""The ``afs-notify`` command (also ``python -m afs_callbacks``): :func:`main`, and the
command line it parses (subcommands, their options, argparse errors turned into one clear
sentence with exit code 2).

One module per subcommand (``_status``, ``_selftest`` for ``test``, ``_send`` for the
commands that send one event, ``_history``, ``_flush``, ``_monitor``, ``_run``, ``_retry``,
``_dashboard``, ``_exporter``); what they share lives in ``_common`` (exit codes, the session built from
the environment, delivery results) and ``_output``. Every subcommand builds its manager
from the environment / ``.env`` and prints through one
:class:`~afs_callbacks.cli._output.Output`, which redacts secrets from every line.
Exit codes: 0 ok, 1 a delivery failed, 2 bad input or configuration (one sentence on
stderr); ``run`` exits with its command's status instead. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from afs_callbacks import __version__
from afs_callbacks._install import docs_page
from afs_callbacks.cli._common import EXIT_FAILED, EXIT_USAGE, UsageError, non_negative, number, positive_int
from afs_callbacks.cli._control import command_control, command_run_status
from afs_callbacks.cli._dashboard import command_dashboard
from afs_callbacks.cli._exporter import add_exporter_command
from afs_callbacks.cli._flush import command_flush
from afs_callbacks.cli._history import command_history
from afs_callbacks.cli._monitor import command_monitor, reading_interval
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._retry import command_retry
from afs_callbacks.cli._run import command_run
from afs_callbacks.cli._selftest import command_test
from afs_callbacks.cli._send import (
    command_complete,
    command_cost_alert,
    command_error,
    command_evaluation,
    command_notify,
    command_start,
)
from afs_callbacks.cli._status import command_status
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.redaction import RedactingFilter, redact

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run afs-notify with ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    try:
        args = build_parser().parse_args(argv)
        output = Output(quiet=bool(args.quiet), json_mode=bool(getattr(args, "json", False)))
        handler: Callable[..., int] = args.handler
        with _cli_logging(quiet=bool(args.quiet), verbose=bool(args.verbose)):
            return handler(args, output)
    except UsageError as error:
        Output().error(str(error))
        return EXIT_USAGE
    except ConfigurationError as error:
        Output().error(f"configuration error: {error}")
        return EXIT_USAGE
    except sqlite3.DatabaseError as error:  # a damaged or locked history: which file, what to do
        from afs_callbacks.cli._store_check import history_path
        from afs_callbacks.delivery.faults import history_fault

        Output().error(history_fault(history_path(getattr(args, "state_dir", None)), error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        Output().error("interrupted")
        return 130
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as error:  # a bug here must still not print a secret
        Output().error(f"unexpected error: {type(error).__name__}: {redact(error)}")
        return EXIT_FAILED


# The command line ----------------------------------------------------------------------

DESCRIPTION = """\
Send training notifications from the shell, test and inspect the channels, see where each
message went, deliver what is pending, and wrap any command so its end is reported.

  afs-notify test                                   first: is every channel reachable?
  afs-notify run -- python train.py --epochs 10    report start, end, crash or interrupt
  afs-notify complete --model X --run-id Y --duration 3600 --loss 0.12
  afs-notify history --state dead                   what did not arrive, and why

Settings come from the environment and ./.env (see {configuration}).
Exit codes: 0 ok, 1 a delivery failed, 2 bad input or configuration."""


#: The subcommands, in the order the help lists them.
COMMANDS = (
    "status",
    "test",
    "start",
    "complete",
    "error",
    "cost-alert",
    "evaluation",
    "notify",
    "history",
    "flush",
    "run",
    "retry",
    "dashboard",
    "exporter",
    "stop",
    "checkpoint",
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` (one sentence, exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Raise the argparse complaint as a clear sentence naming the command's help."""
        raise UsageError(f"{_sentence(message, self)}; see `{self.prog} --help`")

    def known_words(self) -> tuple[list[str], list[str]]:
        """(commands with their aliases, every option of any command), for "did you mean"."""
        commands: list[str] = []
        options = [option for action in self._actions for option in action.option_strings]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    commands.append(name)
                    options += [option for a in sub._actions for option in a.option_strings]
        return commands, sorted(set(options))


def _did_you_mean(word: str, words: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, words, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _sentence(message: str, parser: Parser) -> str:
    match = re.match(r"the following arguments are required: (.*)", message)
    if match:
        missing = match.group(1)
        if missing.lower() == "command":
            return "choose a command: " + ", ".join(COMMANDS)
        return f"missing required option{'s' if ',' in missing else ''} {missing}"
    match = re.match(r"argument (\S+): invalid choice: '([^']*)'", message)
    if match:
        return f"unknown command {match.group(2)!r}{_did_you_mean(match.group(2), parser.known_words()[0])}"
    match = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
    if match:
        return f"{match.group(1)} {match.group(2)}"
    match = re.match(r"unrecognized arguments: (.*)", message)
    if match:
        unknown = match.group(1)
        first = unknown.split()[0].split("=")[0]
        hint = _did_you_mean(first, parser.known_words()[1]) if first.startswith("-") else ""
        return f"unknown option or argument: {unknown}{hint}"
    return message


def _shared(suppress: bool) -> Parser:
    """Options every subcommand takes, before or after its name.

    The subcommands' copies default to SUPPRESS so that `afs-notify --quiet test` keeps
    the value given before the subcommand.
    """
    default = argparse.SUPPRESS
    shared = Parser(add_help=False)
    shared.add_argument(
        "--env-file",
        metavar="PATH",
        default=default if suppress else None,
        help="read settings from this file instead of ./.env (the environment still wins)",
    )
    shared.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        default=default if suppress else None,
        help="only this channel (repeat or comma-separate for several)",
    )
    shared.add_argument(
        "-q", "--quiet", action="store_true", default=default if suppress else False, help="print errors only"
    )
    shared.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if suppress else False,
        help="also print the library's progress lines (retries, pacing)",
    )
    return shared


def build_parser() -> Parser:
    """The whole command line."""
    parser = Parser(
        prog="afs-notify",
        # The docs of this install (a checkout's, or those the wheel put under share/doc).
        description=DESCRIPTION.format(configuration=docs_page("configuration.md")),
        parents=[_shared(False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"afs-notify {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    shared = [_shared(True)]

    def add(
        name: str,
        handler: object,
        help_text: str,
        *,
        aliases: list[str] | None = None,
        json: bool = True,
        timeout: float | None = 10.0,
    ) -> Parser:
        sub: Parser = commands.add_parser(
            name, help=help_text, description=help_text, parents=shared, aliases=aliases or []
        )
        sub.set_defaults(handler=handler)
        if json:
            sub.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
        if timeout is not None:
            sub.add_argument(
                "--timeout",
                type=non_negative,
                default=timeout,
                metavar="SECONDS",
                help=f"how long to wait for delivery (default {timeout:g})",
            )
        return sub

    status = add(
        "status",
        _status,
        "every channel: configured or why not, secrets masked; with RUN_ID, that run's card",
        timeout=None,
    )
    status.add_argument(
        "run_id", nargs="?", metavar="RUN_ID", help="a run of this host: print its live card and commands"
    )
    status.add_argument("--state-dir", metavar="DIR", help="the history's folder (default: AFS_STATE_DIR)")
    status.add_argument(
        "--check",
        action="store_true",
        help="probe each service's reachability where it allows that without posting",
    )
    add("test", command_test, "send a test message to every configured channel and report each result")

    start = add("start", command_start, "send TRAINING_STARTED: a run began", aliases=["started"])
    _run_options(start, required=True)
    start.add_argument("--epochs", type=positive_int, help="planned epochs")
    start.add_argument("--batch-size", type=positive_int, help="batch size")

    complete = add(
        "complete", command_complete, "send TRAINING_COMPLETED: a run finished, with duration, loss, metrics"
    )
    _run_options(complete, required=True)
    complete.add_argument("--duration", type=non_negative, metavar="SECONDS", help="how long it ran")
    complete.add_argument("--loss", type=number, help="final loss")
    complete.add_argument("--metrics", default="", help='final metrics, e.g. "accuracy=0.95,f1=0.92"')

    error = add("error", command_error, "send TRAINING_FAILED: a run crashed, with the error")
    _run_options(error, required=True)
    error.add_argument("--error", required=True, metavar="MESSAGE", help="what went wrong")

    cost = add("cost-alert", command_cost_alert, "send COST_THRESHOLD: the cost passed a threshold")
    cost.add_argument("--cost", type=non_negative, required=True, help="cost so far (e.g. 12.50)")
    cost.add_argument("--threshold", type=non_negative, required=True, help="the threshold it passed")
    _run_options(cost, required=False)

    evaluation = add("evaluation", command_evaluation, "send EVALUATION_COMPLETED with metrics")
    _run_options(evaluation, required=True)
    evaluation.add_argument("--metrics", required=True, help='e.g. "accuracy=0.95,f1=0.92"')

    notify = add(
        "notify", command_notify, "send any message: title, text, type and level", aliases=["custom"]
    )
    notify.add_argument("--title", required=True, help="one short line")
    notify.add_argument("--message", default="", help="the body")
    notify.add_argument(
        "--type",
        "--event-type",
        dest="type",
        default="custom",
        help="event type, e.g. checkpoint_saved (default custom)",
    )
    notify.add_argument("--level", help="info, success, warning, error or critical (default: the type's)")
    _run_options(notify, required=False)
    notify.add_argument("--metrics", default="", help='e.g. "loss=0.12"')

    history = add("history", command_history, "recent events and where each one went", timeout=None)
    history.add_argument("--run", metavar="RUN_ID", help="only this run")
    history.add_argument("--type", help="only this event type")
    history.add_argument("--level", help="only this level")
    history.add_argument(
        "--state",
        help="only events with a delivery in this state: pending, sending, delivered, dead"
        " (or failed), superseded (stale progress not sent), folded (named in a digest)",
    )
    history.add_argument("--limit", type=positive_int, default=20, help="how many events (default 20)")

    flush = add("flush", command_flush, "deliver every pending message now, ignoring backoff", timeout=60.0)
    flush.add_argument(
        "--retry-dead",
        action="store_true",
        help="also queue failed (dead) messages again, after you fixed the cause",
    )

    monitor = add(
        "monitor",
        command_monitor,
        "watch GPU memory/utilisation, disk, memory and cost standalone, then print a summary",
    )
    monitor.add_argument(
        "--duration", type=non_negative, default=0.0, metavar="SECONDS", help="stop after this long"
    )
    monitor.add_argument(
        "--interval",
        type=reading_interval,
        default=10.0,
        metavar="SECONDS",
        help="with --json: print a reading this often (default 10)",
    )
    monitor.add_argument("--path", action="append", help="a folder whose disk to watch (repeatable)")
    _run_options(monitor, required=False)

    run = add(
        "run",
        command_run,
        "run a command and report its start and end (its exit code is kept)",
        json=False,
        timeout=None,
    )
    run.add_argument("--model", help="name shown in the messages (default: the script's name)")
    run.add_argument("--run-id", help="run id (default: generated)")
    run.add_argument(
        "--tail",
        type=positive_int,
        default=20,
        metavar="LINES",
        help="stderr lines to include when it fails (default 20)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    _dashboard_commands(add)
    add_exporter_command(add)
    _control_commands(add)
    return parser


def _status(args: argparse.Namespace, output: Output) -> int:
    """``status``: the channels, or with a run id that run's card (docs/control.md)."""
    if getattr(args, "run_id", None):
        return command_run_status(args, output)
    return command_status(args, output)


def _control_commands(add: Any) -> None:
    """``stop`` and ``checkpoint``: command a run of this host (``AFS_CONTROL`` names cli)."""
    for name, text in (
        ("stop", "stop a run gracefully: it finishes its step, saves a checkpoint, ends (AFS_CONTROL)"),
        ("checkpoint", "ask a run to save a checkpoint now and print its path (AFS_CONTROL)"),
    ):
        sub = add(name, command_control, text, timeout=30.0)
        sub.add_argument("run_id", metavar="RUN_ID", help="the run (its id, or a part only one live run has)")
        sub.add_argument("--state-dir", metavar="DIR", help="the history's folder (default: AFS_STATE_DIR)")
        if name == "stop":
            sub.add_argument("--yes", action="store_true", help="do not ask for a confirmation")


def _run_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--model", required=required, help="model name")
    parser.add_argument("--run-id", required=required, help="training run id")


def _dashboard_commands(add: Any) -> None:
    """``retry`` and ``dashboard`` (the dashboard's retry button does what ``retry`` does)."""
    retry = add(
        "retry",
        command_retry,
        "queue failed (dead) messages again: all, one channel's (--channel) or one (--event)",
        timeout=60.0,
    )
    retry.add_argument("--event", metavar="ID", help="only this message (its id, from history --json)")
    retry.add_argument("--send", action="store_true", help="deliver them now, as flush does")
    retry.add_argument("--state-dir", metavar="DIR", help="the history's folder (default: AFS_STATE_DIR)")

    dashboard = add(
        "dashboard",
        command_dashboard,
        "a live web page of runs, curves, events and deliveries; prints its URL",
        json=False,
        timeout=None,
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    dashboard.add_argument("--state-dir", metavar="DIR", help="the history's folder (default: AFS_STATE_DIR)")
    dashboard.add_argument("--open", action="store_true", help="open it in the browser")
    dashboard.add_argument(
        "--token",
        help="require this token (default: one is generated; the printed URL carries it)",
    )
    dashboard.add_argument(
        "--no-token",
        action="store_true",
        help="no token, on a loopback address only: for a machine nobody else logs in to",
    )


@contextmanager
def _cli_logging(*, quiet: bool, verbose: bool) -> Iterator[None]:
    """The library's log lines on stderr as plain sentences (they start ``afs-callbacks:``),
    for the duration of the command; the logger is left as it was afterwards, so calling
    :func:`main` from Python (or a test) changes nothing for the rest of the process."""
    logger = logging.getLogger("afs_callbacks")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
