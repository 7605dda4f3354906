"""Keeping an event storm from becoming a message storm: what is held back becomes one
digest; and spacing retries.

Two things hold messages back. :class:`StormGuard` collapses true repeats (see
:func:`repeat_key`: the same text, or an alert's same key, inside the dedup window) at
admission: the first goes out, the rest are only counted. A channel's budget
(:mod:`afs_callbacks.delivery.budget`) holds distinct messages over its burst: they are
stored, then folded by the outbox. Either way, what was held
becomes one event made by :func:`digest` (through :func:`repeat_digest` or
:func:`fold_digest`): a fresh id, never collapsed, never budgeted, its ``digest_count``
saying how many messages it stands for. :func:`backoff_delay` is full-jitter exponential
backoff that defers to a server's own wait hint.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel

#: Titles a budget digest names before it says "and N more".
DIGEST_TITLES = 5


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    hint: float | None = None,
    max_hint: float = 900.0,
    rng: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    A server's hint (``Retry-After``, ``retry_after``) wins, capped at ``max_hint`` so a
    hostile or broken answer cannot park a message for days. Without one, full jitter:
    ``uniform(0, min(cap, base * 2**(attempt - 1)))``, which spreads retries of many
    processes instead of synchronising them.
    """
    if hint is not None and hint >= 0:
        return min(hint, max_hint)
    # Attempts count up for as long as a message lives (a day of outage is hundreds of them):
    # the exponent stops growing long before 2**n overflows a float.
    ceiling = min(cap, base * (2 ** min(max(attempt - 1, 0), 60)))
    return rng(0.0, ceiling)


def repeat_key(event: NotificationEvent) -> str | None:
    """What makes two events repeats of each other (None: ``event`` never collapses).

    Always the same type and run; then, for an alert (warning or worse) with an explicit
    :attr:`~NotificationEvent.key`, the same key: a condition that persists is one thing
    while its numbers move (a NaN at step 1,200 then 1,201, a disk 91 % then 92 % full).
    Anything else is a repeat only when it says the same thing, the same title and message
    (and the same key, if it has one): information with other numbers is news, so
    ``validate()`` then ``test()``, Keras ``evaluate()`` on the validation set then on the
    test set, or three ``notify()`` calls with different titles are distinct messages.
    """
    if not event.collapse:
        return None
    base = f"{event.event_type.value}|{event.run_id or ''}"
    if event.key and event.level >= NotificationLevel.WARNING:
        return f"{base}|key|{event.key}"
    content = f"{event.key}\0{event.title}\0{event.message}".encode("utf-8", "surrogatepass")
    return f"{base}|text|{hashlib.blake2b(content, digest_size=12).hexdigest()}"


@dataclass
class _Window:
    started: float
    first: NotificationEvent
    suppressed: int = 0
    last: NotificationEvent | None = None


class StormGuard:
    """Collapse true repeats of an event (see :func:`repeat_key`) inside ``window`` seconds;
    count what was held back.

    Thread-safe; memory is bounded by the number of distinct keys seen inside one window
    (at most ``max_keys``, beyond which new keys pass uncollapsed rather than grow memory).

    Args:
        window: seconds a key stays collapsed after its first event; 0 disables collapsing.
        clock: monotonic time source (tests pass a fake one).
        max_keys: bound on tracked keys.
    """

    def __init__(
        self,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[str, _Window] = {}
        self._ready: list[NotificationEvent] = []  # digests swept early, due next call
        self._lock = threading.Lock()

    def admit(self, event: NotificationEvent) -> tuple[bool, NotificationEvent | None]:
        """Decide whether ``event`` goes out now.

        Returns ``(admitted, digest)``: ``digest`` is the summary of an expired window of the
        same key, to be sent before ``event`` when there is one.
        """
        key = repeat_key(event)
        if self.window <= 0 or key is None:
            return True, None
        now = self._clock()
        with self._lock:
            current = self._windows.get(key)
            if current is not None and now - current.started < self.window:
                current.suppressed += 1
                current.last = event
                return False, None
            digest = self._digest(current) if current is not None else None
            if len(self._windows) >= self._max_keys:
                self._ready.extend(self._sweep(now))
                if len(self._windows) >= self._max_keys:
                    return True, digest
            # Popped first, so the dict stays in the order the windows started: a sweep
            # stops at the first window still open instead of visiting every key.
            self._windows.pop(key, None)
            self._windows[key] = _Window(started=now, first=event)
            return True, digest

    def close_run(self, run_id: str) -> list[NotificationEvent]:
        """Close every window of ``run_id`` now and return their digests, oldest first: the
        run is ending, and its story must not go on after its end (a window would otherwise
        close, and its digest go out, after the end)."""
        with self._lock:
            windows = [(key, w) for key, w in self._windows.items() if w.first.run_id == run_id]
            for key, _ in windows:
                del self._windows[key]
        digests = [self._digest(window) for _, window in windows]
        return sorted((d for d in digests if d is not None), key=lambda d: d.timestamp)

    def due_digests(self, *, flush_all: bool = False) -> list[NotificationEvent]:
        """Digests of windows that have closed (all windows with ``flush_all``)."""
        now = self._clock()
        with self._lock:
            ready, self._ready = self._ready, []
            return ready + self._sweep(now, flush_all=flush_all)

    def has_suppressed(self) -> bool:
        """Whether any open window is holding back repeats (a digest will be due)."""
        with self._lock:
            return bool(self._ready) or any(window.suppressed for window in self._windows.values())

    def reset_lock(self) -> None:
        """Replace the lock (after ``fork()``, where a parent thread may have held it)."""
        self._lock = threading.Lock()

    def _sweep(self, now: float, *, flush_all: bool = False) -> list[NotificationEvent]:
        # Oldest first (see admit): a full guard whose windows are all open costs one look
        # per event, not max_keys of them.
        closed = []
        for key, window in self._windows.items():
            if not flush_all and now - window.started < self.window:
                break
            closed.append(key)
        digests = []
        for key in closed:
            digest = self._digest(self._windows.pop(key))
            if digest is not None:
                digests.append(digest)
        return digests

    def _digest(self, window: _Window) -> NotificationEvent | None:
        if not window.suppressed or window.last is None:
            return None
        return repeat_digest(window.first, window.last, window.suppressed, self.window)


# Digests ------------------------------------------------------------------------------------


def digest(like: NotificationEvent, count: int, **changes: Any) -> NotificationEvent:
    """The one event that stands for ``count`` messages held back: ``like`` with ``changes``
    and a fresh id, never collapsed as a repeat and never budgeted (its ``digest_count``
    says so: :func:`~afs_callbacks.delivery.priority.is_budgeted`)."""
    return like.with_changes(**changes, id=uuid.uuid4().hex, collapse=False, digest_count=count)


def repeat_digest(
    first: NotificationEvent, last: NotificationEvent, count: int, window: float
) -> NotificationEvent:
    """The digest of ``count`` repeats of ``first`` held back within ``window`` seconds:
    it names the message and the latest occurrence, and keeps their type and run."""
    title = f"{first.title} (repeated {count:,} times in the last {window:g} s)"
    message = (
        f"{first.event_type.value.replace('_', ' ')} happened {count:,} more "
        f"times after the first message; the latest: {last.message or last.title}"
    )
    context = {**last.context, "digest_window_s": window}
    return digest(last, count, title=title, message=message, context=context)


@dataclass(frozen=True)
class HeldMessage:
    """What a budget digest needs to know about one message it stands for."""

    event_id: str
    title: str
    level: NotificationLevel
    run_id: str | None


def fold_digest(held: Sequence[HeldMessage]) -> NotificationEvent:
    """The digest of distinct messages a channel's budget held (in order): the first
    titles and a count, at the most serious held level."""
    count = len(held)
    lines = [f"• {message.title}" for message in held[:DIGEST_TITLES]]
    if count > DIGEST_TITLES:
        lines.append(f"… and {count - DIGEST_TITLES:,} more.")
    lines.append(f"All {count:,} are kept in the history: afs-notify history --state folded")
    runs = {message.run_id for message in held}
    folded = NotificationEvent(
        event_type=EventType.DIGEST,
        level=max((message.level for message in held), default=NotificationLevel.INFO),
        title=f"{count:,} messages held back (too many at once)",
        message="\n".join(lines),
        context={"run_id": next(iter(runs))} if len(runs) == 1 and None not in runs else {},
    )
    return digest(folded, count)
