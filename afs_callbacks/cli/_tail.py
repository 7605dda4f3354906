"""The last lines of a stream, as a terminal would have shown them.

Progress bars (tqdm writes to stderr) redraw one line with carriage returns thousands of
times; a tail that kept every redraw would report "37%|███▋ " twenty times instead of the
traceback. So a carriage return starts the line over, as it does on a screen, and colour
escape codes are dropped. Memory stays bounded whatever the command writes.
"""

from __future__ import annotations

import re
import threading
from collections import deque

#: Longest line kept (bytes); a longer one keeps its end, where the error usually is.
MAX_LINE = 1000

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


class StderrTail:
    """Keeps the last ``lines`` lines fed to it.

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
