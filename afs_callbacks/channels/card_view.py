"""What a live run card shows, whichever service shows it.

A card is built from a :class:`~afs_callbacks.runstate.RunState` in two steps:
:func:`card_view` decides *what* to show (headline, progress bar, the run's facts, the
outcome once it ended), the same for every service; *how* is the channel's: the plain text
and Markdown renderers here (ntfy, desktop), and each service's own markup in its module
(Slack blocks in ``slack.py``, a Discord embed in ``discord.py``, Telegram HTML in
``telegram.py``), all built on :func:`render_markup` or on the view's fields directly.
Renderers escape run text for their markup and keep to the service's documented limits.

The card and the run's end message divide the work: the card is the run at a glance (its
outcome's icon, label and colour, the progress, the key numbers, and one line of how it
ended: the completion's first line, the error, or the first NaN/Inf); the end message is
the push that rings, with the whole summary and the chart. The card's numbers (elapsed
time, throughput) are the ones the end message states: both come from the run's end facts.

Example (plain text)::

    🏃 resnet50 · running
    ████████░░░░░░░░░░░░ 40% · epoch 4/10 · ETA 6m 00s
    Run: 7f3a9c
    Host: gpu-node-7
    Elapsed: 4m 00s
    Throughput: 12.5 steps/s
    val_loss: 0.4321 (best 0.4102 at epoch 3)
    updated 12:34:56 UTC

Ended (a NaN stop)::

    🛑 resnet50 · stopped on a problem
    ██░░░░░░░░░░░░░░░░░░ 10% · epoch 1/10 · step 8
    ...
    Stopped at the first NaN/Inf (stop_on_nan), after 1 of 10 epochs: loss became NaN at
    step 5 (epoch 1), seen at step 8.
    updated 12:35:02 UTC
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from afs_callbacks.formatting import (
    format_bytes,
    format_duration,
    format_rate,
    format_value,
    truncate,
    truncate_escaped,
)
from afs_callbacks.outcome import Outcome
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import RUNNING, STALLED, RunState

#: The symbol in front of each status: a live run's, then each outcome's own.
STATUS_EMOJI: Mapping[str, str] = {
    RUNNING: "🏃",
    STALLED: "⚠️",
    **{outcome.value: outcome.icon for outcome in Outcome},
}
#: Embed/attachment colour of each status (Discord, Slack's side bar): each outcome's own.
STATUS_COLORS: Mapping[str, int] = {
    RUNNING: 0x3B82F6,
    STALLED: 0xF59E0B,
    **{outcome.value: outcome.colour for outcome in Outcome},
}
BAR_WIDTH = 20
#: Metrics listed besides the monitored one (a card is glanced at, not read).
MAX_METRICS = 6
_VALUE_CHARS = 300
_SUMMARY_CHARS = 1000
# What makes Markdown (Discord's and CommonMark) format text; digits and dots stay plain.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_~|>\[\]])")


@dataclass(frozen=True)
class CardView:
    """A card's content, independent of any service.

    Attributes:
        headline: ``"🏃 resnet50 · running"``, ``"⚠️ resnet50 · completed with warnings"``.
        progress: the bar line, or None when the run's length is unknown.
        fields: the run's facts as ``(label, value)`` pairs, in display order.
        outcome: how the run ended, in a line or two (the completion's first line, or the
            exception on failure), or what is wrong with a live run (a stall, the first
            NaN/Inf); None while all is well.
        footer: ``"updated 12:34:56 UTC"``.
        status: the run's status; ``color`` its colour.
    """

    headline: str
    progress: str | None
    fields: tuple[tuple[str, str], ...]
    outcome: str | None
    footer: str
    status: str
    color: int


def card_view(state: RunState, *, now: float | None = None) -> CardView:
    """What the card for ``state`` shows. ``now`` stands in for the clock where the state
    has no ``updated_at`` (tests pass it)."""
    updated = state.updated_at if state.updated_at is not None else (now if now is not None else time.time())
    emoji = STATUS_EMOJI.get(state.status, "•")
    model = " ".join(state.model.split()) or "run"
    ended = state.outcome
    return CardView(
        headline=f"{emoji} {model} · {ended.label if ended is not None else state.status}",
        progress=_progress_line(state),
        fields=tuple(_fields(state, updated)),
        outcome=_outcome(state),
        footer=f"updated {datetime.fromtimestamp(updated, timezone.utc):%H:%M:%S} UTC",
        status=state.status,
        color=STATUS_COLORS.get(state.status, STATUS_COLORS[RUNNING]),
    )


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """``0.4`` → ``"████████░░░░░░░░░░░░"`` (full blocks, rounded down, so 100% means done)."""
    fraction = min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 0.0
    filled = int(fraction * width + 1e-9)
    return "█" * filled + "░" * (width - filled)


# Renderers ------------------------------------------------------------------------------


def render_text(state: RunState, *, limit: int = 4000, now: float | None = None) -> str:
    """The card as plain text of at most ``limit`` characters (ntfy, desktop, logs)."""
    return render_markup(card_view(state, now=now), limit, escape=str, bold=str, code=str)


def render_markdown(state: RunState, *, limit: int = 4000, now: float | None = None) -> str:
    """The card as CommonMark with run text escaped (Discord, ntfy with ``markdown``)."""
    return render_markup(
        card_view(state, now=now),
        limit,
        escape=escape_markdown,
        bold=lambda text: f"**{text}**",
        code=lambda text: f"`{text.replace('`', '')}`",
    )


def escape_markdown(text: str) -> str:
    """Backslash-escape Markdown's control characters so run text shows as typed."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def render_markup(
    view: CardView,
    limit: int,
    *,
    escape: Callable[[str], str],
    bold: Callable[[str], str],
    code: Callable[[str], str],
) -> str:
    """``view`` as lines of text in one markup, at most ``limit`` characters: headline,
    progress, fields, outcome, footer; the fields give way first when long.

    Args:
        escape: makes run text literal in the markup.
        bold: wraps escaped text in bold.
        code: escapes and wraps text as code (the progress bar).
    """
    head = [bold(truncate_escaped(view.headline, 200, escape))]
    if view.progress:
        head.append(code(view.progress))  # ``code`` escapes for its own markup
    tail = [escape(view.footer)]
    if view.outcome:
        tail.insert(0, truncate_escaped(view.outcome, max(limit // 3, 1), escape))
    lines = [
        f"{bold(escape(label) + ':')} {truncate_escaped(value, 200, escape)}" for label, value in view.fields
    ]
    fixed = len("\n".join(head + tail)) + 1
    while lines and fixed + len("\n".join(lines)) > limit:
        lines.pop()
    text = "\n".join(head + lines + tail)
    return text if len(text) <= limit else truncate(view.headline, limit)


# What the card shows ----------------------------------------------------------------------


def _progress_line(state: RunState) -> str | None:
    fraction = state.progress
    parts = []
    if fraction is not None:
        parts.append(f"{progress_bar(fraction)} {fraction:.0%}")
    if state.epoch is not None:
        parts.append(f"epoch {state.epoch:,}" + (f"/{state.total_epochs:,}" if state.total_epochs else ""))
    if state.step is not None:
        parts.append(f"step {state.step:,}" + (f"/{state.total_steps:,}" if state.total_steps else ""))
    if state.status == RUNNING and state.eta_seconds is not None and math.isfinite(state.eta_seconds):
        parts.append(f"ETA {format_duration(state.eta_seconds)}")
    return " · ".join(parts) or None


def _fields(state: RunState, updated: float) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = [("Run", state.run_id)]
    if state.host:
        fields.append(("Host", state.host))
    if state.started_at is not None:
        end = state.ended_at if state.final and state.ended_at is not None else updated
        fields.append(("Elapsed", format_duration(max(end - state.started_at, 0.0))))
    throughput = _throughput(state)
    if throughput:
        fields.append(("Throughput", throughput))
    for label, key in _SWEEP_FIELDS:  # a sweep's card (afs_callbacks.delivery.sweep_end)
        text = state.extra.get(key)
        if isinstance(text, str) and text:
            fields.append((label, text))
    if state.monitor:
        fields.append((state.monitor, _monitored(state)))
    others = {name: value for name, value in state.metrics.items() if name != state.monitor}
    if others:
        shown = list(others.items())[:MAX_METRICS]
        text = ", ".join(f"{name}={format_value(value)}" for name, value in shown)
        if len(others) > MAX_METRICS:
            text += f" (+{len(others) - MAX_METRICS} more)"
        fields.append(("Metrics", text))
    if state.last_checkpoint:
        fields.append(("Checkpoint", _tail(state.last_checkpoint)))
    if state.peak_gpu_memory is not None:
        fields.append(("Peak GPU memory", format_bytes(state.peak_gpu_memory)))
    if state.cost is not None:
        fields.append(("Cost", f"${state.cost:,.2f}"))
    fields += _rules(state)
    fields += _commands(state)
    return [(label, truncate(redact(value), _VALUE_CHARS)) for label, value in fields]


#: A sweep's card: its trials so far and its best trial, in words (``RunState.extra``).
_SWEEP_FIELDS = (("Trials", "trials"), ("Best trial", "best_trial"))
#: Commands a card lists (the latest first): every one, refused ones too, says who and how.
CARD_COMMANDS = 3


def _commands(state: RunState) -> list[tuple[str, str]]:
    """``("Command", "stop by alice@gpu-7 via cli 12:03 UTC: done (…)")`` for the run's
    latest commands (``state.control["recent"]``, written by its control)."""
    recent = state.control.get("recent") if isinstance(state.control, Mapping) else None
    if not isinstance(recent, list):
        return []
    lines = []
    for entry in recent[:CARD_COMMANDS]:
        if not isinstance(entry, Mapping):
            continue
        at = entry.get("at")
        when = (
            f" {datetime.fromtimestamp(at, timezone.utc):%H:%M} UTC" if isinstance(at, (int, float)) else ""
        )
        who = f"{entry.get('action')} by {entry.get('actor')} via {entry.get('source')}"
        text = f"{who}{when}: {entry.get('state')}"
        detail = str(entry.get("detail") or "")
        lines.append(("Command", f"{text} ({detail})" if detail else text))
    return lines


def _rules(state: RunState) -> list[tuple[str, str]]:
    """``("Rule", "val_loss < 0.3: val_loss 0.28 < 0.3 at step 1,200, 12:03 UTC")``
    (the rule as written, what it saw) for the run's rules that fired, the latest first
    (``state.control["rules"]``, written by ``afs_callbacks.rules``)."""
    fired = state.control.get("rules") if isinstance(state.control, Mapping) else None
    if not isinstance(fired, list):
        return []
    lines = []
    for entry in fired[:CARD_COMMANDS]:
        if not isinstance(entry, Mapping):
            continue
        at = entry.get("at")
        when = (
            f", {datetime.fromtimestamp(at, timezone.utc):%H:%M} UTC" if isinstance(at, (int, float)) else ""
        )
        step = entry.get("step")
        where = f" at step {step:,}" if isinstance(step, int) else ""
        lines.append(("Rule", f"{entry.get('rule')}: {entry.get('detail')}{where}{when}"))
    return lines


def _throughput(state: RunState) -> str:
    parts = []
    # Worded as the end message words them: the same figures read the same.
    if state.steps_per_second:
        parts.append(f"{format_rate(state.steps_per_second)} steps/s")
    if state.samples_per_second:
        parts.append(f"{format_rate(state.samples_per_second)} samples/s")
    return " · ".join(parts)


def _monitored(state: RunState) -> str:
    latest = state.metrics.get(state.monitor or "")
    text = format_value(latest) if latest is not None else "—"
    if state.best is not None:
        where = f" at epoch {state.best_epoch}" if state.best_epoch is not None else ""
        text += f" (best {format_value(state.best)}{where})"
    return text


def _outcome(state: RunState) -> str | None:
    ended = state.outcome
    lines: list[str] = []
    if ended is not None:
        first = state.summary.strip().splitlines()[0] if state.summary and state.summary.strip() else ""
        reason = f" ({state.end_reason})" if state.end_reason else ""
        lines.append(first or ended.label.capitalize() + reason)
    elif state.status == STALLED:
        lines.append("Stalled: no step for a while")
    if state.error_type or state.error:
        error = state.error.strip().splitlines()[-1] if state.error and state.error.strip() else ""
        if state.error_type and not error.startswith(state.error_type):
            error = f"{state.error_type}: {error}" if error else state.error_type
        lines.append(error)
    if state.non_finite and not any(state.non_finite in line for line in lines):
        lines.append(f"First NaN/Inf: {state.non_finite}")
    if not lines:
        return None
    return truncate(redact("\n".join(lines)), _SUMMARY_CHARS)


def _tail(path: str, keep: int = 80) -> str:
    """The end of a long path (the file name matters most)."""
    return path if len(path) <= keep else "…" + path[-(keep - 1) :]


__all__ = [
    "STATUS_COLORS",
    "STATUS_EMOJI",
    "CardView",
    "card_view",
    "escape_markdown",
    "progress_bar",
    "render_markdown",
    "render_markup",
    "render_text",
]
