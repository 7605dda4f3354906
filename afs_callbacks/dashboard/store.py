"""Read-only access to the history database for the dashboard.

Every request opens its own connection with ``mode=ro``: under WAL a reader never blocks
the training process's writers, and a bug here cannot change the history. The one write
the dashboard makes, a retry, goes through :func:`afs_callbacks.cli._retry.requeue_dead`.

A missing file or one that is not an SQLite database raises :class:`StoreUnavailable`,
whose message names the file; the server turns it into a clear page, never a traceback.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from afs_callbacks.runstate import RUNNING

#: The file name the manager gives the outbox inside the state directory.
STORE_NAME = "outbox.sqlite3"


class StoreUnavailable(Exception):
    """The history database cannot be read: ``reason`` is ``missing`` or ``unreadable``."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        super().__init__(f"{detail}: {path}")
        self.path = path
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RunFilter:
    """What the runs list is narrowed to (every field optional)."""

    status: str = ""
    model: str = ""
    search: str = ""
    limit: int = 100


class Store:
    """The history database at ``path``, opened read-only per query batch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(Path(path).expanduser().absolute())

    def version(self) -> str:
        """Changes whenever anything is written: the sizes and modification times of the
        database and its WAL (every commit appends to the WAL; a checkpoint writes the file)."""
        parts = []
        for name in (self.path, self.path + "-wal"):
            try:
                stat = os.stat(name)
            except OSError:
                parts.append("-")
                continue
            parts.append(f"{stat.st_mtime_ns:x}.{stat.st_size:x}")
        return "-".join(parts)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read-only connection; raises :class:`StoreUnavailable` for a missing or bad file."""
        if not os.path.isfile(self.path):
            raise StoreUnavailable(self.path, "missing", "no history database yet")
        try:
            conn = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as error:
            raise StoreUnavailable(
                self.path, "unreadable", f"cannot open the history database ({error})"
            ) from None
        try:
            conn.execute("PRAGMA query_only = ON")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            yield Connection(conn, tables)
        except sqlite3.DatabaseError as error:
            raise StoreUnavailable(
                self.path, "unreadable", f"the history database cannot be read ({error})"
            ) from None
        finally:
            conn.close()


class Connection:
    """Queries over one read-only connection; a table the file lacks reads as empty."""

    def __init__(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        self._conn = conn
        self._tables = tables

    def _indexed(self, table: str, column: str) -> bool:
        """Whether an index of ``table`` starts with ``column``."""
        rows = self._conn.execute(
            "SELECT 1 FROM sqlite_master m, pragma_index_info(m.name) i"
            " WHERE m.type = 'index' AND m.tbl_name = ? AND i.seqno = 0 AND i.name = ?",
            (table, column),
        ).fetchall()
        return bool(rows)

    def _rows(self, table: str, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        if table not in self._tables:
            return []
        return self._conn.execute(sql, params).fetchall()

    # Runs ---------------------------------------------------------------------------

    def runs(self, where: RunFilter) -> list[dict[str, Any]]:
        """Runs matching ``where``, newest first, each its stored RunState as a dict."""
        clauses: list[str] = []
        params: list[Any] = []
        if where.status:
            clauses.append("status = ?")
            params.append(where.status)
        if where.model:
            clauses.append("model = ?")
            params.append(where.model)
        if where.search:
            clauses.append("run_id LIKE ? ESCAPE '\\'")
            params.append("%" + _like_escape(where.search) + "%")
        sql = "SELECT state FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        params.append(where.limit)
        return [_state(row[0]) for row in self._rows("runs", sql, params)]

    def run_facets(self) -> dict[str, Any]:
        """The models and statuses present, and how many runs there are (for the filters)."""
        counts = self._rows("runs", "SELECT status, COUNT(*) FROM runs GROUP BY status")
        models = self._rows("runs", "SELECT DISTINCT model FROM runs WHERE model IS NOT NULL ORDER BY model")
        return {
            "statuses": {status: count for status, count in counts},
            "models": [row[0] for row in models],
            "total": sum(count for _, count in counts),
        }

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run's stored state, or None."""
        rows = self._rows("runs", "SELECT state FROM runs WHERE run_id = ?", (run_id,))
        return _state(rows[0][0]) if rows else None

    def points(self, run_id: str) -> list[dict[str, Any]]:
        """A run's curves: ``[{"series", "axis", "x": [...], "y": [...]}]`` (y None = NaN)."""
        rows = self._rows(
            "points", "SELECT series, axis, x, y FROM points WHERE run_id = ? ORDER BY series, x", (run_id,)
        )
        curves = []
        for (name, axis), group in itertools.groupby(rows, key=operator.itemgetter(0, 1)):
            _, _, xs, ys = zip(*group, strict=True)
            curves.append({"series": name, "axis": axis, "x": list(xs), "y": list(ys)})
        return curves

    # Events and deliveries ----------------------------------------------------------

    def events(
        self,
        *,
        run_id: str | None = None,
        window: tuple[float, float | None] | None = None,
        limit: int = 300,
    ) -> list[dict[str, Any]]:
        """Events (of one run, or all) newest first, each with its ``deliveries`` list.

        ``window`` (from, until or None) is when the run's events can have been created:
        it lets SQLite walk the ``created`` index instead of every event when the
        history has no index on ``run_id``.
        """
        sql = "SELECT id, created, event_type, level, run_id, title, payload FROM events"
        clauses: list[str] = []
        params: list[Any] = []
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(run_id)
        if window is not None and not self._indexed("events", "run_id"):
            clauses.append("created >= ?")
            params.append(window[0])
            if window[1] is not None:
                clauses.append("created <= ?")
                params.append(window[1])
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created DESC LIMIT ?"
        params.append(limit)
        events = [_event(row) for row in self._rows("events", sql, params)]
        self._attach_deliveries(events)
        return events

    def _attach_deliveries(self, events: list[dict[str, Any]]) -> None:
        by_id = {event["id"]: event for event in events}
        for start in range(0, len(events), 500):  # SQLite's bound-parameter limit
            ids = [event["id"] for event in events[start : start + 500]]
            marks = ",".join("?" * len(ids))
            for row in self._rows(
                "deliveries",
                "SELECT event_id, channel, state, attempts, next_attempt, last_attempt, last_error,"
                f" delivered_at FROM deliveries WHERE event_id IN ({marks}) ORDER BY channel",
                ids,
            ):
                by_id[row[0]]["deliveries"].append(_delivery(row[1:]))

    def outbox(self, *, limit: int = 200) -> dict[str, Any]:
        """Counts per channel and state, and the undelivered (not delivered) messages."""
        counts: dict[str, dict[str, int]] = {}
        for channel, state, count in self._rows(
            "deliveries", "SELECT channel, state, COUNT(*) FROM deliveries GROUP BY channel, state"
        ):
            counts.setdefault(channel, {})[state] = count
        channels = list(counts)
        # Naming the channels lets SQLite use the (channel, state, ...) index the senders
        # use, instead of reading every delivery ever made.
        marks = ",".join("?" * len(channels))
        waiting = self._rows(
            "deliveries",
            "SELECT d.event_id, e.created, e.event_type, e.level, e.run_id, e.title, d.channel, d.state,"
            " d.attempts, d.next_attempt, d.last_attempt, d.last_error, d.delivered_at"
            " FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE d.channel IN ({marks}) AND d.state IN ('pending', 'sending', 'dead')"
            " ORDER BY e.created DESC LIMIT ?",
            (*channels, limit),
        )
        messages = [
            {
                "event_id": row[0],
                "created": row[1],
                "event_type": row[2],
                "level": row[3],
                "run_id": row[4],
                "title": row[5],
                **_delivery(row[6:]),
            }
            for row in waiting
        ]
        return {"counts": counts, "messages": messages}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _state(text: str) -> dict[str, Any]:
    try:
        state = json.loads(text)
    except ValueError:
        return {"run_id": "?", "model": "?", "status": "unreadable"}
    if not isinstance(state, dict):
        return {"run_id": "?", "model": "?", "status": "unreadable"}
    return _with_liveness(state)


def _with_liveness(state: dict[str, Any]) -> dict[str, Any]:
    """Mark a run ``killed`` when it claims to run here but its process is gone.

    The death watcher writes that itself when it can; a SIGKILLed run with no watcher
    left would otherwise show ``running`` for ever.
    """
    pid = state.get("pid")
    if state.get("status") != RUNNING or not isinstance(pid, int) or state.get("host") != _HOST:
        return state
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return {**state, "status": "killed", "status_note": "its process is gone (seen by the dashboard)"}
    except OSError:  # alive but someone else's
        pass
    return state


_HOST = socket.gethostname()


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    event_id, created, event_type, level, run_id, title, payload = row
    try:
        data = json.loads(payload)
    except ValueError:
        data = {}
    context = data.get("context") if isinstance(data, dict) else None
    context = context if isinstance(context, dict) else {}
    return {
        "id": event_id,
        "created": created,
        "event_type": event_type,
        "level": level,
        "run_id": run_id,
        "title": title,
        "message": data.get("message", "") if isinstance(data, dict) else "",
        "model": context.get("model"),
        "deliveries": [],
    }


def _delivery(row: tuple[Any, ...]) -> dict[str, Any]:
    channel, state, attempts, next_attempt, last_attempt, last_error, delivered_at = row
    return {
        "channel": channel,
        "state": state,
        "attempts": attempts,
        "next_attempt": next_attempt if state == "pending" else None,
        "last_attempt": last_attempt,
        "last_error": last_error,
        "delivered_at": delivered_at,
    }
