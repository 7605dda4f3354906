"""How the tracker reports: events through the rank policy, snapshots, NaN windows,
the monitored metric's verdicts, stalls and the chart."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from afs_callbacks import messages
from afs_callbacks._log import get_logger
from afs_callbacks.events import (
    DEFAULT_LEVELS,
    Attachment,
    EventType,
    NotificationEvent,
    NotificationLevel,
    _new_id,
)
from afs_callbacks.runstate import STALLED
from afs_callbacks.tracking.facts import _EVENT_FIELDS, _NEVER, SNAPSHOT_INTERVAL, RunFacts
from afs_callbacks.tracking.metrics import Change
from afs_callbacks.tracking.nan import Window
from afs_callbacks.tracking.ranks import shared_event_id
from afs_callbacks.tracking.values import floats

log = get_logger(__name__)

#: Shortest time between two snapshots for news (see ``Reporting._snapshot_soon``).
SNAPSHOT_MIN_GAP = 0.5
#: Longest wait for the loss windows being read, where the last verdict is needed (a
#: device read that takes longer is stuck behind a long GPU queue or a broken device).
WINDOW_WAIT_SECONDS = 10.0


class Reporting(RunFacts):
    """Turning the run's facts into events and snapshots (internal to the tracker)."""

    def _emit(
        self,
        event_type: EventType,
        text: messages.Message,
        *,
        rank_any: bool = False,
        attachments: tuple[Attachment, ...] = (),
        level: NotificationLevel | None = None,
        key: str | None = None,
        **context: Any,
    ) -> None:
        """Hand one event to the sink, if this rank speaks for it (see ranks.py)."""
        event = self._event(
            event_type, text, rank_any=rank_any, attachments=attachments, level=level, key=key, **context
        )
        if event is not None:
            sink = self.manager
            hand_over = getattr(sink, "post", None) or sink.emit  # post: admitted off this thread
            hand_over(event)

    def _event(
        self,
        event_type: EventType,
        text: messages.Message,
        *,
        rank_any: bool = False,
        attachments: tuple[Attachment, ...] = (),
        level: NotificationLevel | None = None,
        key: str | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """The event as it would be handed over; None when this rank does not speak for it."""
        ranks = self._ranks
        if not ranks.speaks(rank_any):
            return None
        base: dict[str, Any] = {"model": self.model_name, "run_id": self._run_id}
        if not ranks.is_global_zero:
            base["rank"] = ranks.rank
        fields = {name: value for name, value in {**base, **context}.items() if value is not None}
        extra: dict[str, Any] = {}
        if key is not None:
            # The event's own field once the core has it; until then, the context's.
            if "key" in _EVENT_FIELDS:
                extra["key"] = key
            else:
                fields["key"] = key
        # A rank-any event's id is shared by every rank; any other is fresh from the events
        # module's own generator (never the ``random`` the training code seeds).
        extra["id"] = shared_event_id(self._run_id, self._attempt, event_type) if rank_any else _new_id()
        level = level or DEFAULT_LEVELS[event_type]
        return NotificationEvent(event_type, level, text.title, text.body, fields, attachments, **extra)

    def _snapshot(self, status: str | None = None) -> None:
        """Hand the run's state and new points to the sink's ``update_run`` (global rank
        zero while running; any rank for its own end). Never raises."""
        update = self._update_run
        if update is None:
            self._next_snapshot = _NEVER
            return
        now = time.monotonic()
        self._next_snapshot = now + SNAPSHOT_INTERVAL
        self._snapshot_at = now
        try:
            update(self.state(status), self._curves.take_pending())
        except Exception:
            log.exception("afs-callbacks: could not hand over the run's state")

    def _snapshot_soon(self) -> None:
        """A snapshot for news (an epoch, an evaluation, a checkpoint): now, or, when one
        went out less than :data:`SNAPSHOT_MIN_GAP` ago, from the step hook once the gap
        has passed (a run of 20 epochs a second hands over a few states, not 20). The
        points gathered meanwhile go with it; the run's end always sends one at once."""
        gap_ends = self._snapshot_at + SNAPSHOT_MIN_GAP
        if time.monotonic() >= gap_ends:
            self._snapshot()
        elif self._update_run is not None:
            self._next_snapshot = min(self._next_snapshot, gap_ends)

    def _report_nan(self, step: int, what: str) -> None:
        with self._lock:
            if self._nan_reported:
                return
            self._nan_reported = True
        if self._config.stop_on_nan:
            self._stop_requested = True
        text = messages.nan_detected(
            self.model_name, what, step, self._epoch_number(), will_stop=self._config.stop_on_nan
        )
        self._emit(
            EventType.NAN_DETECTED, text, step=step, epoch=self._epoch_number(), metric=what, rank_any=True
        )

    def _read_window(self, *, wait: bool = False) -> None:
        """Hand the loss window to the reader thread and take the verdicts already in; with
        ``wait``, every verdict. With ``stop_on_nan`` the window is read here: the run must
        stop at the check."""
        pending = self._accumulator.take()
        if self._config.stop_on_nan:
            if pending is not None:
                self._reads.read_here(pending)
            wait = True
        elif pending is not None:
            self._reads.submit(pending)
        self._take_windows(self._reads.wait(WINDOW_WAIT_SECONDS) if wait else self._reads.ready())

    def _take_windows(self, windows: list[Window]) -> None:
        for window in windows:
            if window.saw_non_finite:
                self._report_nan(window.last_step, "loss")
            elif window.mean_loss is not None:
                self._curves.add_loss(window.last_step, window.mean_loss)

    def _batch_processed(self, step: int) -> None:
        self._read_window(wait=True)
        losses = self._curves.losses
        loss = losses[-1][1] if losses else None
        self._emit(
            EventType.BATCH_PROCESSED,
            messages.batch_processed(self.model_name, step, loss),
            step=step,
            epoch=self._epoch_number(),
            metrics={"loss": loss} if loss is not None else None,
            key=f"step-{step}",
        )

    def _observe(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Record metrics; report NaN and improvement/degradation of the monitored one."""
        values = floats(metrics)
        self._record.last_metrics.update(values)
        epoch = self._epoch_number()
        x, axis = (epoch, "epoch") if epoch is not None else (self._last_step, "step")
        for metric, number in values.items():
            self._curves.add_metric(metric, x, number, axis)
        verdict = self._metric.observe(values, epoch)
        name = verdict.name or "metric"
        common: dict[str, Any] = {
            "epoch": epoch,
            "step": self._last_step,
            "key": f"{name}-{epoch}-{self._last_step}",
        }
        if verdict.change is Change.NON_FINITE:
            self._report_nan(self._last_step, name)
        elif verdict.change is Change.IMPROVED:
            text = messages.metric_improved(self.model_name, name, verdict.previous_best, verdict.value)
            self._emit(EventType.LOSS_IMPROVED, text, metrics={name: verdict.value}, **common)
        elif verdict.change is Change.DEGRADED:
            text = messages.metric_degraded(
                self.model_name, name, verdict.value, verdict.previous_best, verdict.stale_count
            )
            best = {name: verdict.value, f"best_{name}": verdict.previous_best}
            self._emit(EventType.LOSS_DEGRADED, text, metrics=best, **common)
        return values

    def _stalled(self, idle: float) -> None:
        if self._finished:  # the run ended while the watchdog was waking up
            return
        self._emit(
            EventType.TRAINING_STALLED,
            messages.training_stalled(self.model_name, idle, self._last_step),
            step=self._last_step,
            idle_seconds=round(idle, 1),
            rank_any=True,
        )
        self._snapshot(STALLED)

    def _chart(self) -> Attachment | None:
        # Imported here: matplotlib is optional and only needed once, at the end of a run.
        from afs_callbacks.tracking.charts import loss_chart

        return loss_chart(
            self._curves.losses, self._curves.metrics, title=f"{self.model_name}: training loss"
        )
