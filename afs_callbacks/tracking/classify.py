"""Telling an out-of-memory error, an interruption or a sweep's pruning apart from an
ordinary crash, and what a report of each says (the device out of memory and its figures,
Ctrl-C or SIGTERM, the pruner's words).

Frameworks wrap the real error (Lightning re-raises, accelerate wraps), so the whole
``__cause__``/``__context__`` chain is walked. Only names and text are inspected: no
framework is imported here. The memory figures consult torch only if the program already
imported it and CUDA is already initialised: touching CUDA first in a process that forks
DDP workers breaks them.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from collections.abc import Iterator
from enum import Enum
from typing import Any

from afs_callbacks._log import get_logger

log = get_logger(__name__)

_MIB = 2**20


class Failure(str, Enum):
    """What kind of failure an exception is."""

    OUT_OF_MEMORY = "out_of_memory"
    INTERRUPTED = "interrupted"
    #: A sweep's pruner ended the trial (Optuna's ``TrialPruned``, raised by a Lightning or
    #: HF pruning callback too): a normal end, not a crash.
    PRUNED = "pruned"
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
# optuna.TrialPruned (optuna.exceptions.TrialPruned), which optuna-integration's pruning
# callbacks and HF's hyperparameter_search raise too.
_PRUNED_TYPES = {"TrialPruned"}
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
    """Whether ``error`` is an out-of-memory error, an interruption, a pruning, or another
    failure."""
    for item in exception_chain(error):
        name = type(item).__name__
        if name in _PRUNED_TYPES:
            return Failure.PRUNED
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


def interrupt_reason(error: BaseException) -> str:
    """How an interruption is described: Ctrl-C or SIGTERM."""
    if type(error).__name__ == "KeyboardInterrupt":
        return "KeyboardInterrupt (Ctrl-C)"
    return "SIGTERM (preemption or job cancellation)"


def pruned_reason(error: BaseException) -> str:
    """How a pruning is described: the pruner's own words where it gave some."""
    for item in exception_chain(error):
        if type(item).__name__ in _PRUNED_TYPES and str(item).strip():
            return f"pruned by the sweep's pruner: {str(item).strip()[:200]}"
    return "pruned by the sweep's pruner"


def oom_device(error: BaseException) -> str | None:
    """The device named in an OOM message ("GPU 0", "cuda:1"), when the text says."""
    for item in exception_chain(error):
        match = re.search(r"\b(GPU \d+|cuda:\d+|mps)\b", str(item))
        if match:
            return match.group(1)
    return None


def cuda_memory_figures(device: str | None = None) -> dict[str, Any]:
    """Allocated, reserved, peak, free and total memory (MiB) of the current CUDA device,
    for an out-of-memory report; empty where torch or CUDA is not in use already."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return {}
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return {
            "device": device or f"cuda:{index}",
            "memory_allocated_mb": round(torch.cuda.memory_allocated(index) / _MIB, 1),
            "memory_reserved_mb": round(torch.cuda.memory_reserved(index) / _MIB, 1),
            "peak_allocated_mb": round(torch.cuda.max_memory_allocated(index) / _MIB, 1),
            "memory_free_mb": round(free / _MIB, 1),
            "memory_total_mb": round(total / _MIB, 1),
        }
    except Exception:
        log.debug("afs-callbacks: no CUDA memory figures", exc_info=True)
        return {}
