"""The daemon polling thread every monitor shares, and alert hysteresis.

A monitor reads something every ``interval`` seconds on a daemon thread and tells the
manager when a value crosses a threshold. :class:`Poller` owns the thread (started lazily,
stopped promptly with ``Event.wait``, never crashing the process) and :class:`Hysteresis`
turns a noisy value into one alert per crossing.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from afs_callbacks._log import get_logger
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError

if TYPE_CHECKING:
    from afs_callbacks.manager import NotificationManager

log = get_logger(__name__)

#: The shortest polling interval allowed: a query can take a driver lock, and nobody needs
#: resource figures more often than once a second.
MIN_INTERVAL = 1.0

_P = TypeVar("_P", bound="Poller")


@dataclass(frozen=True)
class MonitorStatus:
    """What a monitor is doing, for ``status`` displays and the training summary.

    Attributes:
        name: ``gpu``, ``system`` or ``cost``.
        active: whether it is producing readings.
        reason: one sentence: what it watches, or why it cannot (``no GPU stats: ...``).
    """

    name: str
    active: bool
    reason: str


class Hysteresis:
    """One alert per crossing: fire when a value reaches ``trigger``, re-arm only after it
    falls back past ``rearm``.

    A value hovering at the threshold is one message, not hundreds. With ``above=False`` the
    direction flips (fire when the value falls to ``trigger`` or below, re-arm above
    ``rearm``), for "free space below X".

    Args:
        trigger: the threshold.
        rearm: where the value must return before the next alert.
        above: alert on rising values (default) or on falling ones.

    Example::

        memory = Hysteresis(0.85, 0.80)
        [memory.update(v) for v in (0.5, 0.86, 0.84, 0.90, 0.79, 0.86)]
        # [False, True, False, False, False, True]
    """

    def __init__(self, trigger: float, rearm: float, *, above: bool = True) -> None:
        if (rearm > trigger) if above else (rearm < trigger):
            raise ValueError(f"rearm {rearm} is on the wrong side of trigger {trigger}")
        self.trigger = trigger
        self.rearm = rearm
        self.above = above
        self.armed = True

    def crossed(self, value: float) -> bool:
        """Whether ``value`` is past the trigger (regardless of arming)."""
        return value >= self.trigger if self.above else value <= self.trigger

    def update(self, value: float) -> bool:
        """Feed a reading; True exactly when it is a new crossing worth an alert."""
        if self.armed and self.crossed(value):
            self.armed = False
            return True
        if not self.armed and (value < self.rearm if self.above else value > self.rearm):
            self.armed = True
        return False


class Poller:
    """Base of the monitors: a daemon thread calling :meth:`poll_once` every ``interval``.

    Nothing runs until :meth:`start` (or ``with monitor:``), so a monitor can be built in a
    parent process and pickled to DDP workers: threads and handles are created lazily and
    dropped when pickled. :meth:`poll_once` never raises; a failing poll is logged once.

    Args:
        manager: where alerts go.
        interval: seconds between readings, at least 1.
        run_id: the run the alerts belong to.
        model: the model name shown in alerts.
        context: more fields added to every alert.

    Raises:
        ConfigurationError: ``interval`` is below one second or not a number.
    """

    #: Short name used in statuses and thread names.
    name: ClassVar[str] = "monitor"

    def __init__(
        self,
        manager: NotificationManager,
        *,
        interval: float,
        run_id: str | None = None,
        model: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(interval, (int, float)) or not interval >= MIN_INTERVAL:
            raise ConfigurationError(
                f"{type(self).__name__}(interval={interval!r})",
                f"must be at least {MIN_INTERVAL:g} second",
            )
        self.manager = manager
        self.interval = float(interval)
        fields = {"run_id": run_id, "model": model, **(context or {})}
        self.context = {key: value for key, value in fields.items() if value is not None}
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_failed = False

    # Running ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the polling thread is alive (in this process)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self: _P) -> _P:
        """Start polling on a daemon thread (a no-op when already running); returns self."""
        with self._lock:
            if not self.running:
                self._begin()
                self._stop_event = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop_event,), name=f"afs-{self.name}-monitor", daemon=True
                )
                self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and release what the monitor holds; never raises.

        Returns as soon as the thread is between two readings; a reading stuck in a driver
        call is abandoned after ``timeout`` (the daemon thread then cleans up on its own).
        """
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("afs-callbacks: the %s monitor did not stop within %g s", self.name, timeout)
                return
        self._safe_release()

    def poll_once(self) -> None:
        """Take one reading now and alert on it; never raises (tests drive monitors with it)."""
        with self._lock:
            try:
                self._poll()
            except Exception:
                # One traceback, then quiet: a broken poll would otherwise log every interval.
                if not self._poll_failed:
                    self._poll_failed = True
                    log.exception("afs-callbacks: the %s monitor failed to take a reading", self.name)
                else:
                    log.debug("afs-callbacks: the %s monitor failed again", self.name, exc_info=True)

    def _run(self, stop: threading.Event) -> None:
        try:
            self.poll_once()
            while not self._done() and not stop.wait(self._safe_wait()):
                self.poll_once()
        finally:
            if stop.is_set():
                self._safe_release()

    def _safe_wait(self) -> float:
        try:
            return max(MIN_INTERVAL, min(self._next_wait(), self.interval))
        except Exception:
            return self.interval

    def _safe_release(self) -> None:
        with self._lock:
            try:
                self._release()
            except Exception:
                log.exception("afs-callbacks: the %s monitor failed to clean up", self.name)

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # What subclasses provide --------------------------------------------------------

    def _poll(self) -> None:
        raise NotImplementedError

    def _done(self) -> bool:
        """True when polling has nothing left to do (no GPU): the thread then ends."""
        return False

    def _begin(self) -> None:
        """Called by :meth:`start` before the thread runs (the cost clock starts here)."""

    def _release(self) -> None:
        """Free what polling acquired (NVML); called once polling has stopped."""

    def _next_wait(self) -> float:
        return self.interval

    def status(self) -> MonitorStatus:
        """What the monitor watches, or why it cannot."""
        return MonitorStatus(self.name, self.running, "running" if self.running else "stopped")

    # Helpers ------------------------------------------------------------------------

    def _alert(
        self,
        event_type: EventType,
        level: NotificationLevel,
        title: str,
        message: str,
        **context: Any,
    ) -> None:
        self.manager.notify(title, message, event_type, level, **{**self.context, **context})

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks (and what they hold) to the workers: threads, locks
        # and events cannot travel, and the worker must start its own anyway.
        state = self.__dict__.copy()
        for name in ("_lock", "_stop_event", "_thread"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._thread = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(interval={self.interval:g}, running={self.running})"


def as_fraction(value: float, what: str) -> float:
    """Check that ``value`` is a fraction in (0, 1].

    Raises:
        ConfigurationError: naming ``what`` (the argument as the caller wrote it).
    """
    if not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigurationError(what, f"must be a fraction between 0 and 1, got {value!r}")
    return float(value)
