"""Framework-free run tracking: training semantics shared by every framework adapter.

The modules, one concept each:

- ``tracker.py``: :class:`RunTracker`, the one class adapters call (its verbs are listed
  there), :class:`TrackerConfig` (what it reports and how often) and :func:`active_tracker`.
- ``sink.py``: :class:`EventSink` / :class:`RunSink`, what it hands events and snapshots to.
- ``run.py``: a run's facts and what is derived from them (throughput, ETA, the completion
  summary, the :class:`~afs_callbacks.runstate.RunState`).
- ``ending.py``: why a run ended (the end-reason words adapters use) and the
  :class:`~afs_callbacks.outcome.Outcome` that means, decided once.
- ``nan.py``: NaN/Inf checks per window of steps, without a per-step device sync;
  ``reader.py``: the thread those windows are read on.
- ``metrics.py``: the monitored metric's best value and plateau.
- ``points.py``: the loss and metric curves (for the chart and the snapshots);
  ``charts.py``: the loss chart (matplotlib, optional).
- ``classify.py``: out of memory, interruption or crash, and what each report says.
- ``watchdog.py``: the stall watchdog. ``cluster.py``: SLURM job facts. ``values.py``:
  numbers from what frameworks hand over.
"""

from __future__ import annotations

from afs_callbacks.tracking.sink import EventSink, RunSink
from afs_callbacks.tracking.tracker import RunTracker, TrackerConfig, active_tracker

__all__ = ["EventSink", "RunSink", "RunTracker", "TrackerConfig", "active_tracker"]
