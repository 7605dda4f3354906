"""The dashboard's JSON answers, built from the outbox opened read-only.

Each function returns plain JSON-safe data for one endpoint. Every text that came from the
history passes through :func:`afs_callbacks.redaction.redact` on the way out (the rows are
redacted when written; this catches a secret registered since), so no page can show one.

A run's status is its :class:`~afs_callbacks.outcome.Outcome` once it ended; the badge's
words, icon and colour are the outcome's own (:func:`status_info`), the same the cards
and the end messages show, and the page decides nothing about them.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from afs_callbacks._pids import pid_exists
from afs_callbacks.delivery.outbox import DEAD, PENDING, SENDING, Delivery, HistoryEntry, Outbox
from afs_callbacks.formatting import format_value
from afs_callbacks.outcome import STALLED, Outcome
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import FINAL_STATUSES, RUNNING, STATUSES, RunState, commands_from


@dataclass(frozen=True)
class RunFilter:
    """What the runs list is narrowed to (every field optional)."""

    status: str = ""
    model: str = ""
    search: str = ""
    limit: int = 100


#: Texts of a run state shown on the pages (everything else there is numbers or ids).
_STATE_TEXTS = ("summary", "error", "error_type", "end_reason", "last_checkpoint", "best_checkpoint")


def runs_payload(outbox: Outbox, where: RunFilter) -> dict[str, Any]:
    """``/api/runs``: the filtered runs, newest first, plus what the filters can offer."""
    now = time.time()
    found = outbox.runs(
        limit=where.limit,
        status=where.status or None,
        model=where.model or None,
        run_id_contains=where.search or None,
    )
    states = [state_of(run) for run in found]
    names = redact_many([str(s.get(key) or "") for s in states for key in _ROW_TEXTS])
    rows = [
        run_row(state, now, names[n * len(_ROW_TEXTS) : (n + 1) * len(_ROW_TEXTS)])
        for n, state in enumerate(states)
    ]
    statuses = outbox.run_counts()
    return {
        "now": now,
        "runs": rows,
        "statuses": statuses,
        "status_info": status_info(),
        "models": outbox.models(),
        "total": sum(statuses.values()),
    }


#: What a live run's badge shows (an ended run's is its outcome's).
_LIVE = {
    RUNNING: ("running", "🏃", 0x3B82F6),
    STALLED: ("stalled", "⚠️", 0xF59E0B),
}


def status_info() -> list[dict[str, Any]]:
    """Every status a run can have, in order (live ones, then each outcome), with the
    badge's ``label``, ``icon`` and ``colour`` (``#rrggbb``) and, for an outcome, its
    ``level`` and whether it ``succeeded``: the filter's options and the badges' looks."""
    info: list[dict[str, Any]] = []
    for status in STATUSES:
        if status in _LIVE:
            label, icon, colour = _LIVE[status]
            info.append({"status": status, "label": label, "icon": icon, "colour": f"#{colour:06x}"})
            continue
        outcome = Outcome(status)
        info.append(
            {
                "status": status,
                "label": outcome.label,
                "icon": outcome.icon,
                "colour": f"#{outcome.colour:06x}",
                "level": outcome.level.value,
                "succeeded": outcome.succeeded,
            }
        )
    return info


#: The texts of a runs-table row, redacted together (one pass for the whole page).
_ROW_TEXTS = ("run_id", "model", "host")


def run_row(state: Mapping[str, Any], now: float, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """One line of the runs table: the facts a person scans for (``texts``: its
    :data:`_ROW_TEXTS` already redacted)."""
    if texts is None:
        texts = redact_many([str(state.get(key) or "") for key in _ROW_TEXTS])
    latest_name, latest_value = latest_metric(state)
    metrics = state.get("metrics") or {}
    raw_latest = (
        _metric_value(metrics.get(latest_name)) if latest_name and isinstance(metrics, Mapping) else None
    )
    return {
        "run_id": texts[0],
        "model": texts[1],
        "host": texts[2],
        "status": state.get("status", ""),
        "status_note": state.get("status_note"),
        "started_at": state.get("started_at"),
        "duration": duration(state, now),
        "progress": progress(state),
        "epoch": state.get("epoch"),
        "total_epochs": state.get("total_epochs"),
        "step": state.get("step"),
        "total_steps": state.get("total_steps"),
        "latest_name": latest_name,
        "latest": latest_value,
        # The value as people read it: "NaN" and "Inf" too, which ``latest`` (a number or
        # null) cannot carry.
        "latest_text": None if raw_latest is None else format_value(raw_latest),
        "non_finite": non_finite(state),
        "monitor": state.get("monitor"),
        "best": _number(state.get("best")),
        "best_epoch": state.get("best_epoch"),
        "cost": _number(state.get("cost")),
    }


def run_payload(outbox: Outbox, run_id: str, *, event_limit: int = 300) -> dict[str, Any] | None:
    """``/api/run/<id>``: the state, curves, events with their deliveries; None if unknown."""
    stored = outbox.run(run_id)
    state = None if stored is None else state_of(stored)
    events = [event_of(entry) for entry in outbox.history(run_id=run_id, limit=event_limit)]
    if state is None and not events:
        return None
    now = time.time()
    detail: dict[str, Any] = {}
    if state is not None:
        detail = {
            **run_row(state, now),
            **{key: redact(state[key]) if state.get(key) else None for key in _STATE_TEXTS},
            "ended_at": state.get("ended_at"),
            "updated_at": state.get("updated_at"),
            "metrics": {str(k): _number(v) for k, v in (state.get("metrics") or {}).items()},
            # As people read them: "NaN" and "Inf" too, where ``metrics`` has null.
            "metric_texts": {
                str(k): format_value(number)
                for k, v in (state.get("metrics") or {}).items()
                if (number := _metric_value(v)) is not None
            },
            "steps_per_second": _number(state.get("steps_per_second")),
            "samples_per_second": _number(state.get("samples_per_second")),
            "eta_seconds": _number(state.get("eta_seconds")),
            "peak_gpu_memory": _number(state.get("peak_gpu_memory")),
            "gpu_utilization": _number(state.get("gpu_utilization")),
            "extra": {str(k): redact(v) for k, v in (state.get("extra") or {}).items()},
        }
    return {
        "now": now,
        "run_id": run_id,
        "status_info": status_info(),
        "state": detail or None,
        "series": curves(outbox, run_id),
        "events": event_rows(events, now),
        "control": control_payload(outbox, stored),
    }


def control_payload(outbox: Outbox, run: RunState | None) -> dict[str, Any]:
    """What the run page's Stop / Checkpoint buttons need: whether the run takes commands
    from the dashboard (its own ``AFS_CONTROL``) and its commands, newest first, redacted."""
    takes = run is not None and not run.final and "dashboard" in commands_from(run)
    found = [] if run is None else outbox.commands(run_ids=[run.run_id], limit=20)
    return {
        "dashboard": takes,
        "commands": [
            {
                "id": command.id,
                "action": command.action,
                "source": command.source,
                "actor": redact(command.actor),
                "created": command.created,
                "updated": command.updated,
                "state": command.state,
                "detail": redact(command.detail),
            }
            for command in found
        ],
    }


def events_payload(outbox: Outbox, *, run_id: str | None, limit: int) -> dict[str, Any]:
    """``/api/events``: events (of a run, or all), newest first, with deliveries."""
    now = time.time()
    events = [event_of(entry) for entry in outbox.history(run_id=run_id, limit=limit)]
    return {"now": now, "events": event_rows(events, now)}


def event_rows(events: Sequence[Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
    """Events for the timeline: redacted texts and one readable line per delivery."""
    rows = [
        {
            **event,
            "message": event.get("message") or "",
            "deliveries": [delivery_row(d, now) for d in event["deliveries"]],
        }
        for event in events
    ]
    _redact_fields(rows, ("title", "message", "model", "traceback"))
    _redact_fields([d for row in rows for d in row["deliveries"]], ("detail",))
    return rows


def outbox_payload(
    outbox: Outbox, channels: Sequence[Mapping[str, str]] = (), *, limit: int = 200
) -> dict[str, Any]:
    """``/api/outbox``: per channel counts, where it sends (masked), and the messages that
    did not arrive (pending, being sent or dead), newest first."""
    now = time.time()
    waiting = (PENDING, SENDING, DEAD)
    messages = [
        {**delivery_row(delivery, now), "title": event["title"], "run_id": event["run_id"]}
        | {"event_id": event["id"], "created": event["created"]}
        | {key: event[key] for key in ("event_type", "level")}
        for event in map(event_of, outbox.history(state=waiting, limit=limit))
        for delivery in event["deliveries"]
        if delivery["state"] in waiting
    ]
    return {
        "now": now,
        "counts": outbox.counts(),
        "channels": [{key: redact(value) for key, value in row.items()} for row in channels],
        "messages": _redact_fields(messages[:limit], ("title", "detail")),
    }


def delivery_row(delivery: Mapping[str, Any], now: float) -> dict[str, Any]:
    """One delivery with a ``label`` (delivered / pending / retrying / sending / dead, or an
    unknown state as it is) and a ``detail`` (not yet redacted: callers redact in bulk)."""
    state = str(delivery["state"])
    error = str(delivery.get("last_error") or "")
    label, detail = state, error
    if state == "pending" and (delivery.get("attempts") or 0) > 0:
        label = "retrying"
    elif state == "pending":
        detail = error or "not attempted yet"
    elif state == "dead":
        detail = error or "no reason recorded"
    return {
        "channel": delivery["channel"],
        "state": state,
        "label": label,
        "attempts": delivery.get("attempts"),
        "next_attempt": delivery.get("next_attempt"),
        "delivered_at": delivery.get("delivered_at"),
        "last_attempt": delivery.get("last_attempt"),
        "detail": detail,
    }


def redact_many(texts: Sequence[str]) -> list[str]:
    """:func:`redact` of each text, in one pass over them all (a page has hundreds).

    The texts are joined by a NUL, which no secret pattern spans; should a mask ever
    swallow one, each text is redacted alone instead.
    """
    if not texts:
        return []
    joined = redact("\x00".join(texts)).split("\x00")
    return joined if len(joined) == len(texts) else [redact(text) for text in texts]


def _redact_fields(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Redact the text ``keys`` of every row in one pass; returns ``rows``, changed in place."""
    spots = [(row, key) for row in rows for key in keys if isinstance(row.get(key), str)]
    for (row, key), text in zip(spots, redact_many([row[key] for row, key in spots]), strict=True):
        row[key] = text
    return rows


def latest_metric(state: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """The metric a person looks at first: the monitored one, else a loss, else any."""
    metrics = state.get("metrics") or {}
    if not isinstance(metrics, Mapping) or not metrics:
        return None, None
    names = [state.get("monitor"), "val_loss", "loss", "train_loss", *sorted(metrics)]
    for name in names:
        if name in metrics:
            return str(name), _number(metrics[name])
    return None, None


def non_finite(state: Mapping[str, Any]) -> str | None:
    """The run's first NaN/Inf in words, when it saw one: the tracker's own words, else
    (a run stored before it said them) the non-finite metrics it ended with."""
    said = state.get("non_finite")
    if said:
        return redact(str(said))
    metrics = state.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        return None
    bad = [
        name for name, value in metrics.items() if _metric_value(value) is not None and _number(value) is None
    ]
    return f"non-finite: {', '.join(map(str, bad))}" if bad else None


def _metric_value(value: Any) -> Any:
    """A stored metric as a float where it is one (``"nan"``, ``"inf"`` included)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def duration(state: Mapping[str, Any], now: float) -> float | None:
    """Seconds from start to end (or to the last update while it runs)."""
    started = _number(state.get("started_at"))
    if started is None:
        return None
    if state.get("status") in FINAL_STATUSES:
        end = _number(state.get("ended_at")) or _number(state.get("updated_at")) or started
    else:
        end = now
    return max(0.0, end - started)


def progress(state: Mapping[str, Any]) -> float | None:
    """Fraction done over steps when planned, else epochs (as RunState.progress)."""
    for done_key, total_key in (("step", "total_steps"), ("epoch", "total_epochs")):
        done, total = state.get(done_key), state.get(total_key)
        if isinstance(total, (int, float)) and total > 0 and isinstance(done, (int, float)):
            return float(min(1.0, max(0.0, done / total)))
    return None


def _number(value: Any) -> float | None:
    """A finite float, or None (NaN/Inf and the strings ``"nan"`` JSON stores them as)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# The outbox's rows as the pages show them ----------------------------------------------------


def state_of(run: RunState) -> dict[str, Any]:
    """A stored run state as a dict, ``killed`` when it claims to run here but its process
    is gone: the death watcher writes that itself when it can; a SIGKILLed run with no
    watcher left would otherwise show ``running`` for ever."""
    # Its fields as they are (to_dict would also turn NaN into text: every number shown
    # passes through _number, which reads both).
    state = {name: getattr(run, name) for name in _RUN_FIELDS}
    pid = state.get("pid")
    if state.get("status") != RUNNING or not isinstance(pid, int) or state.get("host") != _HOST:
        return state
    if not pid_exists(pid):
        return {**state, "status": "killed", "status_note": "its process is gone (seen by the dashboard)"}
    return state


_HOST = socket.gethostname()
_RUN_FIELDS = tuple(field.name for field in fields(RunState))


def event_of(entry: HistoryEntry) -> dict[str, Any]:
    """One event of the history with its deliveries, as the timeline shows it."""
    event = entry.event
    return {
        "id": event.id,
        "created": event.timestamp.timestamp(),
        "event_type": event.event_type.value,
        "level": event.level.value,
        "run_id": event.run_id,
        "title": event.title,
        "message": event.message,
        "model": event.context.get("model"),
        # A failure's whole traceback (its message carries the error and the user's frames).
        "traceback": event.context.get("traceback")
        if isinstance(event.context.get("traceback"), str)
        else None,
        "deliveries": [_delivery(delivery) for delivery in entry.deliveries],
    }


def _delivery(delivery: Delivery) -> dict[str, Any]:
    return {
        "channel": delivery.channel,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt": delivery.next_attempt,
        "last_attempt": delivery.last_attempt,
        "last_error": delivery.last_error,
        "delivered_at": delivery.delivered_at,
    }


def curves(outbox: Outbox, run_id: str) -> list[dict[str, Any]]:
    """A run's curves: ``[{"series", "axis", "x": [...], "y": [...]}]`` (y None = NaN)."""
    axes = outbox.series_axes(run_id)
    return [
        {
            "series": series,
            "axis": axes.get(series, "step"),
            "x": [x for x, _ in points],
            "y": [y for _, y in points],
        }
        for series, points in outbox.points(run_id).items()
    ]
