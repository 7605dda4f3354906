"""Admission: the one path of every event from its hand-over to the writer's queue.

``notify()``, ``emit()``, the tracker's ``post()``, repeat digests and death notices all
pass through :class:`Admission`'s steps, each with one job (like structlog's processors):

1. **context**: the manager's context goes under the event's own (it can hold the run id
   that tells repeats apart); an end event that names no outcome (sent by code that does
   not decide one: ``notify_training_completed``, ``afs-notify complete``) gets the one its
   type means, so every end in the store carries ``context["outcome"]``;
2. **repeats**: the storm guard holds back a true repeat inside the dedup window (only
   counted, never stored) and hands over the digest of a window that closed. Before the
   text's work, so a storm costs little;
3. **bound**: :func:`bounded_event` makes the text valid, masks secrets, bounds each field
   and adds the host. Secrets are masked before anything is cut (a cut never leaves half
   a secret) and before anything is stored (nothing unredacted leaves the process);
4. **route**: the channels that take it (:mod:`afs_callbacks.delivery.routing`) and their
   senders started.

The steps run once per event: on the caller's thread for ``notify()`` and ``emit()``
(they return the event as stored), on the writer thread for ``post()`` (its caller pays a
deque append; see :class:`~afs_callbacks.delivery.writer.Handover`). What happens after
the store is in ``docs/delivery.md``, "How the limits compose".
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

from afs_callbacks._log import get_logger
from afs_callbacks.channels.base import NotificationHandler
from afs_callbacks.delivery.lifecycle import Lifecycle
from afs_callbacks.delivery.limits import StormGuard
from afs_callbacks.delivery.writer import Handover, Ready
from afs_callbacks.events import TERMINAL_TYPES, Attachment, NotificationEvent
from afs_callbacks.outcome import END_TYPES, Outcome
from afs_callbacks.redaction import redact, registered_secrets

log = get_logger(__name__)

#: The channels that take an event at a verbosity (the manager's routes).
Router: TypeAlias = Callable[[NotificationEvent, str], Sequence[tuple[str, NotificationHandler]]]
#: How often the digest thread looks for closed repeat windows.
DIGEST_POLL_SECONDS = 0.5


class Admission:
    """The admission steps of one manager, and the thread that sends repeat digests on time.

    Args:
        guard: the storm guard whose windows hold repeats back.
        route: the channels that take an event at a verbosity.
        delivery: where admitted events go (the writer's queue; the channels' senders).
        context: the manager's context, put under every event's own (read at each event).
        verbosity: the verbosity run events and digests are routed by (``AFS_VERBOSITY``).
    """

    def __init__(
        self,
        guard: StormGuard,
        route: Router,
        delivery: Lifecycle,
        *,
        context: Mapping[str, Any],
        verbosity: str,
    ) -> None:
        self.guard = guard
        self.verbosity = verbosity
        self._route = route
        self._delivery = delivery
        self._context = context
        self._host = {"host": socket.gethostname()}
        self._lock = threading.Lock()
        self._digester: threading.Thread | None = None
        self._stopping = threading.Event()

    # Handing over -----------------------------------------------------------------------

    def now(
        self, event: NotificationEvent, verbosity: str, *, hold_until: float = 0.0
    ) -> NotificationEvent | None:
        """Admit ``event`` on this thread and queue what it became; return it as stored
        (None: a repeat held back, or not accepted). ``hold_until``: its deliveries are
        stored due then (epoch seconds), not at once (:meth:`attach` releases them). Never
        raises."""
        try:
            item = Handover(event, verbosity, self.admit, hold_until=hold_until)
            ready = item.admitted()
            if ready:
                self._delivery.hand_over(item, hurry=any(channels for _, channels in ready))
            # The event itself comes last (a repeat digest before it); none when held back.
            return ready[-1][0] if ready and ready[-1][0].id == event.id else None
        except Exception as error:
            log.error("afs-callbacks: could not accept a notification: %s", redact(error))
            return None

    def later(self, event: NotificationEvent, *, hurry: bool) -> None:
        """Queue ``event`` for the writer thread to admit (routed by :attr:`verbosity`): the
        caller pays a deque append. ``hurry``: some channel takes it, store it at once."""
        self._delivery.hand_over(Handover(event, self.verbosity, self.admit), hurry=hurry)

    def attach(self, stored: NotificationEvent, attachments: Sequence[Attachment]) -> None:
        """Give the stored ``stored`` its ``attachments`` (bounded like any event's) and
        release its held deliveries now. Never raises."""
        try:
            self._delivery.attach(bounded_event(stored.with_changes(attachments=tuple(attachments)), {}))
        except Exception as error:
            log.error("afs-callbacks: could not attach the chart to a stored message: %s", redact(error))

    # The steps ----------------------------------------------------------------------------

    def admit(self, event: NotificationEvent, verbosity: str) -> list[Ready]:
        """What ``event`` becomes, step by step (see the module docstring): the events to
        store, with their channels. Never raises: what fails is logged and left out."""
        try:
            events = self._repeats(self._with_context(event))
            return [self._routed(bounded_event(e, self._host), verbosity) for e in events]
        except Exception as error:
            log.error("afs-callbacks: could not accept a notification: %s", redact(error))
            return []

    def _with_context(self, event: NotificationEvent) -> NotificationEvent:
        context = event.context
        if event.event_type in END_TYPES and "outcome" not in context:
            outcome = Outcome.of_event(event)
            context = {**context, "outcome": outcome.value} if outcome is not None else context
        if self._context:
            context = {**self._context, **context}
        return event if context is event.context else event.with_changes(context=context)

    def _repeats(self, event: NotificationEvent) -> list[NotificationEvent]:
        # A run's end closes its repeat windows first: their digests come before it.
        run = event.run_id if event.event_type in TERMINAL_TYPES else None
        before = self.guard.close_run(run) if run else []
        admitted, digest = self.guard.admit(event)
        if not admitted:
            self._watch_repeats()
        return [*before, *([] if digest is None else [digest]), *([event] if admitted else [])]

    def _routed(self, event: NotificationEvent, verbosity: str) -> Ready:
        return self._delivery.ready(event, self._route(event, verbosity))

    # Repeat digests: a window closes on time even when no later event comes ----------------

    def _watch_repeats(self) -> None:
        with self._lock:
            if self._digester is not None or self._stopping.is_set():
                return
            self._digester = threading.Thread(target=self._digest_loop, name="afs-digests", daemon=True)
            self._digester.start()

    def _digest_loop(self) -> None:
        while not self._stopping.wait(DIGEST_POLL_SECONDS):
            self._send(self.guard.due_digests())
            with self._lock:
                # Decided under the lock _watch_repeats takes, so a repeat held back just
                # now either keeps this thread going or starts a new one.
                if not self.guard.has_suppressed():
                    self._digester = None
                    return
        with self._lock:
            self._digester = None

    def _send(self, digests: Sequence[NotificationEvent]) -> None:
        for digest in digests:
            self.now(digest, self.verbosity)

    def close(self) -> None:
        """Admit the digests of every open repeat window now; stop the digest thread."""
        self._send(self.guard.due_digests(flush_all=True))
        self._stopping.set()

    def after_fork_in_child(self) -> None:
        """Threads do not survive ``fork()``; locks may have been held by one that did not."""
        self._lock = threading.Lock()
        self._digester = None
        self.guard.reset_lock()


# Bounds: valid, redacted, bounded text ----------------------------------------------------

#: Most characters one text field (title, message, a context string) keeps (64 KiB).
MAX_TEXT_CHARS = 64 * 1024
#: Most bytes one attachment may carry; a bigger one is left out with a note.
MAX_ATTACHMENT_BYTES = 8 * 1024 * 1024
#: Most items kept of one list in the context.
MAX_LIST_ITEMS = 1000
# Text past the limit that redaction still sees, so a secret straddling the cut is masked
# whole first (secrets are far shorter than this).
_REDACT_MARGIN = 4096


def valid_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (pairs are joined), else unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# Redacting a short text that recurs (host, run id, model, a repeated title) is cached: the
# training thread would otherwise run every pattern over the same few words per event. The
# cache is emptied whenever a secret is registered (masking depends on what is known).
_SHORT = 256
_CACHE_LIMIT = 4096
_cache: dict[str, str] = {}
_cache_secrets = -1


def _refresh_cache() -> None:
    global _cache_secrets
    known = len(tuple(registered_secrets()))
    if known != _cache_secrets or len(_cache) > _CACHE_LIMIT:
        _cache.clear()
        _cache_secrets = known


def _redact(text: str) -> str:
    if len(text) > _SHORT:
        return redact(text)
    cached = _cache.get(text)
    if cached is None:
        cached = _cache[text] = redact(text)
    return cached


def bounded_text(text: object, limit: int = MAX_TEXT_CHARS) -> str:
    """Valid, redacted text of at most ``limit`` characters plus a note when cut."""
    raw = valid_text(text if isinstance(text, str) else str(text))
    if len(raw) <= limit:
        return _redact(raw)
    cleaned = redact(raw[: limit + _REDACT_MARGIN])
    cut = len(raw) - limit
    return cleaned[:limit] + f"\n[cut: {cut:,} more characters were not stored]"


def bounded_value(value: Any) -> Any:
    """A context value with every string made valid, redacted and bounded, however nested."""
    kind = type(value)
    if kind is int or kind is float or kind is bool or value is None:  # most values: numbers
        return value
    if isinstance(value, str):
        return bounded_text(value)
    if isinstance(value, Mapping):
        return {bounded_text(str(key), 256): bounded_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [bounded_value(item) for item in list(value)[:MAX_LIST_ITEMS]]
    return value


def bounded_event(event: NotificationEvent, base_context: Mapping[str, Any]) -> NotificationEvent:
    """The event as it is stored: ``base_context`` under its own context, text valid,
    redacted and bounded, oversized attachments left out (with a note in the message)."""
    _refresh_cache()
    context = bounded_value({**base_context, **event.context})
    message = event.message
    attachments = []
    for attachment in event.attachments:
        if len(attachment.data) > MAX_ATTACHMENT_BYTES:
            message += f"\n[attachment {attachment.filename} left out: {len(attachment.data):,} bytes]"
        else:
            attachments.append(_valid_attachment(attachment))
    return event.with_changes(
        title=bounded_text(event.title),
        message=bounded_text(message),
        context=context,
        attachments=tuple(attachments),
        key=bounded_text(event.key, 1024),
    )


def _valid_attachment(attachment: Attachment) -> Attachment:
    name = valid_text(attachment.filename)
    if name == attachment.filename:
        return attachment
    return Attachment(name, attachment.content_type, attachment.data)
