"""Telling an out-of-memory error or an interruption apart from an ordinary crash.

Frameworks wrap the real error (Lightning re-raises, accelerate wraps), so the whole
``__cause__``/``__context__`` chain is walked. Only names and text are inspected: no
framework is imported here.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from enum import Enum


class Failure(str, Enum):
    """What kind of failure an exception is."""

    OUT_OF_MEMORY = "out_of_memory"
    INTERRUPTED = "interrupted"
    ERROR = "error"


_OOM_TYPES = {"OutOfMemoryError", "ResourceExhaustedError", "MemoryError"}
_OOM_TEXT = (
    "cuda out of memory",
    "out of memory",
    "mps backend out of memory",
    "defaultcpuallocator: can't allocate memory",
    "resource exhausted",
    "resource_exhausted",
    "failed to allocate memory",
    "hip out of memory",
)
# SystemExit subclasses raised for SIGTERM (Lightning's SIGTERMException) and friends.
_INTERRUPT_TYPES = {"KeyboardInterrupt", "SIGTERMException", "TerminatedBySignal"}


def exception_chain(error: BaseException, limit: int = 20) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, without cycles."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < limit:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(error: BaseException) -> Failure:
    """Whether ``error`` is an out-of-memory error, an interruption, or another failure."""
    for item in exception_chain(error):
        name = type(item).__name__
        if name in _INTERRUPT_TYPES or (
            isinstance(item, SystemExit) and item.code in (-signal.SIGTERM, 128 + signal.SIGTERM)
        ):
            return Failure.INTERRUPTED
        if name in _OOM_TYPES or any(text in str(item).lower() for text in _OOM_TEXT):
            return Failure.OUT_OF_MEMORY
    return Failure.ERROR


_REPORTED = "_afs_callbacks_reported"


def mark_reported(error: BaseException) -> None:
    """Remember on ``error`` itself that a run reported it, so that a ``watch()`` block or
    the excepthook it travels through next does not report it on a second run."""
    with contextlib.suppress(AttributeError, TypeError):  # a type without a __dict__
        setattr(error, _REPORTED, True)


def was_reported(error: BaseException) -> bool:
    """Whether a run already reported ``error`` (see :func:`mark_reported`)."""
    return bool(getattr(error, _REPORTED, False))


def oom_device(error: BaseException) -> str | None:
    """The device named in an OOM message ("GPU 0", "cuda:1"), when the text says."""
    import re

    for item in exception_chain(error):
        match = re.search(r"\b(GPU \d+|cuda:\d+|mps)\b", str(item))
        if match:
            return match.group(1)
    return None
