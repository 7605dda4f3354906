"""Admission: every event is made valid and bounded before anything stores or sends it.

Valid: text that cannot be encoded as UTF-8 (a lone surrogate from a non-UTF-8 file name in
an exception) is repaired, so SQLite, JSON and every service accept it. Bounded: each text
field keeps at most :data:`MAX_TEXT_CHARS` characters, with a note saying how much was cut,
so a 10 MB message costs the training thread microseconds, not seconds. Safe: secrets are
masked *before* anything is cut, so a cut never leaves half a secret behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afs_callbacks.events import Attachment, NotificationEvent
from afs_callbacks.redaction import redact, registered_secrets

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


def admit_event(event: NotificationEvent, base_context: Mapping[str, Any]) -> NotificationEvent:
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
