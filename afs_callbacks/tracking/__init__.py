"""Framework-free run tracking: training semantics shared by every framework adapter."""

from __future__ import annotations

from afs_callbacks.tracking.sink import EventSink, RunSink
from afs_callbacks.tracking.tracker import RunTracker, TrackerConfig, active_tracker

__all__ = ["EventSink", "RunSink", "RunTracker", "TrackerConfig", "active_tracker"]
