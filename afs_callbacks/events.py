"""What a notification is: its type, its level and the event value that travels to channels.

A :class:`NotificationEvent` is an immutable value. It is written to the outbox as JSON
before any channel sees it, so everything in it must survive ``to_dict()``/``from_dict()``.
The levels and event types it is built from live in :mod:`afs_callbacks._event_kinds`.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

# Re-exported: the kinds were first written here, and everything imports them from here.
from afs_callbacks._event_kinds import DEFAULT_LEVELS as DEFAULT_LEVELS
from afs_callbacks._event_kinds import PROGRESS_TYPES as PROGRESS_TYPES
from afs_callbacks._event_kinds import TERMINAL_TYPES as TERMINAL_TYPES
from afs_callbacks._event_kinds import URGENT_TYPES as URGENT_TYPES
from afs_callbacks._event_kinds import EventType as EventType
from afs_callbacks._event_kinds import NotificationLevel as NotificationLevel


@dataclass(frozen=True)
class Attachment:
    """A file carried with an event, such as a loss-curve PNG.

    Channels that can carry images (email, Discord, Telegram, Slack via a link) attach it;
    the others ignore it.
    """

    filename: str
    content_type: str
    data: bytes = field(repr=False)

    def to_dict(self) -> dict[str, str]:
        """The attachment as JSON-safe values (data in base64)."""
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "data": base64.b64encode(self.data).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachment:
        """Rebuild an attachment written by :meth:`to_dict`."""
        return cls(
            filename=str(data["filename"]),
            content_type=str(data["content_type"]),
            data=base64.b64decode(data["data"]),
        )


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# A generator of our own: training code seeds the global ``random`` (``seed_everything``,
# HF ``set_seed``), which would give two runs of one process the same event ids, and the
# outbox ignores an id it already holds. Reseeded from the OS in a forked child.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def _new_id() -> str:
    # 128 random bits from a Mersenne Twister: unlike uuid4's os.urandom it does not release
    # the GIL, so a training thread making an event never waits for a background thread.
    return f"{_ids.getrandbits(128):032x}"


@dataclass(frozen=True)
class NotificationEvent:
    """One thing worth telling a person about, as every channel receives it.

    Args:
        event_type: what happened.
        level: how serious it is; channels colour and route by it.
        title: one short line (a channel may cut it to its limit).
        message: the body, plain text.
        context: run details: ``model``, ``run_id``, ``host``, ``metrics`` (a mapping of
            names to numbers), ``step``, ``epoch`` and anything else JSON-serialisable.
        attachments: files such as a chart, for channels that can carry them.
        id: unique id, also used as the idempotency key where a service has one.
        timestamp: when it happened, in UTC.
        key: explicit repeat key: events of one type and run with the same key are repeats
            (e.g. a GPU index or a threshold). Empty: the content decides.
        collapse: False means this event is never collapsed as a repeat (digests, tests).
        digest_count: for a digest, how many events it stands for.

    Control data (``key``, ``collapse``, ``digest_count``) are fields, not context entries;
    an older producer's context ``key``/``no_dedup``/``digest_count`` are lifted into them.

    Example::

        event = NotificationEvent(EventType.NAN_DETECTED, NotificationLevel.ERROR,
                                  "NaN loss", "loss became NaN at step 120",
                                  {"model": "bert-tiny", "run_id": "r1", "step": 120})
    """

    event_type: EventType
    level: NotificationLevel
    title: str
    message: str = ""
    # Left out of the hash (a dict is unhashable), so events can go in sets and dict keys.
    context: Mapping[str, Any] = field(default_factory=dict, hash=False)
    attachments: tuple[Attachment, ...] = ()
    id: str = field(default_factory=_new_id)
    timestamp: datetime = field(default_factory=_utc_now)
    key: str = ""
    collapse: bool = True
    digest_count: int = 0

    def __post_init__(self) -> None:
        # Accept plain strings from callers (the seed API passed strings around).
        object.__setattr__(self, "event_type", EventType.parse(self.event_type))
        object.__setattr__(self, "level", NotificationLevel.parse(self.level))
        if self.timestamp.tzinfo is None:
            # A naive time is read as UTC (the documented unit), not as local time.
            object.__setattr__(self, "timestamp", self.timestamp.replace(tzinfo=timezone.utc))
        elif self.timestamp.utcoffset():
            object.__setattr__(self, "timestamp", self.timestamp.astimezone(timezone.utc))
        object.__setattr__(self, "context", dict(self.context))
        self._lift_control_from_context()

    def _lift_control_from_context(self) -> None:
        """Read control data an older producer put in the context (kept there for them)."""
        context = self.context
        if not self.key and context.get("key") not in (None, ""):
            object.__setattr__(self, "key", str(context["key"]))
        if self.collapse and context.get("no_dedup"):
            object.__setattr__(self, "collapse", False)
        if not self.digest_count and isinstance(context.get("digest_count"), int):
            object.__setattr__(self, "digest_count", int(context["digest_count"]))

    @property
    def run_id(self) -> str | None:
        """The run this event belongs to, if any."""
        value = self.context.get("run_id")
        return None if value is None else str(value)

    @property
    def model(self) -> str | None:
        """The model name, if any."""
        value = self.context.get("model")
        return None if value is None else str(value)

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics mapping from the context (empty when there is none)."""
        value = self.context.get("metrics")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def dedup_key(self) -> str:
        """Events with the same key inside a dedup window collapse into one message.

        The key is type + run + :attr:`key` (e.g. a GPU index or a threshold).
        """
        return f"{self.event_type.value}|{self.run_id or ''}|{self.key}"

    def with_changes(self, **changes: Any) -> NotificationEvent:
        """A copy with some fields replaced (the id stays unless replaced too)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-safe values."""
        return {
            "id": self.id,
            "timestamp": self.timestamp.isoformat(),
            "event_type": self.event_type.value,
            "level": self.level.value,
            "title": self.title,
            "message": self.message,
            "context": _json_safe(self.context),
            "attachments": [attachment.to_dict() for attachment in self.attachments],
            "control": {
                "key": self.key,
                "collapse": self.collapse,
                "digest_count": self.digest_count,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NotificationEvent:
        """Rebuild an event written by :meth:`to_dict`.

        Metrics that were NaN or infinite (written as ``"nan"``, ``"inf"``, ``"-inf"``
        because JSON has no such numbers) come back as floats.
        """
        context = dict(data.get("context") or {})
        if isinstance(context.get("metrics"), Mapping):
            context["metrics"] = _restore_non_finite(context["metrics"])
        # Rows written before control fields existed have no "control"; the context is lifted.
        control = data.get("control")
        control = control if isinstance(control, Mapping) else {}
        return cls(
            event_type=EventType.parse(data["event_type"]),
            level=NotificationLevel.parse(data["level"]),
            title=str(data.get("title", "")),
            message=str(data.get("message", "")),
            context=context,
            attachments=tuple(Attachment.from_dict(a) for a in data.get("attachments") or ()),
            id=str(data["id"]),
            timestamp=datetime.fromisoformat(str(data["timestamp"])),
            key=str(control.get("key") or ""),
            collapse=bool(control.get("collapse", True)),
            digest_count=int(control.get("digest_count") or 0),
        )

    def to_json(self) -> str:
        """The event as a JSON string."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> NotificationEvent:
        """Rebuild an event written by :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def _json_safe(value: Any) -> Any:
    """Turn context values into plain JSON: NaN/Inf become strings, unknown objects ``str``.

    Metrics can be NaN (that is often the news), and JSON has no NaN.
    """
    kind = type(value)  # the usual exact types first: ABC checks cost a row per snapshot
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if value - value == 0 else str(value)  # NaN and ±Inf give NaN here
    if kind is dict:
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    try:
        # numpy scalars, one-element tensors; a bigger tensor raises RuntimeError, not TypeError
        return _json_safe(float(value))
    except Exception:
        pass
    try:
        return str(value)
    except Exception:  # a broken __str__ must not cost the whole event
        return f"<unprintable {type(value).__name__}>"


_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _restore_non_finite(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`_json_safe` for metric values: ``"nan"`` back to ``float("nan")``."""
    restored: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            restored[name] = _restore_non_finite(value)
        elif isinstance(value, str) and value in _NON_FINITE:
            restored[name] = _NON_FINITE[value]
        else:
            restored[name] = value
    return restored
