"""A local, live web dashboard over the notification history (``afs-notify dashboard``).

Standard library only: an ``http.server`` that answers JSON from the outbox opened
read-only, and a page that polls it every second and draws its own SVG charts. See
docs/dashboard.md.
"""

from __future__ import annotations

from afs_callbacks.dashboard.server import DashboardConfig, DashboardServer, make_server, serve_in_thread

__all__ = [
    "DashboardConfig",
    "DashboardServer",
    "make_server",
    "serve_in_thread",
]
