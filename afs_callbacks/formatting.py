"""Text helpers every channel shares: durations, metrics, cutting to limits, level colours.

Channels format an event for their own markup; what they show (the run's fields, the
metrics, the level's colour and symbol) comes from here so all channels agree.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
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


def describe_exception(error: BaseException, *, tail_lines: int = 12) -> str:
    """A short, redacted description of ``error``: its type, message and traceback tail.

    Only text is kept: holding the exception or its traceback would keep its frames (and
    any GPU tensors they reference) alive.
    """
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    text = "".join(lines).rstrip()
    tail = "\n".join(text.splitlines()[-tail_lines:])
    return redact(tail)
