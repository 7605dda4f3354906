"""Report the crash of any training code: ``with afs_callbacks.watch(): trainer.train()``.

Hugging Face's Trainer and Keras' ``fit()`` have no exception hook: when training raises,
their callbacks never hear of it. :func:`watch` closes that gap for any framework (or a
plain loop). As a context manager or a decorator it reports what escapes the block through
the run's :class:`~afs_callbacks.tracking.RunTracker` — out of memory, Ctrl-C or SIGTERM as
an interruption, anything else as a failure — waits (bounded) for the message to be
delivered, and re-raises::

    import afs_callbacks

    with afs_callbacks.watch():        # the run AFSNotify announced, or a new one
        trainer.train()

    @afs_callbacks.watch(model_name="resnet")
    def main() -> None: ...

While a block is watched from the main thread, SIGTERM (cluster preemption, ``scancel``)
raises :class:`TerminatedBySignal` instead of killing the process silently, so the
interruption is reported before the process exits with status 143. This happens only
when SIGTERM still has Python's default handling: a handler someone else installed wins.

The framework callbacks also install :func:`install_excepthook`, a fallback for code that
is not wrapped: an uncaught exception is reported on the active run, then the previous
``sys.excepthook`` runs as before.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import types
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from afs_callbacks._log import get_logger
from afs_callbacks.manager import NotificationManager
from afs_callbacks.tracking import RunTracker, TrackerConfig, active_tracker
from afs_callbacks.tracking.classify import was_reported

log = get_logger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: The exit status of a process stopped by SIGTERM, as a shell reports it.
SIGTERM_EXIT_CODE = 128 + int(signal.SIGTERM)

_lock = threading.Lock()
_handler_pid: int | None = None  # the process whose SIGTERM handler is ours
_open_blocks = 0  # watch() blocks running now, in any thread
_terminated = False


class TerminatedBySignal(SystemExit):
    """SIGTERM arrived while a run was watched; raised in the main thread.

    A :class:`SystemExit`, so an uncaught one ends the process quietly with status
    ``128 + signum`` (143), as the default SIGTERM handling would have, after every
    ``finally`` block and the interruption report have run.
    """

    def __init__(self, signum: int = int(signal.SIGTERM)) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class Watch(contextlib.ContextDecorator):
    """Reports an exception escaping its block (see :func:`watch`), then re-raises it."""

    def __init__(self, target: RunTracker | NotificationManager | None, config: TrackerConfig) -> None:
        self._target = target
        self._config = config
        self._restore: Callable[[], None] | None = None
        self._own: RunTracker | None = None

    def _recreate_cm(self) -> Watch:
        # A decorated function may run in several threads or recursively: one state per call.
        return Watch(self._target, self._config)

    def __enter__(self) -> Watch:
        global _open_blocks
        with _lock:
            _open_blocks += 1
        self._restore = install_sigterm_handler()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _open_blocks
        with _lock:
            _open_blocks -= 1
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()
        if exc is not None and is_failure(exc) and not was_reported(exc):
            self.report(exc)
        # Returning None re-raises: the program fails as it would have without us.

    def report(self, error: BaseException) -> None:
        """Report ``error`` on the run (OUT_OF_MEMORY, TRAINING_INTERRUPTED or
        TRAINING_FAILED), once per run; never raises."""
        try:
            self.tracker().failed(error)
        except Exception:
            log.exception("afs-callbacks: could not report the crash")

    def tracker(self) -> RunTracker:
        """The run a crash is reported on: the tracker given to :func:`watch`, else the run
        a callback announced (:func:`~afs_callbacks.tracking.active_tracker`), else a new
        one for the manager given (or the environment's channels)."""
        if isinstance(self._target, RunTracker):
            return self._target
        running = active_tracker()
        # A run that reports elsewhere is not this block's: watch(manager) names where the
        # crash goes, and a stale run left behind by other code must not take it.
        if running is not None and (self._target is None or running.manager is self._target):
            return running
        if self._own is None:
            self._own = RunTracker(manager=self._target, config=self._config)
        return self._own


@overload
def watch(target: Callable[_P, _R], /) -> Callable[_P, _R]: ...


@overload
def watch(target: RunTracker | NotificationManager | None = None, /, **config: Any) -> Watch: ...


def watch(target: Any = None, /, **config: Any) -> Any:
    """Report a crash, Ctrl-C or SIGTERM of the training code inside the block.

    Args:
        target: the :class:`~afs_callbacks.tracking.RunTracker` to report on, or the
            :class:`~afs_callbacks.manager.NotificationManager` to report through when no
            run is active. Default: the run a framework callback has announced, else a
            new run whose channels come from the environment (or ``.env``).
        **config: :class:`~afs_callbacks.tracking.TrackerConfig` fields (``model_name``,
            ``run_id``, ``flush_timeout``...) for that new run; ignored when a run is
            already active.

    Returns:
        A context manager that is also a decorator. ``@watch`` without parentheses
        decorates a function directly.

    Raises:
        TypeError: an unknown ``config`` field.
        ValueError: a ``config`` value out of range.

    Example::

        with afs_callbacks.watch():
            trainer.train()        # a crash here is reported, then raised as usual
    """
    if callable(target) and not isinstance(target, (RunTracker, NotificationManager)):
        if config:
            raise TypeError("watch(function) takes no settings; use @watch(**settings)")
        decorate: Callable[..., Any] = Watch(None, TrackerConfig())
        return decorate(target)
    if target is not None and not isinstance(target, (RunTracker, NotificationManager)):
        raise TypeError(f"watch({target!r}): expected a RunTracker or a NotificationManager")
    return Watch(target, TrackerConfig(**config))


def is_failure(error: BaseException) -> bool:
    """Whether ``error`` ending a block is news: not a clean ``sys.exit()`` or a closed
    generator."""
    if isinstance(error, GeneratorExit):
        return False
    return not (isinstance(error, SystemExit) and error.code in (None, 0))


# SIGTERM --------------------------------------------------------------------------------


def install_sigterm_handler() -> Callable[[], None] | None:
    """Make SIGTERM raise :class:`TerminatedBySignal` in the main thread.

    Only when SIGTERM has its default handling and this is the main thread (Python
    allows handlers nowhere else). The handler raises only while a :func:`watch` block
    is open or a run is active; otherwise SIGTERM ends the process as by default.
    Returns the function that puts the default back, or None when nothing was installed.
    """
    global _handler_pid
    if threading.current_thread() is not threading.main_thread():
        return None
    with _lock:
        try:
            if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
                return None
            signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # an embedded interpreter without signals
            return None
        _handler_pid = os.getpid()
    return _restore_sigterm


def _restore_sigterm() -> None:
    with _lock, contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminated
    if os.getpid() != _handler_pid or (_open_blocks == 0 and active_tracker() is None):
        # A forked child (a DataLoader worker) inherited the handler, or a callback's run
        # crashed before it could put the default back: die as the process would have.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if not _terminated:
        _terminated = True
        # An uncaught SystemExit skips sys.excepthook; this reports a run that no
        # watch() block saw end. Registered now, it runs before the managers close.
        atexit.register(_report_termination)
    raise TerminatedBySignal(signum)


def _report_termination() -> None:
    tracker = active_tracker()
    if tracker is not None:
        tracker.failed(TerminatedBySignal())


# sys.excepthook fallback ------------------------------------------------------------------


class _ExceptHook:
    """Calls the previous ``sys.excepthook``, then reports the crash on the active run."""

    def __init__(self, previous: Callable[..., Any]) -> None:
        self.previous = previous

    def __call__(
        self, exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None
    ) -> None:
        try:
            # The traceback first: the report below may wait a few seconds for delivery.
            self.previous(exc_type, exc, traceback)
        finally:
            tracker = active_tracker()
            if tracker is not None and is_failure(exc) and not was_reported(exc):
                try:
                    tracker.failed(exc)
                except Exception:  # an exit path must not print a second traceback
                    log.debug("afs-callbacks: could not report the crash", exc_info=True)


def install_excepthook() -> None:
    """Report uncaught exceptions on the active run, then call the previous hook.

    Idempotent. Only a run that was started and has not ended is reported on; without
    one, the hook does nothing but call the previous one. (IPython and Jupyter do not use
    ``sys.excepthook`` for a cell's error: wrap training in :func:`watch` there.)
    """
    with _lock:
        if not isinstance(sys.excepthook, _ExceptHook):
            sys.excepthook = _ExceptHook(sys.excepthook)


def uninstall_excepthook() -> None:
    """Put the hook that :func:`install_excepthook` replaced back, if it is still in place."""
    with _lock:
        if isinstance(sys.excepthook, _ExceptHook):
            sys.excepthook = sys.excepthook.previous


# ``afs_callbacks.watch`` names this function, but importing this module makes the package
# attribute the module itself: let the module be called like the function, so
# ``afs_callbacks.watch(...)`` works whichever import came first.
class _WatchModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return watch(*args, **kwargs)


sys.modules[__name__].__class__ = _WatchModule

__all__ = [
    "SIGTERM_EXIT_CODE",
    "TerminatedBySignal",
    "Watch",
    "install_excepthook",
    "install_sigterm_handler",
    "is_failure",
    "uninstall_excepthook",
    "watch",
]
