"""What a run looks like right now: the snapshot behind live run cards and the dashboard.

The tracker builds a :class:`RunState` on the training thread (cheap: a frozen value of
numbers it holds anyway) and hands it, with the metric points gathered since the previous
snapshot, to its sink's ``update_run``. The manager stores it off the training thread in
the ``runs`` and ``points`` tables (latest wins per run), card workers render it, and the
dashboard reads it back. Everything in it is JSON-safe.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from afs_callbacks.events import _json_safe, _restore_non_finite
from afs_callbacks.outcome import RUNNING, STALLED, Outcome

#: The statuses of an ended run are the :class:`~afs_callbacks.outcome.Outcome` values;
#: these names keep the four older ones at hand.
COMPLETED = Outcome.COMPLETED.value
FAILED = Outcome.FAILED.value
INTERRUPTED = Outcome.INTERRUPTED.value
KILLED = Outcome.KILLED.value  # the process vanished without a terminal event (the death watcher)
#: Run statuses, as cards, the history and the dashboard show them: a live run's
#: (``running``, ``stalled``), then every outcome.
STATUSES = (RUNNING, STALLED, *(outcome.value for outcome in Outcome))
#: Statuses after which a run does not change any more (a stalled run may resume).
FINAL_STATUSES = frozenset(outcome.value for outcome in Outcome)


@dataclass(frozen=True)
class MetricPoint:
    """One point of a curve: ``series`` (``loss``, ``val_loss``, ``gpu_memory``...) at ``x``.

    ``x`` is the optimizer step for step-level series and the epoch for epoch-level ones;
    ``axis`` says which (``"step"`` or ``"epoch"``).
    """

    series: str
    x: float
    y: float
    axis: str = "step"


@dataclass(frozen=True)
class RunState:
    """A run's current state. Times are epoch seconds (UTC); absent facts are None.

    Args:
        run_id: the run's id (the same across resumes and DDP ranks).
        model: the model name shown everywhere.
        host: the machine the run trains on.
        pid: the training process (the death watcher checks it).
        status: one of :data:`STATUSES`: ``running`` or ``stalled`` while it runs, its
            :class:`~afs_callbacks.outcome.Outcome` value once it ended.
        started_at / updated_at / ended_at: when the run began, this snapshot, the end.
        last_step_at: when the run last made progress (a training step, or an evaluation
            batch: what keeps the stall watchdog quiet); a stall is measured from it.
        epoch / total_epochs: 1-based epochs done and planned.
        step / total_steps: optimizer steps done and planned.
        steps_per_second / samples_per_second: throughput so far.
        eta_seconds: estimated time to the planned end.
        metrics: latest value of each metric.
        monitor / best / best_epoch: the monitored metric, its best value and that epoch.
        last_checkpoint / best_checkpoint: paths.
        peak_gpu_memory / gpu_utilization / cost: from the monitors, when they know.
        end_reason: why the run ended (``max_epochs``, ``early_stopping``, ...).
        error_type / error: the exception type and its last line, on failure.
        non_finite: the first NaN/Inf the run saw, in words (``"loss became Inf at
            step 3 (epoch 1)"``); None while all was finite.
        summary: the completion summary text.
        extra: framework facts (SLURM job id, strategy, ...).
        control: what the run's control tells (``afs_callbacks.control``): ``accepts``, the
            surfaces it takes commands from, and ``recent``, its latest commands (action,
            source, actor, at, state, detail), shown on the card and the dashboard.
    """

    run_id: str
    model: str
    host: str = ""
    pid: int | None = None
    status: str = RUNNING
    started_at: float | None = None
    updated_at: float | None = None
    ended_at: float | None = None
    last_step_at: float | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    steps_per_second: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False)
    monitor: str | None = None
    best: float | None = None
    best_epoch: int | None = None
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    peak_gpu_memory: float | None = None
    gpu_utilization: float | None = None
    cost: float | None = None
    end_reason: str | None = None
    error_type: str | None = None
    error: str | None = None
    non_finite: str | None = None
    summary: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    control: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def final(self) -> bool:
        """Whether the run has ended."""
        return self.status in FINAL_STATUSES

    @property
    def outcome(self) -> Outcome | None:
        """How the run ended; None while it runs (or for a status no outcome names)."""
        if self.status not in FINAL_STATUSES:
            return None
        return Outcome(self.status)

    @property
    def progress(self) -> float | None:
        """Fraction done (0..1) over steps when planned, else epochs; None when unknown."""
        if self.total_steps and self.step is not None:
            return min(1.0, max(0.0, self.step / self.total_steps))
        if self.total_epochs and self.epoch is not None:
            return min(1.0, max(0.0, self.epoch / self.total_epochs))
        return None

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-safe values (NaN metrics as strings, as events do)."""
        # Fields one level deep (``asdict`` would deep-copy every value on the way): the
        # writer thread turns a state into a row at every snapshot.
        return dict(_json_safe({name: getattr(self, name) for name in _state_fields()}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunState:
        """Rebuild a state written by :meth:`to_dict`; unknown keys are ignored (newer writers)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if isinstance(values.get("metrics"), Mapping):
            values["metrics"] = _restore_non_finite(values["metrics"])
        return cls(**values)


def run_token(run_id: str) -> str:
    """A short, fixed token for a run (16 hex digits): chat buttons carry it where a run id
    may be too long (Telegram's ``callback_data`` holds 64 bytes)."""
    return hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:16]


def commands_from(state: RunState) -> tuple[str, ...]:
    """The surfaces a run takes commands from, as its own process published them in
    ``state.control["accepts"]`` (``afs_callbacks.control``); empty: none."""
    value = state.control.get("accepts") if isinstance(state.control, Mapping) else None
    return tuple(str(item) for item in value) if isinstance(value, (list, tuple)) else ()


@functools.lru_cache(maxsize=1)
def _state_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(RunState))


__all__ = [
    "COMPLETED",
    "FAILED",
    "FINAL_STATUSES",
    "INTERRUPTED",
    "KILLED",
    "RUNNING",
    "STALLED",
    "STATUSES",
    "MetricPoint",
    "RunState",
    "commands_from",
    "run_token",
]
