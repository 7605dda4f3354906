"""``afs-notify run -- CMD ARGS...``: run any command and report it: started, then completed,
failed (exit code, duration, the last lines of its stderr) or interrupted.

The wrapper's exit status is always the command's, whatever happens to notifications: a
job script sees what the command returned, or the signal that killed it. SIGINT, SIGTERM
and SIGHUP are passed on to the command; its stderr streams through unchanged while the
wrapper keeps the last lines for the report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from afs_callbacks.cli._common import (
    UsageError,
    deliveries_of,
    delivery_result,
    open_session,
    print_problems,
    say_off,
)
from afs_callbacks.cli._output import Output
from afs_callbacks.events import EventType, NotificationEvent
from afs_callbacks.formatting import error_line_of, format_duration, truncate
from afs_callbacks.manager import NotificationManager
from afs_callbacks.outcome import Outcome
from afs_callbacks.redaction import redact

#: Signals passed on to the command; getattr because Windows has no SIGHUP.
FORWARDED = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None
)
# Deaths passed on by dying of the same signal; core-dumping ones (SIGSEGV, SIGABRT) are
# not, so the wrapper leaves no core file of its own: it exits with 128 + the signal number.
_RERAISED = frozenset(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL", "SIGPIPE", "SIGALRM", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)
# A terminal sends these to its whole foreground process group, the command included.
_FROM_TERMINAL = frozenset(s for s in (signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)

#: Longest line kept (bytes); a longer one keeps its end, where the error usually is.
MAX_LINE = 1000

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def command_run(args: argparse.Namespace, output: Output) -> int:
    """Run the command, report it, and return (or die of) what the command did."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("run needs a command after --, e.g. afs-notify run -- python train.py")
    session = open_session(args)  # a bad --env-file or --channel stops here, before anything ran
    manager = session.manager
    if session.off:
        say_off(output, session.off, "the command runs unreported")
    print_problems(output, session.problems, session)
    model = args.model or guess_model(command)
    run_id = args.run_id or f"run-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    shown = display(command)
    forwarder = SignalForwarder()
    forwarder.install()
    started = time.monotonic()
    try:
        process = subprocess.Popen(command, stderr=subprocess.PIPE)
    except OSError as error:
        forwarder.restore()
        code = 127 if isinstance(error, FileNotFoundError) else 126
        reason = error.strerror or str(error)
        output.error(f"cannot run {command[0]!r}: {reason}")
        _finish(
            manager,
            output,
            lambda: manager.notify_training_failed(
                model,
                run_id,
                f"Command: {shown}\nCould not start it: {reason}.",
                command=shown,
                exit_code=code,
            ),
        )
        return code
    forwarder.attach(process)
    manager.notify_training_started(model, run_id, command=shown)
    tail = StderrTail(args.tail)
    assert process.stderr is not None
    pump = threading.Thread(target=_pump, args=(process.stderr, tail), name="afs-notify-stderr", daemon=True)
    pump.start()
    returncode = process.wait()
    pump.join(2.0)  # a grandchild still holding stderr open must not hold up the report
    duration = time.monotonic() - started
    _finish(
        manager,
        output,
        lambda: _report(manager, model, run_id, shown, returncode, duration, forwarder.received, tail.text()),
    )
    forwarder.restore()
    return _exit_status(returncode)


def display(command: list[str], limit: int = 200) -> str:
    """The command on one line for a message: quoted where it has spaces, secrets masked.

    For reading, not for pasting into a shell: a multi-line ``python -c`` script shows its
    line breaks as ``⏎``.
    """
    parts = [f'"{part}"' if not part or any(c.isspace() for c in part) else part for part in command]
    text = " ".join(parts).replace("\r\n", "\n").replace("\n", " ⏎ ")
    return truncate(redact(text), limit)


def guess_model(command: list[str]) -> str:
    """A name for the run from its command: the script (``train.py`` → ``train``), the
    module after ``-m``, else the program."""
    for index, part in enumerate(command):
        if part.endswith(".py"):
            return Path(part).stem
        if part == "-m" and index + 1 < len(command):
            return command[index + 1]
    return Path(command[0]).name


class SignalForwarder:
    """Passes SIGINT/SIGTERM/SIGHUP on to the child and remembers which arrived."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Take over the signals (before the child starts, so none is missed)."""
        for sig in FORWARDED:
            self._previous[sig] = signal.signal(sig, self._handle)

    def attach(self, process: subprocess.Popen[bytes]) -> None:
        """Forward to ``process`` from now on, and what arrived while it was starting."""
        self._process = process
        for sig in self.received:
            self._forward(sig)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._process is not None and not (signum in _FROM_TERMINAL and _terminal_sent(signum)):
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        if self._process is not None:
            with contextlib.suppress(OSError):  # already gone
                self._process.send_signal(signum)


def _terminal_sent(signum: int) -> bool:
    # Ctrl-C at a terminal signals the whole foreground process group, the child included;
    # forwarding it would deliver it twice (a second KeyboardInterrupt inside cleanup).
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except (OSError, ValueError, AttributeError):
            continue
    return False


class StderrTail:
    """Keeps the last ``lines`` lines fed to it, as a terminal would have shown them.

    Progress bars (tqdm writes to stderr) redraw one line with carriage returns thousands
    of times; a tail that kept every redraw would report "37%|███▋ " twenty times instead
    of the traceback. So a carriage return starts the line over, as it does on a screen,
    and colour escape codes are dropped. Memory stays bounded whatever the command writes.

    Args:
        lines: how many lines to keep.
    """

    def __init__(self, lines: int = 20) -> None:
        self._lines: deque[bytes] = deque(maxlen=max(lines, 1))
        self._current = b""
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        """Take the next chunk of the stream (chunks may split lines anywhere)."""
        with self._lock:
            parts = data.split(b"\n")
            for part in parts[:-1]:
                self._lines.append(_visible(self._current + part))
                self._current = b""
            self._current = _pending(self._current + parts[-1])

    def text(self) -> str:
        """The kept lines as text, colour codes removed, blank lines at both ends dropped."""
        with self._lock:
            lines = list(self._lines)
            if _visible(self._current).strip():
                lines.append(_visible(self._current))
        decoded = [_ANSI.sub("", line.decode("utf-8", errors="replace")).rstrip() for line in lines]
        return "\n".join(decoded[-(self._lines.maxlen or 1) :]).strip("\n")


def _visible(raw: bytes) -> bytes:
    """What a screen shows of a finished line: the text after its last carriage return."""
    return raw.rstrip(b"\r").rpartition(b"\r")[2][-MAX_LINE:]


def _pending(raw: bytes) -> bytes:
    """An unfinished line, cut to what can still be shown (a trailing CR may be a CRLF)."""
    body = raw.rstrip(b"\r")
    return body.rpartition(b"\r")[2][-MAX_LINE:] + raw[len(body) :][:1]


def _pump(source: IO[bytes], tail: StderrTail) -> None:
    """Copy the child's stderr to ours as it comes, keeping the tail."""
    fd = source.fileno()
    sink_open = True
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        if sink_open:
            try:
                _write_all(2, data)
            except OSError:
                sink_open = False  # our stderr is gone; keep draining so the child never blocks
        tail.feed(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _report(
    manager: NotificationManager,
    model: str,
    run_id: str,
    shown: str,
    returncode: int,
    duration: float,
    received: list[int],
    tail: str,
) -> NotificationEvent | None:
    """Send completed, failed or interrupted for a finished command."""
    killed_by = -returncode if returncode < 0 else None
    ended = (
        f"was killed by {signal.Signals(killed_by).name}" if killed_by else f"exited with code {returncode}"
    )
    context: dict[str, Any] = {
        "command": shown,
        "exit_code": 128 + killed_by if killed_by else returncode,
        "duration": duration,
    }
    after = f"after {format_duration(duration)}"
    command = f"Command: {shown}\n"
    stderr = f"\n\nLast lines of stderr:\n{tail}" if tail else ""
    interrupt = next((s for s in received if s in FORWARDED), None)
    if interrupt is None and killed_by in FORWARDED:
        interrupt = killed_by
    if interrupt is not None:
        name = signal.Signals(interrupt).name
        what = (
            f"Stopped by {name} {after}."
            if killed_by == interrupt
            else f"Received {name} {after}; it then {ended}."
        )
        return manager.notify(
            f"Training interrupted: {model}",
            command + what + stderr,
            EventType.TRAINING_INTERRUPTED,
            model=model,
            run_id=run_id,
            signal=name,
            # A scheduler stops a job with SIGTERM; a person with Ctrl-C or a closed terminal.
            outcome=(Outcome.PREEMPTED if interrupt == signal.SIGTERM else Outcome.INTERRUPTED).value,
            **context,
        )
    if returncode == 0:
        return manager.notify_training_completed(model, run_id, duration=duration, command=shown, exit_code=0)
    hint = ""
    if killed_by == getattr(signal, "SIGKILL", None):
        hint = " SIGKILL often comes from the kernel's out-of-memory killer or a scheduler's hard limit."
    # A failure leads with its error: the exception line of the traceback in stderr (or
    # stderr's last line), else how the command ended; that first line is the failure's
    # one-line summary.
    how = f"{ended[0].upper() + ended[1:]} {after}.{hint}"
    error = error_line_of(tail)
    lead = f"{error}\n{how}" if error else how
    return manager.notify_training_failed(model, run_id, f"{lead}\n\n{command.rstrip()}{stderr}", **context)


def _finish(
    manager: NotificationManager, output: Output, report: Callable[[], NotificationEvent | None]
) -> None:
    """Send the final event, deliver within the exit flush time, say where it went, close.

    Whatever goes wrong here is printed and swallowed: the exit status is the command's.
    """
    try:
        event = report()
        manager.flush(manager.settings.exit_flush_timeout)
        if event is not None:
            results = [(d.channel, *delivery_result(d)) for d in deliveries_of(manager, event.id)]
            where = "; ".join(f"{c}: {r}" + (f" ({d})" if r != "delivered" else "") for c, r, d in results)
            output.note(f"reported '{event.title}' to {where or 'no channel'}")
    except Exception as error:
        output.error(f"could not report the run: {redact(error)}")
    finally:
        with contextlib.suppress(Exception):
            manager.close(timeout=0)


def _exit_status(returncode: int) -> int:
    """The command's status: its code, or death by the same signal that killed it."""
    if returncode >= 0:
        return returncode
    sig = -returncode
    if sig in _RERAISED:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
    return 128 + sig  # a core-dumping signal (no core of the wrapper), or one that did not kill us
