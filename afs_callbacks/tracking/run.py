"""The facts of one run that are not on the per-step path, and what is derived from them:
throughput, ETA, the completion summary and the :class:`RunState`.

Counters the step hook touches live on the tracker itself (one attribute each); this
record holds the rest, read at epoch boundaries, snapshots and the end. The end's facts
(its outcome, its duration, when it ended) are fixed once, when the run ends, and every
surface derives its numbers from them: the completion's "12.6s, 77.2 steps/s" and the
card's are the same figures.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from afs_callbacks.messages import NonFinite, Summary
from afs_callbacks.outcome import Outcome
from afs_callbacks.runstate import RUNNING, RunState
from afs_callbacks.tracking.ending import reason_words
from afs_callbacks.tracking.values import one_per_metric


@dataclass
class RunRecord:
    """What is known about a run beyond its step counters.

    Epoch fields are 1-based counts of finished epochs (``epochs_done``) as people read
    them; ``best_epoch`` too.
    """

    started_wall: float | None = None
    planned_epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    samples_per_step: int | None = None  # batch size x accumulated batches, when known
    world_size: int | None = None
    output_dir: str | None = None
    epochs_done: int | None = None
    epochs_seen: int = 0
    evaluations_seen: int = 0
    checkpoints_seen: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    status: str = RUNNING
    outcome: Outcome | None = None
    end_reason: str | None = None
    #: Seconds from the start to the end, and the end's wall time: fixed once, at the end.
    end_duration: float | None = None
    ended_wall: float | None = None
    error_type: str | None = None
    error: str | None = None
    non_finite: NonFinite | None = None
    summary_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)  # what the run's control shows

    def end(self, outcome: Outcome, duration: float) -> None:
        """Fix the end's facts: its outcome (the run's status from now on), its duration
        and when it ended."""
        self.outcome, self.status, self.end_duration = outcome, outcome.value, duration
        self.ended_wall = None if self.started_wall is None else self.started_wall + duration

    def plan(
        self,
        *,
        epochs: int | None,
        max_steps: int | None,
        batch_size: int | None,
        world_size: int | None,
        output_dir: str | None,
        samples_per_step: int | None = None,
    ) -> None:
        """What the run is set to do (a second start only updates it)."""
        self.planned_epochs = epochs if epochs and epochs > 0 else None
        self.max_steps = max_steps if max_steps and max_steps > 0 else None
        self.batch_size = batch_size
        self.samples_per_step = samples_per_step if samples_per_step and samples_per_step > 0 else None
        self.world_size = world_size
        self.output_dir = output_dir


def samples_per_step(record: RunRecord) -> int:
    """Samples one optimizer step consumes in this process: the batch size times the
    batches accumulated into the step (0 when unknown)."""
    return record.samples_per_step or record.batch_size or 0


def per_second(count: int, duration: float) -> float | None:
    """``count`` per second over ``duration``, rounded; None before any time passed."""
    return round(count / duration, 3) if duration > 0 and count else None


def rates(record: RunRecord, steps: int, duration: float) -> tuple[float | None, float | None]:
    """(steps per second, samples per second) over ``duration``; samples only when counted."""
    samples = steps * samples_per_step(record)
    return per_second(steps, duration), per_second(samples, duration) if samples else None


def eta_seconds(record: RunRecord, step: int, steps: int, duration: float) -> float | None:
    """Seconds to the planned end at the throughput so far (steps, else epochs)."""
    if duration <= 0:
        return None
    if record.max_steps and steps:
        rate = steps / duration
        return max(0.0, round((record.max_steps - step) / rate, 1))
    if record.planned_epochs and record.epochs_done:
        per_epoch = duration / record.epochs_seen if record.epochs_seen else None
        if per_epoch:
            return max(0.0, round((record.planned_epochs - record.epochs_done) * per_epoch, 1))
    return None


def summary_of(
    record: RunRecord,
    *,
    duration: float,
    steps: int,
    monitor: str | None,
    best: float | None,
    best_epoch: int | None,
    extra_lines: list[str],
) -> Summary:
    """The completion summary's parts."""
    steps_rate, samples_rate = rates(record, steps, duration)
    return Summary(
        duration=duration,
        final=one_per_metric(record.last_metrics, keep=monitor),
        monitor=monitor,
        best=best,
        best_epoch=best_epoch,
        best_checkpoint=record.best_checkpoint,
        epochs_run=record.epochs_done,
        total_epochs=record.planned_epochs,
        steps_per_second=steps_rate,
        samples_per_second=samples_rate,
        end_reason=record.end_reason,
        reason_text=reason_words(record.end_reason),
        extra_lines=tuple(extra_lines),
    )


def build_state(
    record: RunRecord,
    *,
    run_id: str,
    model: str,
    step: int,
    steps: int,
    duration: float,
    monitor: str | None,
    best: float | None,
    best_epoch: int | None,
    monitors: dict[str, Any],
    last_step_at: float | None = None,
) -> RunState:
    """A snapshot of the run now (an ended run's: at its end, whenever it is taken;
    ``last_step_at``: wall time of the last progress)."""
    now = time.time()
    final = record.outcome is not None and record.status == record.outcome.value
    if final and record.end_duration is not None:
        duration = record.end_duration
    steps_rate, samples_rate = rates(record, steps, duration)
    return RunState(
        run_id=run_id,
        model=model,
        host=_host(),
        pid=os.getpid(),
        status=record.status,
        started_at=record.started_wall,
        updated_at=now,
        ended_at=(record.ended_wall or now) if final else None,
        last_step_at=last_step_at,
        epoch=record.epochs_done,
        total_epochs=record.planned_epochs,
        step=step,
        total_steps=record.max_steps,
        steps_per_second=steps_rate,
        samples_per_second=samples_rate,
        eta_seconds=None if final else eta_seconds(record, step, steps, duration),
        metrics=one_per_metric(record.last_metrics, keep=monitor),
        monitor=monitor,
        best=best,
        best_epoch=best_epoch,
        last_checkpoint=record.last_checkpoint,
        best_checkpoint=record.best_checkpoint,
        peak_gpu_memory=_peak_gpu_bytes(monitors),
        gpu_utilization=_number(monitors.get("gpu_utilization")),
        cost=_number(monitors.get("cost")),
        end_reason=record.end_reason,
        error_type=record.error_type,
        error=record.error,
        non_finite=None if record.non_finite is None else record.non_finite.words(),
        summary=record.summary_text,
        extra=dict(record.extra),
        control=dict(record.control),
    )


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _peak_gpu_bytes(monitors: dict[str, Any]) -> float | None:
    """The highest peak memory (bytes) of any GPU the monitors watched."""
    peaks = monitors.get("peak_gpu_memory")
    if not isinstance(peaks, dict):
        return None
    values = [_number(item.get("peak_bytes")) for item in peaks.values() if isinstance(item, dict)]
    known = [value for value in values if value is not None]
    return max(known) if known else None


__all__ = [
    "RunRecord",
    "build_state",
    "eta_seconds",
    "per_second",
    "rates",
    "samples_per_step",
    "summary_of",
]
