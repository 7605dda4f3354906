"""The runs of this process that started and have not ended.

``watch()`` and the excepthook fallback report a crash on the run a callback already
announced; they find it here. Weak references: a forgotten tracker does not stay alive.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from afs_callbacks.tracking.tracker import RunTracker

_active: weakref.WeakSet[Any] = weakref.WeakSet()


def register(tracker: Any) -> None:
    """A run started."""
    _active.add(tracker)


def unregister(tracker: Any) -> None:
    """A run ended."""
    _active.discard(tracker)


def active_tracker() -> RunTracker | None:
    """The most recently started run of this process that has not ended, if any."""
    running = [tracker for tracker in list(_active) if not tracker.finished]
    return cast("RunTracker", max(running, key=lambda t: t.started_at or 0.0)) if running else None


__all__ = ["active_tracker", "register", "unregister"]
