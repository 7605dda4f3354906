"""Framework-free run tracking: training semantics shared by every framework adapter."""

from __future__ import annotations

from afs_callbacks.tracking.tracker import RunTracker, TrackerConfig, active_tracker

__all__ = ["RunTracker", "TrackerConfig", "active_tracker"]
