"""How a run ended, decided once: the end-reason words adapters use, and the
:class:`~afs_callbacks.outcome.Outcome` the tracker derives from them.

An adapter reads its framework at the end of a run (duck-typed, no framework import) and
names why fit/train ended with these words, or None when it cannot tell; the tracker then
infers the reason from the run's plan or its own NaN stop (:func:`infer_end_reason`) and
decides the outcome (:func:`decide`). Every surface reads that outcome: nothing downstream
looks at the reason's words again.

=======================================================  =================================
end reason                                               outcome
=======================================================  =================================
``max_epochs``, ``max_steps``, ``fast_dev_run``, none    completed (with warnings when a
                                                         NaN/Inf or a stall was seen)
``early_stopping (val_loss, patience 3, best 0.21)``,    stopped_early (with warnings
``max_time``, ``should_stop``, any other words (your     likewise)
own ``RunNotifier.stop("time budget")``)
``stop_on_nan``, ``terminate_on_nan``,                   stopped_on_problem
``early_stopping (val_loss not finite)``
=======================================================  =================================

A caller that knows better names the outcome itself (``completed(outcome=...)``): a sweep's
pruner (``pruned``), a stop command (``stopped_by_command``), a rule's stop action
(``stopped_by_rule``). Interruptions are ``interrupted`` for Ctrl-C and ``preempted`` for
SIGTERM, a scheduler's preemption or a SLURM requeue (:func:`interruption`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from afs_callbacks.formatting import format_value
from afs_callbacks.outcome import Outcome

MAX_EPOCHS = "max_epochs"
MAX_STEPS = "max_steps"
MAX_TIME = "max_time"
SHOULD_STOP = "should_stop"  # the user's own code asked to stop
STOP_ON_NAN = "stop_on_nan"  # AFSNotify(stop_on_nan=True) stopped at the first NaN/Inf
TERMINATE_ON_NAN = "terminate_on_nan"  # Keras' TerminateOnNaN
FAST_DEV_RUN = "fast_dev_run"
EARLY_STOPPING = "early_stopping"
#: In an early-stopping reason: the callback stopped because its metric was not finite.
NOT_FINITE = "not finite"

#: Reasons of a run that reached its planned end.
_PLANNED = frozenset({MAX_EPOCHS, MAX_STEPS, FAST_DEV_RUN})
#: Reasons of a run stopped because something went wrong.
_PROBLEMS = frozenset({STOP_ON_NAN, TERMINATE_ON_NAN})


def early_stopping(monitor: Any, patience: Any, best: Any) -> str:
    """``early_stopping (val_loss, patience 3, best 0.21)`` (parts that are known)."""
    parts = [str(monitor)] if monitor else []
    if isinstance(patience, int):
        parts.append(f"patience {patience}")
    number = _number(best)
    if number is not None:
        parts.append(f"best {format_value(number)}")
    return f"{EARLY_STOPPING} ({', '.join(parts)})" if parts else EARLY_STOPPING


def early_stopping_not_finite(monitor: Any) -> str:
    """``early_stopping (val_loss not finite)``: the callback's finiteness check stopped
    the run (Lightning's ``check_finite``): a problem, not the user's patience."""
    return f"{EARLY_STOPPING} ({monitor} {NOT_FINITE})"


def named(callbacks: Iterable[Any], *names: str) -> list[Any]:
    """The callbacks among ``callbacks`` whose class is one of ``names`` (duck-typed: the
    framework's own ``EarlyStopping`` & co. without importing it)."""
    return [callback for callback in callbacks if type(callback).__name__ in names]


def infer_end_reason(
    *,
    planned_epochs: int | None,
    epochs_done: int | None,
    max_steps: int | None,
    step: int,
    stopped_on_nan: bool,
) -> str | None:
    """Why a run ended when the framework did not say: its plan, or a NaN stop."""
    if stopped_on_nan:
        return STOP_ON_NAN
    if max_steps and step >= max_steps:
        return MAX_STEPS
    if planned_epochs and epochs_done and epochs_done >= planned_epochs:
        return MAX_EPOCHS
    return None


def kind_of(reason: str | None) -> str:
    """The reason's first word: ``"early_stopping"`` for ``"early_stopping (val_loss, ...)"``."""
    return (reason or "").split("(", 1)[0].strip()


def decide(end_reason: str | None, *, warnings: bool) -> Outcome:
    """The outcome of a run that ended without an error, from why it ended.

    Args:
        end_reason: the adapter's words (or the inferred ones); None: no reason known,
            taken as the planned end.
        warnings: a NaN/Inf (or a stall) was seen and the run went on. A run that reached
            its end, or its own stopping rule, after that is ``completed_with_warnings``:
            a person should look, the level says so, and its alerts stay open.
    """
    kind = kind_of(end_reason)
    if kind in _PROBLEMS or (kind == EARLY_STOPPING and NOT_FINITE in (end_reason or "")):
        return Outcome.STOPPED_ON_PROBLEM
    if warnings:
        return Outcome.COMPLETED_WITH_WARNINGS
    if not kind or kind in _PLANNED:
        return Outcome.COMPLETED
    return Outcome.STOPPED_EARLY


def interruption(reason: str) -> Outcome:
    """``interrupted`` for Ctrl-C, ``preempted`` for anything else that stops a run from
    outside (SIGTERM, a scheduler's preemption, a SLURM requeue)."""
    words = reason.lower()
    if "keyboardinterrupt" in words or "ctrl-c" in words or "sigint" in words:
        return Outcome.INTERRUPTED
    if "sigterm" in words or "preempt" in words or "requeue" in words:
        return Outcome.PREEMPTED
    return Outcome.INTERRUPTED  # a person's doing, as far as anyone can tell


def reason_words(end_reason: str | None) -> str:
    """The end reason as a person reads it in a title: ``EarlyStopping on val_loss,
    patience 3`` for ``early_stopping (val_loss, patience 3, best 0.21)``; ``max_time``
    and other words as they are; "" for none or the planned end."""
    kind = kind_of(end_reason)
    if not kind or kind in _PLANNED:
        return ""
    if kind == EARLY_STOPPING:
        inside = (end_reason or "").partition("(")[2].rstrip(")").strip()
        parts = [
            part.strip() for part in inside.split(",") if part.strip() and not part.strip().startswith("best")
        ]
        return "EarlyStopping" + (f" on {', '.join(parts)}" if parts else "")
    if kind == TERMINATE_ON_NAN:
        return "TerminateOnNaN"
    if kind == SHOULD_STOP:
        return "should_stop, set by your code"
    # A stop asked from outside or by a rule, a pruning: the outcome's words say "stopped
    # by" or "pruned" already; the pruner's own words are what is left to say.
    words = (end_reason or "").removeprefix("stopped by ")
    if words.startswith("pruned by the sweep's pruner"):
        return words.removeprefix("pruned by the sweep's pruner").removeprefix(": ")
    return words


def _number(value: Any) -> float | None:
    try:
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError, RuntimeError):
        pass
    return None


__all__ = [
    "EARLY_STOPPING",
    "FAST_DEV_RUN",
    "MAX_EPOCHS",
    "MAX_STEPS",
    "MAX_TIME",
    "NOT_FINITE",
    "SHOULD_STOP",
    "STOP_ON_NAN",
    "TERMINATE_ON_NAN",
    "decide",
    "early_stopping",
    "early_stopping_not_finite",
    "infer_end_reason",
    "interruption",
    "kind_of",
    "named",
    "reason_words",
]
