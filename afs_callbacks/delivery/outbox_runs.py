"""The outbox's run tables: each run's latest state, its metric points and its live cards.

The history, the dashboard and the live run cards read them; the writer thread writes them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from afs_callbacks.delivery.outbox_base import OutboxBase
from afs_callbacks.runstate import MetricPoint, RunState

#: At most this many points are kept per (run, series); beyond it every other one goes.
MAX_POINTS_PER_SERIES = 2000


class RunTables(OutboxBase):
    """Runs, points and cards (part of :class:`~afs_callbacks.delivery.outbox.Outbox`)."""

    def save_run(self, state: RunState, points: Sequence[MetricPoint] = ()) -> None:
        """Store the latest state of a run and append its new metric points.

        A series over :data:`MAX_POINTS_PER_SERIES` keeps every other point: the curve's
        shape survives, the table stays bounded.
        """
        payload = json.dumps(state.to_dict(), separators=(",", ":"), allow_nan=False)
        with self._transaction(immediate=True) as conn:
            conn.execute(
                "INSERT INTO runs (run_id, model, host, pid, status, started_at, updated_at, ended_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
                " model = excluded.model, host = excluded.host, pid = excluded.pid,"
                " status = excluded.status, started_at = COALESCE(runs.started_at, excluded.started_at),"
                " updated_at = excluded.updated_at, ended_at = excluded.ended_at, state = excluded.state",
                (
                    state.run_id,
                    state.model,
                    state.host,
                    state.pid,
                    state.status,
                    state.started_at,
                    state.updated_at,
                    state.ended_at,
                    payload,
                ),
            )
            if not points:
                return
            conn.executemany(
                "INSERT OR REPLACE INTO points (run_id, series, axis, x, y) VALUES (?, ?, ?, ?, ?)",
                [
                    (state.run_id, p.series, p.axis, float(p.x), p.y if math.isfinite(p.y) else None)
                    for p in points
                ],
            )
            for (series,) in {(p.series,) for p in points}:
                count = conn.execute(
                    "SELECT COUNT(*) FROM points WHERE run_id = ? AND series = ?", (state.run_id, series)
                ).fetchone()[0]
                if count > MAX_POINTS_PER_SERIES:
                    conn.execute(
                        "DELETE FROM points WHERE run_id = ? AND series = ? AND x IN (SELECT x FROM"
                        " (SELECT x, ROW_NUMBER() OVER (ORDER BY x) AS n FROM points"
                        "  WHERE run_id = ? AND series = ?) WHERE n % 2 = 0)",
                        (state.run_id, series, state.run_id, series),
                    )

    def run(self, run_id: str) -> RunState | None:
        """The stored state of one run."""
        with self._lock:
            row = self._connection().execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else RunState.from_dict(json.loads(row[0]))

    def runs(self, *, limit: int = 100, status: str | None = None) -> list[RunState]:
        """Runs, newest first (optionally of one status)."""
        sql = "SELECT state FROM runs"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY started_at DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        return [RunState.from_dict(json.loads(row[0])) for row in rows]

    def points(self, run_id: str) -> dict[str, list[tuple[float, float | None]]]:
        """A run's curves: series name -> [(x, y)] in x order (y None where it was NaN/Inf)."""
        result: dict[str, list[tuple[float, float | None]]] = {}
        with self._lock:
            rows = self._connection().execute(
                "SELECT series, x, y FROM points WHERE run_id = ? ORDER BY series, x", (run_id,)
            )
            for series, x, y in rows:
                result.setdefault(series, []).append((x, y))
        return result

    def card_id(self, run_id: str, channel: str) -> str | None:
        """The message id of a run's live card on ``channel``, if one was posted."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT message_id FROM cards WHERE run_id = ? AND channel = ?", (run_id, channel))
                .fetchone()
            )
        return None if row is None else str(row[0])

    def save_card_id(self, run_id: str, channel: str, message_id: str) -> None:
        """Remember the message a run's card lives in (a resumed run edits the same one)."""
        self._finish(
            "INSERT OR REPLACE INTO cards (run_id, channel, message_id, updated_at) VALUES (?, ?, ?, ?)",
            (run_id, channel, message_id, time.time()),
        )

    def forget_card(self, run_id: str, channel: str) -> None:
        """Drop a card's message id (someone deleted the message: the next edit posts anew)."""
        self._finish("DELETE FROM cards WHERE run_id = ? AND channel = ?", (run_id, channel))
