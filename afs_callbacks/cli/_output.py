"""How afs-notify prints: a table on a terminal, the same without colour when piped, JSON
on request, and a progress line on a terminal while a long flush runs.

Every line goes through :func:`~afs_callbacks.redaction.redact` on its way out: the CLI
prints history rows and error texts that came from services, and a secret must reach
neither a terminal nor a log file that captured one.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from afs_callbacks.redaction import redact

# Words that get a colour on a terminal (states, results, levels).
_GREEN = frozenset({"delivered", "ready", "ok", "reachable", "success", "active"})
_YELLOW = frozenset({"pending", "sending", "retrying", "skipped", "not usable", "warning", "standby"})
# Not sent on purpose (stale progress, a flood folded into a digest): nothing to fix.
_DIM_STATES = frozenset({"superseded", "folded"})
_RED = frozenset({"dead", "failed", "error", "unreachable", "critical", "config error", "not set up"})
_CODES = {"green": "32", "yellow": "33", "red": "31", "dim": "2", "bold": "1"}
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Where and how the CLI writes.

    Args:
        quiet: print only errors (and JSON, which a script asked for explicitly).
        json_mode: results as one JSON document on stdout instead of tables.
        stdout: where results go (default ``sys.stdout``).
        stderr: where warnings, errors and the progress line go (default ``sys.stderr``).
    """

    def __init__(
        self,
        *,
        quiet: bool = False,
        json_mode: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.quiet = quiet
        self.json_mode = json_mode
        self.tty = _is_tty(self.stdout)
        no_color = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
        self.color = self.tty and not no_color

    # Plain lines ---------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        """A line of human output on stdout (not in quiet or JSON mode)."""
        if not self.quiet and not self.json_mode:
            self._write(self.stdout, text)

    def note(self, text: str) -> None:
        """A hint or warning on stderr, prefixed ``afs-notify:`` (not in quiet mode)."""
        if not self.quiet:
            self._write(self.stderr, f"afs-notify: {text}")

    def error(self, text: str) -> None:
        """An error on stderr, always printed."""
        self._write(self.stderr, f"afs-notify: {text}")

    def json(self, data: Any) -> None:
        """``data`` as indented JSON on stdout, printed even in quiet mode."""
        self._write(self.stdout, json.dumps(data, indent=2, ensure_ascii=False, default=str))

    def _write(self, stream: TextIO, text: str) -> None:
        try:
            stream.write(redact(text) + "\n")
            stream.flush()
        except BrokenPipeError:
            # `afs-notify history | head`: the reader left; stop writing, do not crash.
            _silence(stream)

    # Tables --------------------------------------------------------------------------

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> None:
        """Aligned columns with a header; the last column is never padded.

        Cells that name a state (``delivered``, ``dead``, ``ready``...) are coloured on a
        terminal; piped output is the same text without escape codes.
        """
        if self.quiet or self.json_mode:
            return
        for line in render_table(headers, rows, indent=indent, paint=self.paint if self.color else None):
            self._write(self.stdout, line)

    def paint(self, text: str, style: str | None = None) -> str:
        """``text`` in ``style`` (green, yellow, red, dim, bold) on a colour terminal;
        without a style, the colour its leading word implies (if any)."""
        style = style or _style_of(text)
        if not self.color or style is None:
            return text
        return f"\x1b[{_CODES[style]}m{text}\x1b[0m"

    # Progress ------------------------------------------------------------------------

    @contextmanager
    def progress(self, describe: Callable[[], str], *, interval: float = 0.1) -> Iterator[None]:
        """Show ``describe()`` with a spinner on stderr, refreshed until the block ends.

        Only on a terminal and not in quiet mode: a log file gets no carriage returns.
        """
        if self.quiet or not _is_tty(self.stderr):
            yield
            return
        stop = threading.Event()

        def spin() -> None:
            for frame in itertools.cycle(_SPINNER):
                try:
                    text = describe()
                except Exception:  # the progress line must never break the command
                    text = "working"
                self.stderr.write(f"\r\x1b[K{frame} {redact(text)}")
                self.stderr.flush()
                if stop.wait(interval):
                    break
            self.stderr.write("\r\x1b[K")
            self.stderr.flush()

        spinner = threading.Thread(target=spin, name="afs-notify-progress", daemon=True)
        spinner.start()
        try:
            yield
        finally:
            stop.set()
            spinner.join(1.0)


def render_table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    *,
    indent: str = "",
    paint: Callable[[str], str] | None = None,
) -> list[str]:
    """The lines of an aligned table (no header line when ``headers`` is None);
    ``paint`` colours cells after they are padded."""
    cells = [[str(cell).replace("\n", " ") for cell in row] for row in rows]
    table = cells if headers is None else [list(headers), *cells]
    columns = max((len(row) for row in table), default=0)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(columns)]
    lines = []
    for number, row in enumerate(table):
        parts = []
        for i, cell in enumerate(row):
            padded = cell if i == len(row) - 1 else cell.ljust(widths[i])
            if paint is not None:
                header = number == 0 and headers is not None
                padded = _bold(padded) if header else _paint_cell(padded, cell, paint)
            parts.append(padded)
        lines.append((indent + "  ".join(parts)).rstrip())
    return lines


def _paint_cell(padded: str, cell: str, paint: Callable[[str], str]) -> str:
    painted = paint(cell)
    return padded if painted == cell else painted + padded[len(cell) :]


def _bold(text: str) -> str:
    return f"\x1b[1m{text}\x1b[0m"


def _style_of(text: str) -> str | None:
    word = text.strip().lower()
    for words, style in ((_GREEN, "green"), (_YELLOW, "yellow"), (_RED, "red"), (_DIM_STATES, "dim")):
        if word in words or any(word.startswith(w + " ") or word.startswith(w + ":") for w in words):
            return style
    return None


def _silence(stream: TextIO) -> None:
    # Point the file descriptor at /dev/null so the interpreter's final flush does not
    # raise BrokenPipeError again at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass
