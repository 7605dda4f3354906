"""Text helpers every channel shares: durations, metrics, cutting to limits, level colours.

Channels format an event for their own markup; what they show (the run's fields, the
metrics, the level's colour and symbol) comes from here so all channels agree.
"""

from __future__ import annotations

import functools
import linecache
import math
import os
import re
import sysconfig
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from afs_callbacks.events import NotificationEvent, NotificationLevel
from afs_callbacks.outcome import Outcome
from afs_callbacks.redaction import redact

#: The visible mark left where text was cut to a service's limit.
TRUNCATION_MARK = "… [truncated]"

LEVEL_COLORS: Mapping[NotificationLevel, int] = {
    NotificationLevel.INFO: 0x3B82F6,
    NotificationLevel.SUCCESS: 0x22C55E,
    NotificationLevel.WARNING: 0xF59E0B,
    NotificationLevel.ERROR: 0xEF4444,
    NotificationLevel.CRITICAL: 0x7F1D1D,
}

LEVEL_EMOJI: Mapping[NotificationLevel, str] = {
    NotificationLevel.INFO: "ℹ️",
    NotificationLevel.SUCCESS: "✅",
    NotificationLevel.WARNING: "⚠️",
    NotificationLevel.ERROR: "❌",
    NotificationLevel.CRITICAL: "🚨",
}

# Context keys shown as fields, in this order, with their labels.
_FIELDS = (
    ("model", "Model"),
    ("run_id", "Run"),
    ("host", "Host"),
    ("epoch", "Epoch"),
    ("step", "Step"),
    ("duration", "Duration"),
    ("device", "Device"),
    ("world_size", "World size"),
    ("cost", "Cost"),
    ("threshold", "Threshold"),
    ("checkpoint", "Checkpoint"),
    ("exit_code", "Exit code"),
)


#: The icons a run's end leads its title with (one per outcome).
_OUTCOME_ICONS = tuple(sorted({outcome.icon for outcome in Outcome}, key=len, reverse=True))


def title_mark(level: NotificationLevel, title: str) -> str:
    """What goes in front of ``title``: the level's symbol and a space, or nothing when the
    title leads with its own (the end of a run leads with its outcome's icon, ``"🛑 Training
    stopped on a problem ..."``, which says more than the level's)."""
    return "" if title.startswith(_OUTCOME_ICONS) else f"{LEVEL_EMOJI[level]} "


def marked_title(level: NotificationLevel, title: str) -> str:
    """``title`` with :func:`title_mark` in front: ``"⚠️ Inf loss at step 3: m"``."""
    return title_mark(level, title) + title


def unmarked_title(title: str) -> str:
    """``title`` without the outcome icon it may lead with: for text where an emoji costs
    more than it says (an SMS: one emoji turns a 160-character segment into a 70-one)."""
    for icon in _OUTCOME_ICONS:
        if title.startswith(icon):
            return title[len(icon) :].lstrip()
    return title


def level_hex(level: NotificationLevel) -> str:
    """The level's colour as ``#rrggbb``."""
    return f"#{LEVEL_COLORS[level]:06x}"


def truncate(text: str, limit: int, mark: str = TRUNCATION_MARK) -> str:
    """Cut ``text`` to at most ``limit`` characters, ending with a visible ``mark``."""
    if len(text) <= limit:
        return text
    if limit <= len(mark):
        return text[:limit]
    return text[: limit - len(mark)] + mark


def truncate_bytes(text: str, limit: int, mark: str = TRUNCATION_MARK) -> str:
    """Cut ``text`` so its UTF-8 encoding is at most ``limit`` bytes, ending with ``mark``."""
    if len(text.encode("utf-8")) <= limit:
        return text
    budget = limit - len(mark.encode("utf-8"))
    if budget < 0:  # no room for the mark: cut the text alone, as truncate() does
        return text.encode("utf-8")[: max(limit, 0)].decode("utf-8", errors="ignore")
    cut = text.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    return cut + mark


def truncate_escaped(text: str, limit: int, escape: Callable[[str], str], mark: str = TRUNCATION_MARK) -> str:
    """Escape ``text`` for a markup (HTML, Slack mrkdwn) so the result is at most ``limit``
    characters, cutting the text before escaping and ending it with ``mark`` when cut.

    Cutting after escaping could split an entity (``&am``) and break the markup; escaping
    can lengthen text, so the cut point is found on the escaped length.
    """
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    tail = escape(mark)
    budget = limit - len(tail)
    if budget <= 0:  # a limit too small for the mark: no room for text at all
        return tail if budget == 0 else ""
    # Binary search for the longest prefix whose escaped form fits: escaping never
    # shortens text, so the escaped length grows with the prefix.
    low, high = 0, min(len(text), budget)
    while low < high:
        middle = (low + high + 1) // 2
        if len(escape(text[:middle])) <= budget:
            low = middle
        else:
            high = middle - 1
    return escape(text[:low]) + tail


def shorten(
    text: str,
    limit: int,
    *,
    escape: Callable[[str], str] | None = None,
    measure: Callable[[str], int] = len,
    keep_lead: bool = True,
) -> str:
    """``text`` (escaped by ``escape`` for a markup) within ``limit``, as ``measure``
    counts (characters by default; UTF-8 bytes or UTF-16 units for some services).

    The lead — the first paragraph, up to the first blank line: a failure's error and
    where it happened — is kept whole; what does not fit is cut from the middle of the
    rest, whole lines at a time, and a line says how many were cut. Only a lead that does
    not fit alone is cut itself, at its end. With ``keep_lead=False`` (a traceback, where
    the error comes last) the middle of the whole text gives way.

    ``escape`` must act character by character (HTML, Slack mrkdwn), so that escaped
    lines add up to the escaped text.
    """
    escape = escape or _same
    whole = escape(text)
    if measure(whole) <= limit:
        return whole
    lead, _, rest = text.partition("\n\n") if keep_lead else ("", "", text)
    if keep_lead and not rest.strip():
        return _cut_end(text, limit, escape, measure)
    head = escape(lead + "\n\n") if lead else ""
    units = _units(rest.split("\n"))
    total = sum(len(unit) for unit in units)
    room = limit - measure(head) - measure(escape(_cut_line(total)))
    if room < 0:
        alone = escape(lead)
        return alone if lead and measure(alone) <= limit else _cut_end(lead or text, limit, escape, measure)
    # Units (a line, or a frame with its source line) are taken from both ends in turn, so
    # the middle goes; a side stops at its first unit that does not fit (what is kept
    # stays contiguous).
    first: list[list[str]] = []
    last: list[list[str]] = []
    start, end = 0, len(units)
    side, blocked = 0, [False, False]
    while start < end and not all(blocked):
        if not blocked[side]:
            unit = units[start] if side == 0 else units[end - 1]
            cost = sum(measure(escape(line + "\n")) for line in unit)
            if cost > room:
                blocked[side] = True
            elif side == 0:
                room -= cost
                first.append(unit)
                start += 1
            else:
                room -= cost
                last.insert(0, unit)
                end -= 1
        side = 1 - side
    if start == end:
        return _cut_end(text, limit, escape, measure)
    cut = sum(len(unit) for unit in units[start:end])
    kept = "\n".join(
        [
            *(line for unit in first for line in unit),
            _cut_line(cut),
            *(line for unit in last for line in unit),
        ]
    )
    result = head + escape(kept)
    return result if measure(result) <= limit else _cut_end(lead or text, limit, escape, measure)


def _units(lines: list[str]) -> list[list[str]]:
    """Lines grouped so a cut never parts them: an indented line takes the lines under it
    that are indented deeper (a frame and its source line)."""
    units: list[list[str]] = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if units and line.strip():
            opener = units[-1][0]
            opener_indent = len(opener) - len(opener.lstrip(" "))
            if 0 < opener_indent < indent:
                units[-1].append(line)
                continue
        units.append([line])
    return units


def utf8_length(text: str) -> int:
    """The bytes ``text`` takes in UTF-8 (a :func:`shorten` measure for byte limits)."""
    return len(text.encode("utf-8"))


def lead_of(text: str) -> str:
    """The first paragraph of ``text`` (up to its first blank line): what a short channel
    (an SMS, a title-sized preview) shows."""
    return text.strip().partition("\n\n")[0]


_TRACEBACK_HEADER = "Traceback (most recent call last):"


def error_line_of(text: str) -> str:
    """The error in a text that may hold a Python traceback (a log's tail, a pasted
    traceback): the exception line that ends the last traceback (``RuntimeError: CUDA
    error``), not a log line printed after it; without a traceback, the last non-blank
    line. ``""`` for blank text."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    header = max((i for i, line in enumerate(lines) if line.strip() == _TRACEBACK_HEADER), default=None)
    if header is not None:
        # The frames are indented; the first line after them that is not is the error.
        for line in lines[header + 1 :]:
            if not line.startswith((" ", "\t")):
                return line.strip()
    return lines[-1].strip() if lines else ""


def lead_with_error(text: str) -> str:
    """A failure's text led by its error: a text whose Python traceback puts the error
    last gets :func:`error_line_of` as its first paragraph, above the text as it was."""
    text = text.strip()
    if _TRACEBACK_HEADER not in text:
        return text
    error = error_line_of(text)
    return f"{error}\n\n{text}" if error and not text.startswith(error) else text


def _cut_line(count: int) -> str:
    return f"  … {count} line{'s' if count != 1 else ''} cut …"


def _same(text: str) -> str:
    return text


def _cut_end(text: str, limit: int, escape: Callable[[str], str], measure: Callable[[str], int]) -> str:
    """``text`` escaped and cut at its end to fit ``limit`` as ``measure`` counts."""
    if measure is len:
        return truncate_escaped(text, limit, escape)
    tail = escape(TRUNCATION_MARK)
    budget = limit - measure(tail)
    if budget < 0:
        return ""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if measure(escape(text[:middle])) <= budget:
            low = middle
        else:
            high = middle - 1
    return escape(text[:low]) + tail


def format_duration(seconds: float | None) -> str:
    """``3723.4`` → ``"1h 02m 03s"``; short spans keep one decimal (``"4.2s"``)."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def format_bytes(value: float) -> str:
    """Bytes for people, in binary units: ``'1.5 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_value(value: Any) -> str:
    """A metric or field value for people: 4 significant digits, NaN/Inf spelled out."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def format_rate(value: float) -> str:
    """A throughput for people: ``12.5``, ``1,600`` (thousands grouped, no decimals)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else format_value(float(value))


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """``{"loss": 0.1234567, "acc": 0.9}`` → ``"loss=0.1235, acc=0.9"``."""
    return ", ".join(f"{name}={format_value(value)}" for name, value in metrics.items())


def context_fields(event: NotificationEvent) -> list[tuple[str, str]]:
    """The run's details worth showing, as ``(label, value)`` pairs in a stable order."""
    fields = []
    for key, label in _FIELDS:
        value = event.context.get(key)
        if value is None or value == "":
            continue
        if key == "duration" and isinstance(value, (int, float)):
            text = format_duration(float(value))
        elif key in ("cost", "threshold") and isinstance(value, (int, float)):
            text = f"${value:,.2f}"
        else:
            text = format_value(value)
        fields.append((label, text))
    return fields


def plain_text(event: NotificationEvent) -> str:
    """The whole event as plain text: title, message, fields and metrics."""
    lines = [f"{event.level.value.upper()}: {event.title}"]
    if event.message:
        lines.append(event.message)
    for label, value in context_fields(event):
        lines.append(f"{label}: {value}")
    if event.metrics:
        lines.append("Metrics: " + format_metrics(event.metrics))
    return "\n".join(lines)


# Errors --------------------------------------------------------------------------------
# A failure message leads with the error and where it happened in the user's own code; the
# frames of frameworks and libraries between the user's frames are folded into one line
# each. Python's own traceback (carets and all) is kept whole, for the history, the
# dashboard and the structured fields of webhook and email payloads.

#: Top-level modules whose frames are folded, by the name the fold line shows.
FOLDED_PACKAGES: Mapping[str, str] = {
    "torch": "torch",
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
    "lightning_fabric": "lightning",
    "lightning_utilities": "lightning",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "keras": "keras",
    "tensorflow": "tensorflow",
    "jax": "jax",
    "afs_callbacks": "afs-callbacks",
}
#: The most characters of the full traceback kept (its middle frames give way).
TRACEBACK_CHARS = 32_000
_HEADLINE_CHARS = 500
_SOURCE_CHARS = 200
_MAX_DETAILS = 8
_MAX_CAUSES = 3
_LIBRARY_DIRS = ("site-packages", "dist-packages")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KERAS_WRAPPED = re.compile(
    r"^Exception encountered when calling (?P<layer>\S+?)\.\n\n\x1b\[1m(?P<message>.*?)\x1b\[0m(?P<rest>.*)$",
    re.S,
)


@dataclass(frozen=True)
class ErrorReport:
    """A failure as a person reads it, every piece redacted.

    Args:
        headline: the exception's type and the first line of its message
            (``RuntimeError: CUDA error: device-side assert triggered``).
        where: the innermost frame of the user's own code (``train.py:42 in
            training_step``); the innermost frame of all when none is the user's.
        details: the message's further lines and the exception's notes.
        causes: the exceptions it was raised from or while handling, one line each.
        frames: most recent call first: the user's frames, each with its source line,
            and one fold line per run of framework frames (``… 6 frames in lightning``).
        traceback: Python's full traceback text (bounded), for the history and the
            structured fields of payloads, never for the message itself.
    """

    headline: str
    where: str = ""
    details: tuple[str, ...] = ()
    causes: tuple[str, ...] = ()
    frames: tuple[str, ...] = ()
    traceback: str = ""

    def lead(self, *, step: int | None = None, epoch: int | None = None) -> str:
        """The two lines a person needs: the error, then where (and at which epoch and
        step, when known)."""
        when = ", ".join(
            part
            for part in (
                f"epoch {epoch}" if epoch is not None else "",
                f"step {step}" if step is not None else "",
            )
            if part
        )
        if self.where:
            location = f"at {self.where}" + (f" ({when})" if when else "")
        else:
            location = f"at {when}" if when else ""
        return "\n".join(line for line in (self.headline, location) if line)

    def text(self, *, step: int | None = None, epoch: int | None = None) -> str:
        """The whole message: :meth:`lead`, then the details, the causes and the user's
        frames, each a paragraph. :func:`shorten` keeps the lead and cuts the middle of
        the rest when a channel's limit is short."""
        paragraphs = [self.lead(step=step, epoch=epoch)]
        if self.details:
            paragraphs.append("\n".join(self.details))
        if self.causes:
            paragraphs.append("\n".join(self.causes))
        if self.frames:
            paragraphs.append("\n".join(("Traceback, most recent call first:", *self.frames)))
        return "\n\n".join(paragraphs)


def exception_report(error: BaseException) -> ErrorReport:
    """Read ``error`` into an :class:`ErrorReport`.

    Only text is kept: holding the exception or its traceback would keep its frames (and
    any GPU tensors they reference) alive.
    """
    frames = _frames(error.__traceback__)
    where = next((frame for frame in frames if frame.package is None), frames[0] if frames else None)
    first, *rest = _message_lines(error) or [""]
    name = type(error).__qualname__
    headline = truncate(f"{name}: {first}" if first else name, _HEADLINE_CHARS)
    notes = getattr(error, "__notes__", None)
    details = [*rest, *(str(note) for note in notes or () if isinstance(note, str))]
    if len(details) > _MAX_DETAILS:
        details = [*details[: _MAX_DETAILS - 1], f"… {len(details) - _MAX_DETAILS + 1} more lines"]
    full = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    return ErrorReport(
        headline=redact(headline),
        where=redact(where.location) if where is not None else "",
        details=tuple(redact(truncate(line, _HEADLINE_CHARS)) for line in details),
        causes=tuple(redact(line) for line in _causes(error)),
        frames=tuple(redact(line) for line in _frame_lines(frames)),
        traceback=redact(shorten(full, TRACEBACK_CHARS, keep_lead=False)),
    )


def describe_exception(error: BaseException) -> str:
    """``error`` as a message body: the error first, where it happened in the user's code,
    then the user's frames with framework frames folded (:meth:`ErrorReport.text`)."""
    return exception_report(error).text()


@dataclass(frozen=True)
class _Frame:
    location: str  # "train.py:42 in training_step"
    source: str  # the line of code, stripped
    package: str | None  # the folded package's name; None for the user's own code


def _frames(tb: TracebackType | None) -> list[_Frame]:
    """The traceback's frames, most recent call first."""
    found = []
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        module = frame.f_globals.get("__name__")
        source = linecache.getline(code.co_filename, lineno or 0, frame.f_globals).strip()
        found.append(
            _Frame(
                location=f"{_short_path(code.co_filename)}:{lineno} in {code.co_name}",
                source=truncate(source, _SOURCE_CHARS),
                package=_package_of(code.co_filename, module if isinstance(module, str) else ""),
            )
        )
    found.reverse()
    return found


def _frame_lines(frames: list[_Frame]) -> list[str]:
    """The user's frames with their source, runs of other frames folded into one line."""
    lines: list[str] = []
    folded: list[str] = []

    def fold() -> None:
        if folded:
            names = ", ".join(dict.fromkeys(folded))
            lines.append(f"  … {len(folded)} frame{'s' if len(folded) != 1 else ''} in {names}")
            folded.clear()

    repeats = 0
    for index, frame in enumerate(frames):
        if frame.package is not None:
            folded.append(frame.package)
            continue
        fold()
        if index and frames[index - 1] == frame:
            repeats += 1  # a recursion: one line says how often, as Python's traceback does
            continue
        if repeats:
            lines.append(f"  [the frame above repeated {repeats} more time{'s' if repeats != 1 else ''}]")
            repeats = 0
        lines.append(f"  {frame.location}")
        if frame.source:
            lines.append(f"      {frame.source}")
    if repeats:
        lines.append(f"  [the frame above repeated {repeats} more time{'s' if repeats != 1 else ''}]")
    fold()
    return lines


def _causes(error: BaseException) -> list[str]:
    """``caused by ValueError: ... at data.py:12 in load`` for each chained exception."""
    lines: list[str] = []
    seen = {id(error)}
    current: BaseException | None = error
    while current is not None and len(lines) < _MAX_CAUSES:
        explicit = current.__cause__
        chained = (
            explicit
            if explicit is not None
            else (None if current.__suppress_context__ else current.__context__)
        )
        if chained is None or id(chained) in seen:
            break
        seen.add(id(chained))
        first = (_message_lines(chained) or [""])[0]
        name = type(chained).__qualname__
        frames = _frames(chained.__traceback__)
        where = next((frame for frame in frames if frame.package is None), frames[0] if frames else None)
        verb = "caused by" if explicit is not None else "while handling"
        text = f"{verb} {name}: {first}" if first else f"{verb} {name}"
        lines.append(truncate(text, _HEADLINE_CHARS) + (f" at {where.location}" if where else ""))
        current = chained
    return lines


def _message_lines(error: BaseException) -> list[str]:
    """The exception's message as lines, the error's own words first."""
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not cost the report
        text = f"<unprintable {type(error).__name__}>"
    wrapped = _KERAS_WRAPPED.match(text)
    if wrapped is not None:
        # Keras 3 raises a layer's error again with its message wrapped: "Exception
        # encountered when calling L.call().", the message in bold, then the arguments.
        text = (
            f"{wrapped['message']}\nException encountered when calling {wrapped['layer']}.{wrapped['rest']}"
        )
    text = _ANSI.sub("", text)
    return [line.rstrip() for line in text.strip().splitlines() if line.strip()]


def _package_of(filename: str, module: str) -> str | None:
    """The name a frame is folded under, or None when it is the user's own code."""
    top = module.partition(".")[0]
    if top in FOLDED_PACKAGES:
        return FOLDED_PACKAGES[top]
    if filename.startswith("<frozen "):
        return "python"
    parts = Path(filename).parts
    for marker in _LIBRARY_DIRS:
        if marker in parts:
            index = len(parts) - 1 - parts[::-1].index(marker)
            if index + 1 < len(parts):
                name = parts[index + 1].removesuffix(".py")
                return FOLDED_PACKAGES.get(name, name)
            return "python"
    if _in_stdlib(filename):
        return "python"
    return None


@functools.lru_cache(maxsize=1)
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(
        {str(Path(paths[key]).resolve()) + os.sep for key in ("stdlib", "platstdlib") if key in paths}
    )


def _in_stdlib(filename: str) -> bool:
    return os.path.isabs(filename) and filename.startswith(_stdlib_dirs())


def _short_path(filename: str) -> str:
    """A frame's file as short as it stays clear: relative to the working directory when
    under it, relative to site-packages for a library, else its last two parts."""
    if not os.path.isabs(filename):
        return filename
    parts = Path(filename).parts
    for marker in _LIBRARY_DIRS:
        if marker in parts:
            index = len(parts) - 1 - parts[::-1].index(marker)
            return "/".join(parts[index + 1 :]) or filename
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        relative = filename
    if not relative.startswith(".."):
        return relative
    return "/".join(parts[-2:])
