"""Reaching what a framework does not hand its callbacks: the objects up the call stack
(the Trainer, the callback list) and the caller's end of ``train()``/``fit()``.

Hugging Face and Keras give a callback no exception hook and no view of the other
callbacks. Two small, documented tools close the gap:

* :func:`holder_in_stack` looks a few frames up from a hook for the object that called
  it (the HF ``CallbackHandler`` and ``Trainer``, the Keras ``CallbackList``); its sibling
  :func:`method_in_stack` tells which public call runs (``predict`` or ``evaluate``). They
  run at run boundaries only (start, end), never per step, and return None when the
  layout is not what they expect: the adapter then does without.
* :func:`wrap_call` replaces ``trainer.train`` / ``model.fit`` *on that one instance* with
  a wrapper that reports an exception escaping it, then re-raises it unchanged. So a crash
  the caller catches (a notebook, a retry loop) closes the run at once. The class is not
  touched, the wrapper is installed once per instance and passes arguments and results
  through as they are; an error inside the report is logged and never replaces the
  training's own exception. The report is the adapter's ``_caller_caught``
  (:class:`~afs_callbacks.integrations._base.NotifierBase`).
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from afs_callbacks._log import get_logger

log = get_logger(__name__)

#: How many frames above a hook to look (a framework's dispatch is a few calls deep).
STACK_DEPTH = 12
_WRAPPED = "_afs_reporters"  # the wrapper's list of weak references to reporters


def holder_in_stack(test: Callable[[Any], bool], *, skip: int = 1) -> Any:
    """The nearest ``self`` up the stack for which ``test`` is true, else None."""
    for frame in _frames_above(skip + 1):
        candidate = frame.f_locals.get("self")
        try:
            if candidate is not None and test(candidate):
                return candidate
        except Exception:
            pass  # an object whose attributes raise is not the one wanted
    return None


def _frames_above(skip: int) -> list[FrameType]:
    """The (at most :data:`STACK_DEPTH`) frames from ``skip`` levels above the caller of
    this function outwards; none when the stack is not that deep."""
    frames: list[FrameType] = []
    frame: FrameType | None
    try:
        frame = sys._getframe(skip + 1)
    except ValueError:
        return frames
    while frame is not None and len(frames) < STACK_DEPTH:
        frames.append(frame)
        frame = frame.f_back
    return frames


def holds(callback: Any, attribute: str = "callbacks") -> Callable[[Any], bool]:
    """A test for :func:`holder_in_stack`: an object whose ``attribute`` list holds
    ``callback`` (a callback handler or list)."""

    def test(candidate: Any) -> bool:
        listed = getattr(candidate, attribute, None)
        return isinstance(listed, list) and any(item is callback for item in listed)

    return test


def wrap_call(owner: Any, name: str, on_error: Callable[[BaseException], None]) -> bool:
    """Make ``owner.<name>(...)`` call ``on_error(exception)`` when it raises, then re-raise.

    Installed on the instance, once; a later callback on the same instance (a new
    ``AFSNotify`` for the next ``fit``) joins the existing wrapper. ``on_error`` is held
    weakly when it is a bound method, so the wrapper keeps no callback alive. Returns
    whether a wrapper was installed now.
    """
    original = getattr(owner, name, None)
    if original is None or not callable(original):
        return False
    reporters: list[Callable[[], Any]] | None = getattr(original, _WRAPPED, None)
    reference = _weak(on_error)
    if reporters is not None:
        if not any(existing() == on_error for existing in reporters):
            reporters.append(reference)
        return False
    reporters = [reference]

    @functools.wraps(original)
    def reporting(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except BaseException as error:
            for existing in list(reporters):
                report = existing()
                if report is None:
                    continue
                try:
                    report(error)
                except Exception:
                    log.exception("afs-callbacks: could not report the exception of %s()", name)
            raise

    setattr(reporting, _WRAPPED, reporters)
    try:
        setattr(owner, name, reporting)
    except (AttributeError, TypeError):
        return False
    return True


def _weak(function: Callable[[BaseException], None]) -> Callable[[], Any]:
    if hasattr(function, "__self__") and hasattr(function, "__func__"):
        return weakref.WeakMethod(function)  # type: ignore[arg-type]
    return lambda: function


def method_in_stack(
    owner_test: Callable[[Any], bool], names: tuple[str, ...], *, skip: int = 1
) -> str | None:
    """The name of the nearest method up the stack among ``names`` whose ``self`` passes
    ``owner_test`` (which public call is running: ``predict`` or ``evaluate``), else None."""
    for frame in _frames_above(skip + 1):
        if frame.f_code.co_name in names:
            candidate = frame.f_locals.get("self")
            try:
                if candidate is not None and owner_test(candidate):
                    return frame.f_code.co_name
            except Exception:
                pass
    return None


__all__ = [
    "STACK_DEPTH",
    "holder_in_stack",
    "holds",
    "method_in_stack",
    "wrap_call",
]
