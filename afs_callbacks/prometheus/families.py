"""The series afs-callbacks shows Prometheus: the one owner of their names and labels.

Both ways in (node exporter's textfile collector and ``afs-notify exporter``) build their
output here, from the same :class:`~afs_callbacks.runstate.RunState` values the dashboard
reads and the outbox's :class:`~afs_callbacks.delivery.outbox.ChannelHealth`, with
``prometheus_client``'s metric families (never a hand-written exposition format).

Per run (labels ``run_id``, ``model``, ``host``; the same for the whole run, so a curve is
one series from start to end):

=============================================  ==========================================
series                                          value
=============================================  ==========================================
``afs_run_info``                                1, with ``status`` (``running``,
                                                ``stalled``, ``ended``), ``outcome`` (how it
                                                ended: :class:`~afs_callbacks.outcome.Outcome`,
                                                empty while live) and ``slurm_job``
``afs_run_step`` / ``afs_run_planned_steps``    optimizer steps done / planned
``afs_run_epoch`` / ``afs_run_planned_epochs``  epochs done / planned
``afs_run_progress_ratio``                      fraction done, 0 to 1
``afs_run_steps_per_second``                    steps per second so far
``afs_run_samples_per_second``                  samples per second so far
``afs_run_eta_seconds``                         time left to the planned end
``afs_run_started_timestamp_seconds``           when the run began
``afs_run_last_step_timestamp_seconds``         its last progress (a stall is measured
                                                from it)
``afs_run_heartbeat_timestamp_seconds``         when its process was last seen alive (live
                                                runs only: a stale one is a run that died)
``afs_run_ended_timestamp_seconds``             when it ended
``afs_run_metric{metric}``                      each metric's latest value (NaN stays NaN)
``afs_run_monitor_value{metric}``               the monitored metric's latest value
``afs_run_monitor_best{metric}``                its best value so far
``afs_run_gpu_memory_peak_bytes``               the highest GPU memory any device reached
=============================================  ==========================================

Per outbox (label ``store``, the state folder) and channel (label ``channel``):
``afs_outbox_up`` (1 when the store could be read), ``afs_outbox_deliveries{state}``
(deliveries per state: pending, sending, delivered, dead, superseded, folded),
``afs_outbox_retrying`` (waiting for another attempt after a failure),
``afs_outbox_failing_since_timestamp_seconds`` (when the oldest of those was accepted),
``afs_outbox_last_delivered_timestamp_seconds`` and
``afs_outbox_last_dead_timestamp_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from afs_callbacks.delivery.outbox import STATES, ChannelHealth
from afs_callbacks.outcome import LIVE_STATUSES, Outcome
from afs_callbacks.runstate import RunState

#: The labels of every per-run series: stable for the whole run.
RUN_LABELS = ("run_id", "model", "host")
#: ``afs_run_info``'s ``status`` once a run has ended (its ``outcome`` says how).
ENDED = "ended"


@dataclass(frozen=True)
class RunSample:
    """A run's state and when its process was last known alive (None: not known)."""

    state: RunState
    heartbeat: float | None = None


#: Per-run gauges: (name, help, the value of a state).
_RUN_GAUGES: tuple[tuple[str, str, Callable[[RunState], float | None]], ...] = (
    ("afs_run_step", "Optimizer steps done.", lambda s: s.step),
    ("afs_run_planned_steps", "Optimizer steps planned (max_steps).", lambda s: s.total_steps),
    ("afs_run_epoch", "Epochs done.", lambda s: s.epoch),
    ("afs_run_planned_epochs", "Epochs planned.", lambda s: s.total_epochs),
    ("afs_run_progress_ratio", "Fraction of the planned run done, 0 to 1.", lambda s: s.progress),
    ("afs_run_steps_per_second", "Optimizer steps per second so far.", lambda s: s.steps_per_second),
    ("afs_run_samples_per_second", "Samples per second so far.", lambda s: s.samples_per_second),
    ("afs_run_eta_seconds", "Seconds left to the planned end (live runs).", lambda s: s.eta_seconds),
    ("afs_run_started_timestamp_seconds", "When the run began.", lambda s: s.started_at),
    (
        "afs_run_last_step_timestamp_seconds",
        "When the run last made progress (a step or an evaluation batch).",
        lambda s: _last_step(s),
    ),
    ("afs_run_ended_timestamp_seconds", "When the run ended.", lambda s: s.ended_at),
    (
        "afs_run_gpu_memory_peak_bytes",
        "The highest GPU memory any of the run's devices reached.",
        lambda s: s.peak_gpu_memory,
    ),
)


def run_families(samples: Iterable[RunSample]) -> list[Metric]:
    """The per-run families of ``samples`` (each run once; an empty family has no sample)."""
    info = InfoMetricFamily("afs_run", "A training run: where it runs and how it stands.", labels=RUN_LABELS)
    gauges = {name: GaugeMetricFamily(name, text, labels=RUN_LABELS) for name, text, _ in _RUN_GAUGES}
    heartbeat = GaugeMetricFamily(
        "afs_run_heartbeat_timestamp_seconds",
        "When the live run's process was last seen alive.",
        labels=RUN_LABELS,
    )
    by_metric = ("metric", *RUN_LABELS)
    metric = GaugeMetricFamily("afs_run_metric", "Each metric's latest value.", labels=by_metric)
    monitored = GaugeMetricFamily(
        "afs_run_monitor_value", "The monitored metric's latest value.", labels=by_metric
    )
    best = GaugeMetricFamily("afs_run_monitor_best", "The monitored metric's best value.", labels=by_metric)
    for sample in samples:
        state = sample.state
        labels = [state.run_id, state.model, state.host]
        status, outcome = status_labels(state.status)
        info.add_metric(labels, {"status": status, "outcome": outcome, "slurm_job": slurm_job(state.extra)})
        for name, _, read in _RUN_GAUGES:
            value = _number(read(state))
            if value is not None:
                gauges[name].add_metric(labels, value)
        if status != ENDED and sample.heartbeat is not None:
            heartbeat.add_metric(labels, sample.heartbeat)
        for name, raw in sorted(state.metrics.items()):
            value = _number(raw, finite=False)
            if value is not None:
                metric.add_metric([name, *labels], value)
        if state.monitor:
            value = _number(state.metrics.get(state.monitor), finite=False)
            if value is not None:
                monitored.add_metric([state.monitor, *labels], value)
            if state.best is not None:
                best.add_metric([state.monitor, *labels], float(state.best))
    return [info, *gauges.values(), heartbeat, metric, monitored, best]


def outbox_families(store: str, channels: Sequence[ChannelHealth] | None) -> list[Metric]:
    """The delivery families of the outbox in folder ``store``; ``channels`` None: it
    could not be read (``afs_outbox_up`` 0, nothing else)."""
    up = GaugeMetricFamily("afs_outbox_up", "1 when the outbox could be read.", labels=["store"])
    up.add_metric([store], 0.0 if channels is None else 1.0)
    labels = ("store", "channel")
    deliveries = GaugeMetricFamily(
        "afs_outbox_deliveries", "Deliveries in the outbox per state.", labels=(*labels, "state")
    )
    retrying = GaugeMetricFamily(
        "afs_outbox_retrying", "Deliveries waiting for another attempt after a failure.", labels=labels
    )
    times = {
        "failing_since": GaugeMetricFamily(
            "afs_outbox_failing_since_timestamp_seconds",
            "When the oldest message still retrying after a failure was accepted.",
            labels=labels,
        ),
        "last_delivered": GaugeMetricFamily(
            "afs_outbox_last_delivered_timestamp_seconds", "The channel's latest delivery.", labels=labels
        ),
        "last_dead": GaugeMetricFamily(
            "afs_outbox_last_dead_timestamp_seconds",
            "When the channel last gave up on a message.",
            labels=labels,
        ),
    }
    for health in channels or ():
        for state in STATES:  # every state, zeros included: a panel shows 0, not "no data"
            deliveries.add_metric([store, health.channel, state], float(health.states.get(state, 0)))
        retrying.add_metric([store, health.channel], float(health.retrying))
        for field, family in times.items():
            value = getattr(health, field)
            if value is not None:
                family.add_metric([store, health.channel], float(value))
    return [up, deliveries, retrying, *times.values()]


def status_labels(status: str) -> tuple[str, str]:
    """``afs_run_info``'s ``status`` and ``outcome`` for a stored status: a live run's own
    status and no outcome, or ``ended`` and the outcome's value."""
    if status in LIVE_STATUSES:
        return status, ""
    try:
        return ENDED, Outcome.parse(status).value
    except ValueError:
        return ENDED, status  # a status a newer writer stored: shown as it is


def slurm_job(extra: Mapping[str, Any]) -> str:
    """The SLURM job as ``scontrol`` names it (``ARRAYJOB_TASK`` for an array task), or
    ``""`` outside SLURM."""
    array, task = extra.get("slurm_array_job_id"), extra.get("slurm_array_task_id")
    if array not in (None, "") and task not in (None, ""):
        return f"{array}_{task}"
    job = extra.get("slurm_job_id")
    return "" if job in (None, "") else str(job)


class Fixed(Collector):
    """Metric families made beforehand, as a collector (``write_to_textfile`` takes one)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        """The families, as given."""
        return self._families


def _last_step(state: RunState) -> float | None:
    """The run's last progress; for a live state stored before states carried it, the
    snapshot's time (snapshots come from the step hook)."""
    if state.last_step_at is not None or state.ended_at is not None:
        return state.last_step_at
    return state.updated_at


def _number(value: Any, *, finite: bool = True) -> float | None:
    """A sample value: numbers only (not booleans); NaN/Inf only where ``finite`` is False."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    if finite and not math.isfinite(number):
        return None
    return number


__all__ = [
    "ENDED",
    "RUN_LABELS",
    "Fixed",
    "RunSample",
    "outbox_families",
    "run_families",
    "slurm_job",
    "status_labels",
]
