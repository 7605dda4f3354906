"""Console channel: one readable line per event on stderr.

It is the embedded default: with no channel configured, events still show up somewhere a
person looks, and in the history.
"""

from __future__ import annotations

import sys
from typing import ClassVar, TextIO

from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.config import Env, Settings
from afs_callbacks.events import NotificationEvent
from afs_callbacks.formatting import context_fields, format_metrics


class ConsoleNotifier(NotificationHandler):
    """Print each event as one line: ``[afs] ERROR nan_detected · NaN loss · model=x run=y``.

    Args:
        stream: where to write (default ``sys.stderr`` at the time of sending, so pytest's
            capture and redirected streams work).
    """

    name: ClassVar[str] = "console"
    #: Turned on by the core's ``AFS_CONSOLE``; listed last (it is the fallback).
    listing_order: ClassVar[int] = 1000

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Write the line; a closed stream is a permanent failure for this message."""
        stream = self._stream or sys.stderr
        try:
            stream.write(self.format(event) + "\n")
            stream.flush()
        except (OSError, ValueError) as error:
            return DeliveryResult.permanent(f"console stream unusable: {error}")
        return DeliveryResult.delivered()

    @staticmethod
    def format(event: NotificationEvent) -> str:
        """The one-line form of ``event``."""
        parts = [f"[afs] {event.level.value.upper():8} {event.event_type.value} · {event.title}"]
        details = [f"{label.lower()}={value}" for label, value in context_fields(event)]
        if event.metrics:
            details.append(format_metrics(event.metrics))
        if details:
            parts.append(" ".join(details))
        if event.message and event.message != event.title:
            parts.append(event.message.replace("\n", " ⏎ ")[:500])
        return " · ".join(parts)

    def describe(self) -> str:
        """Where lines go."""
        return "stderr"

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> ConsoleNotifier | None:
        """The console is added by the manager (``AFS_CONSOLE``), not from channel settings."""
        return None
