"""The ``afs-notify`` command (also ``python -m afs_callbacks``).

Every subcommand builds its manager from the environment / ``.env`` and prints through
one :class:`~afs_callbacks.cli._output.Output`, which redacts secrets from every line.
Exit codes: 0 ok, 1 a delivery failed, 2 bad input or configuration (one sentence on
stderr); ``run`` exits with its command's status instead. See docs/cli.md.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from afs_callbacks.cli._common import EXIT_FAILED, EXIT_USAGE, UsageError
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._parser import build_parser
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
        from afs_callbacks.cli._store_check import history_fault, history_path

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
