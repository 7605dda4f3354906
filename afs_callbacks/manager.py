"""NotificationManager: the one door every event goes through.

``notify()`` builds an event, collapses storms, routes it to channels, writes it to the
outbox and wakes the channel's sender thread: all local work, no network, and it never
raises into the caller. Delivery happens on background threads (see ``delivery.sender``).
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.channels import CHANNELS, load_channel_class
from afs_callbacks.channels.base import ChannelStatus, NotificationHandler
from afs_callbacks.config import Env, Settings
from afs_callbacks.delivery.limits import StormGuard
from afs_callbacks.delivery.outbox import DEAD, DELIVERED, PENDING, SENDING, Outbox
from afs_callbacks.delivery.sender import ChannelWorker, RetryPolicy
from afs_callbacks.events import (
    DEFAULT_LEVELS,
    Attachment,
    EventType,
    NotificationEvent,
    NotificationLevel,
)
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import describe_exception, format_duration, format_metrics
from afs_callbacks.redaction import redact

log = get_logger(__name__)

_managers: weakref.WeakSet[NotificationManager] = weakref.WeakSet()


@dataclass(frozen=True)
class Route:
    """Which events a channel gets: a minimum level and, optionally, only some types."""

    min_level: NotificationLevel = NotificationLevel.INFO
    events: frozenset[EventType] | None = None

    def accepts(self, event: NotificationEvent) -> bool:
        """Whether ``event`` goes to the channel."""
        if event.level < self.min_level:
            return False
        return self.events is None or event.event_type in self.events


@dataclass(frozen=True)
class FlushReport:
    """What a flush achieved, per channel: delivered and dead during it, pending after it."""

    delivered: int
    dead: int
    pending: int
    by_channel: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is left pending and nothing died during the flush."""
        return self.pending == 0 and self.dead == 0


@dataclass
class _Registration:
    handler: NotificationHandler
    route: Route
    configured: bool = True
    worker: ChannelWorker | None = None


class NotificationManager:
    """Routes events to channels through a durable outbox and background senders.

    Args:
        handlers: channels to register at once, by name.
        settings: core options; default read from ``AFS_*`` environment variables.
        state_dir: overrides ``settings.state_dir`` (where the outbox database lives).
        context: fields added to every event (``project``, ``run_id``, ...).

    Example::

        manager = NotificationManager()
        manager.register_handler("desktop", DesktopNotifier())
        manager.notify_training_started("resnet", "run-1", epochs=10, batch_size=64)
    """

    def __init__(
        self,
        handlers: Mapping[str, NotificationHandler] | None = None,
        *,
        settings: Settings | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else _settings_from_environment()
        self.state_dir = os.fspath(state_dir) if state_dir is not None else str(self.settings.state_dir)
        self.context = dict(context or {})
        self.config_errors: dict[str, str] = {}
        self._registrations: dict[str, _Registration] = {}
        self._guard = StormGuard(self.settings.dedup_window)
        self._policy = RetryPolicy(
            max_attempts=self.settings.max_attempts,
            base=self.settings.retry_base,
            cap=self.settings.retry_cap,
            max_retry_after=self.settings.max_retry_after,
            send_timeout=self.settings.send_timeout,
        )
        self._lock = threading.RLock()
        self._progress = threading.Condition()
        self._outbox: Outbox | None = None
        self._housekeeper: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        # Flush reports count what finished since the previous report (or since creation),
        # so a message the sender delivered just before flush() is not missed.
        self._report_mark = time.time()
        self._host = socket.gethostname()
        self._console: _Registration | None = None
        _managers.add(self)
        for name, handler in (handlers or {}).items():
            self.register_handler(name, handler)

    # Configuration ------------------------------------------------------------------

    @classmethod
    def from_env(
        cls,
        env: Env | Mapping[str, str] | None = None,
        *,
        env_file: str | os.PathLike[str] | None = None,
        channels: Iterable[str] | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> NotificationManager:
        """A manager with every channel the environment (and ``.env``) configures.

        Args:
            env: the settings to read (default: ``os.environ`` over ``./.env``).
            env_file: a specific ``.env`` file.
            channels: only these channel names (default: all).
            strict: raise on a configuration error instead of logging it and going on
                without that channel (default: ``AFS_STRICT``).

        Raises:
            ConfigurationError: in strict mode, the first bad setting.
        """
        if not isinstance(env, Env):
            env = _open_env(env, env_file, strict)
        settings = _read_settings(env, strict)
        strict = settings.strict if strict is None else strict
        manager = cls(settings=settings, **kwargs)
        wanted = set(CHANNELS) if channels is None else set(channels)
        unknown = wanted - set(CHANNELS)
        if unknown:
            raise ConfigurationError("--channel", f"unknown channel(s): {', '.join(sorted(unknown))}")
        for name in CHANNELS:
            if name not in wanted or name == "console":
                continue
            try:
                handler = load_channel_class(name).from_env(env)
                if handler is None:
                    continue
                prefix = name.upper()
                route = Route(
                    env.level(f"{prefix}_MIN_LEVEL", NotificationLevel.INFO) or NotificationLevel.INFO,
                    env.event_types(f"{prefix}_EVENTS"),
                )
            except (ConfigurationError, ImportError) as error:
                if strict:
                    raise
                manager.config_errors[name] = redact(error)
                log.error("afs-callbacks: %s channel not used: %s", name, redact(error))
                continue
            manager.register_handler(name, handler, min_level=route.min_level, events=route.events)
        return manager

    def register_handler(
        self,
        name: str,
        handler: NotificationHandler,
        *,
        min_level: NotificationLevel | str | None = None,
        events: Iterable[EventType | str] | None = None,
    ) -> None:
        """Add a channel under ``name``, optionally only for some levels and event types.

        A handler that is not configured (no desktop session, missing URL) is kept for
        ``status()`` but receives nothing; the reason is logged once.
        """
        route = Route(
            NotificationLevel.parse(min_level) if min_level is not None else NotificationLevel.INFO,
            None if events is None else frozenset(EventType.parse(e) for e in events),
        )
        status = _safe_status(name, handler)
        if not status.configured:
            log.warning("afs-callbacks: %s channel is not usable: %s", name, status.reason)
        with self._lock:
            previous = self._registrations.pop(name, None)
            if previous is not None and previous.worker is not None:
                previous.worker.stop(timeout=0)
            self._registrations[name] = _Registration(handler, route, status.configured)

    def unregister_handler(self, name: str) -> None:
        """Remove a channel; its undelivered messages stay in the outbox."""
        with self._lock:
            registration = self._registrations.pop(name, None)
        if registration is not None and registration.worker is not None:
            registration.worker.stop(timeout=1.0)

    @property
    def handlers(self) -> dict[str, NotificationHandler]:
        """The registered channels by name."""
        with self._lock:
            return {name: reg.handler for name, reg in self._registrations.items()}

    def status(self) -> list[ChannelStatus]:
        """Every registered channel's status plus channels whose configuration failed."""
        statuses = [_safe_status(name, reg.handler) for name, reg in self.handlers_items()]
        statuses += [ChannelStatus(name, False, reason) for name, reason in self.config_errors.items()]
        return statuses

    def handlers_items(self) -> list[tuple[str, _Registration]]:
        """(name, registration) pairs, a snapshot."""
        with self._lock:
            return list(self._registrations.items())

    # Sending ------------------------------------------------------------------------

    def notify(
        self,
        title: str,
        message: str = "",
        event_type: EventType | str = EventType.CUSTOM,
        level: NotificationLevel | str | None = None,
        *,
        attachments: Sequence[Attachment] = (),
        **context: Any,
    ) -> NotificationEvent | None:
        """Accept a notification; return the stored event, or None if it was collapsed
        into a storm digest or could not be accepted. Never raises, never waits on a network.
        """
        try:
            kind = EventType.parse(event_type)
            event = NotificationEvent(
                event_type=kind,
                level=NotificationLevel.parse(level) if level is not None else DEFAULT_LEVELS[kind],
                title=title,
                message=message,
                context=context,
                attachments=tuple(attachments),
            )
        except Exception as error:
            log.error("afs-callbacks: notification dropped, bad arguments: %s", redact(error))
            return None
        return self.emit(event)

    def emit(self, event: NotificationEvent) -> NotificationEvent | None:
        """Accept a ready-made event (see :meth:`notify`)."""
        try:
            # Manager-wide context can hold the run_id the dedup key uses; otherwise enrich
            # only admitted events, so a collapsed storm event costs next to nothing.
            enriched = bool(self.context)
            if enriched:
                event = self._enrich(event)
            admitted, digest = self._guard.admit(event)
            if digest is not None:
                self._accept(self._enrich(digest))
            if not admitted:
                self._ensure_housekeeper()
                return None
            if not enriched:
                event = self._enrich(event)
            self._accept(event)
            return event
        except Exception:
            log.exception("afs-callbacks: could not accept a notification")
            return None

    def _enrich(self, event: NotificationEvent) -> NotificationEvent:
        context = _redact_values({"host": self._host, **self.context, **event.context})
        return event.with_changes(title=redact(event.title), message=redact(event.message), context=context)

    def _accept(self, event: NotificationEvent) -> None:
        targets = self._targets(event)
        self._get_outbox().enqueue(event, [name for name, _ in targets])
        for name, registration in targets:
            self._worker(name, registration).wake()
        _ensure_exit_hook()

    def _targets(self, event: NotificationEvent) -> list[tuple[str, _Registration]]:
        with self._lock:
            usable = [(name, reg) for name, reg in self._registrations.items() if reg.configured]
            mode = self.settings.console
            if mode == "always" or (mode == "auto" and not usable):
                usable.append(("console", self._console_registration()))
        return [(name, reg) for name, reg in usable if reg.route.accepts(event)]

    def _console_registration(self) -> _Registration:
        if self._console is None:
            from afs_callbacks.channels.console import ConsoleNotifier

            self._console = _Registration(ConsoleNotifier(), Route())
        return self._console

    def _worker(self, name: str, registration: _Registration) -> ChannelWorker:
        with self._lock:
            if registration.worker is None:
                registration.worker = ChannelWorker(
                    name, registration.handler, self._get_outbox(), self._policy, self._on_progress
                )
            if not self._stopping.is_set():
                registration.worker.start()
            return registration.worker

    def _get_outbox(self) -> Outbox:
        with self._lock:
            if self._outbox is None:
                path = os.path.join(self.state_dir, "outbox.sqlite3")
                try:
                    self._outbox = Outbox(path)
                except Exception as error:
                    log.error(
                        "afs-callbacks: cannot open the outbox at %s (%s); messages are kept in"
                        " memory only and are lost if this process dies. Set AFS_STATE_DIR.",
                        path,
                        error,
                    )
                    self._outbox = Outbox(":memory:")
                self._prune()
            return self._outbox

    def _prune(self) -> None:
        assert self._outbox is not None
        try:
            self._outbox.reclaim_orphans()
            self._outbox.prune(
                max_age_seconds=self.settings.retention_days * 86400,
                max_events=self.settings.max_history,
            )
        except Exception:
            log.exception("afs-callbacks: history housekeeping failed")

    def _on_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _ensure_housekeeper(self) -> None:
        with self._lock:
            if self._housekeeper is not None:
                return
            self._housekeeper = threading.Thread(target=self._emit_digests, name="afs-digests", daemon=True)
            self._housekeeper.start()

    def _emit_digests(self) -> None:
        # Runs only while some window holds back repeats; each closed window becomes a digest.
        while not self._stopping.wait(0.5):
            for digest in self._guard.due_digests():
                try:
                    self._accept(self._enrich(digest))
                except Exception:
                    log.exception("afs-callbacks: could not accept a digest")
            with self._lock:
                # Decided under the lock _ensure_housekeeper takes, so a repeat suppressed
                # just now either keeps this thread going or starts a new one.
                if not self._guard.has_suppressed():
                    self._housekeeper = None
                    return
        with self._lock:
            self._housekeeper = None

    # Flushing and closing -----------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        """The outbox/history this manager writes to."""
        return self._get_outbox()

    def flush(self, timeout: float | None = 10.0) -> FlushReport:
        """Try every pending message of the registered channels now, ignoring backoff.

        Each pending message is attempted at most once per flush. Returns what was
        delivered and what died since the previous flush (or since this manager was made),
        and what is still pending, also for channels this process has no handler for.
        """
        outbox = self._get_outbox()
        outbox.reclaim_orphans()
        started = time.time()
        deadline = None if timeout is None else time.monotonic() + timeout
        workers = [self._worker(name, reg) for name, reg in self._active_registrations()]
        names = [worker.name for worker in workers]
        for worker in workers:
            worker.forced_since = started
            worker.wake()
        try:
            with self._progress:
                while outbox.untried_since(names, started) > 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._progress.wait(0.1 if remaining is None else min(remaining, 0.1))
        finally:
            for worker in workers:
                worker.forced_since = None
        now = time.time()
        finished = outbox.finished_between(self._report_mark, now)
        self._report_mark = now
        return _report(finished, outbox.counts())

    def _active_registrations(self) -> list[tuple[str, _Registration]]:
        with self._lock:
            active = [(name, reg) for name, reg in self._registrations.items() if reg.configured]
            if self._console is not None:
                active.append(("console", self._console))
        return active

    def close(self, timeout: float | None = None) -> FlushReport | None:
        """Send what can be sent within ``timeout`` (default ``AFS_EXIT_FLUSH_TIMEOUT``),
        then stop the sender threads. Undelivered messages stay pending in the outbox."""
        if self._closed:
            return None
        self._closed = True
        report = None
        try:
            for digest in self._guard.due_digests(flush_all=True):
                self._accept(digest)
            if self._outbox is not None:
                wait = self.settings.exit_flush_timeout if timeout is None else timeout
                report = self.flush(wait)
        except Exception:
            log.exception("afs-callbacks: flush at close failed")
        self._stopping.set()
        registrations = [reg for _, reg in self.handlers_items()]
        if self._console is not None:
            registrations.append(self._console)
        for registration in registrations:
            if registration.worker is not None:
                registration.worker.stop(timeout=0.5)
            try:
                registration.handler.close()
            except Exception:
                log.exception("afs-callbacks: closing a channel failed")
        if self._outbox is not None:
            self._outbox.close()
        return report

    def __enter__(self) -> NotificationManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(); locks may have been held by one that did not.
        self._lock = threading.RLock()
        self._progress = threading.Condition()
        self._housekeeper = None
        self._guard.reset_lock()
        stopping, self._stopping = self._stopping, threading.Event()
        if stopping.is_set():
            self._stopping.set()
        for registration in self._registrations.values():
            registration.worker = None
        if self._console is not None:
            self._console.worker = None

    # The seed system's convenience methods ------------------------------------------

    def notify_training_started(
        self,
        model: str,
        run_id: str,
        epochs: int | None = None,
        batch_size: int | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """Training began."""
        plan = ", ".join(
            part
            for part in (
                f"{epochs} epochs" if epochs is not None else "",
                f"batch size {batch_size}" if batch_size is not None else "",
            )
            if part
        )
        return self.notify(
            f"Training started: {model}",
            f"Run {run_id} started" + (f" ({plan})." if plan else "."),
            EventType.TRAINING_STARTED,
            model=model,
            run_id=run_id,
            epochs=epochs,
            batch_size=batch_size,
            **context,
        )

    def notify_training_completed(
        self,
        model: str,
        run_id: str,
        duration: float | None = None,
        loss: float | None = None,
        metrics: Mapping[str, Any] | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """Training finished; ``duration`` in seconds, ``loss`` the final loss."""
        all_metrics = dict(metrics or {})
        if loss is not None:
            all_metrics.setdefault("loss", loss)
        parts = [f"Run {run_id} finished"]
        if duration is not None:
            parts.append(f"in {format_duration(duration)}")
        message = " ".join(parts) + "."
        if all_metrics:
            message += " " + format_metrics(all_metrics)
        return self.notify(
            f"Training completed: {model}",
            message,
            EventType.TRAINING_COMPLETED,
            model=model,
            run_id=run_id,
            duration=duration,
            metrics=all_metrics,
            **context,
        )

    def notify_training_failed(
        self, model: str, run_id: str, error: BaseException | str, **context: Any
    ) -> NotificationEvent | None:
        """Training crashed; ``error`` is the exception or its text."""
        text = describe_exception(error) if isinstance(error, BaseException) else redact(error)
        summary = text.strip().splitlines()[-1] if text.strip() else "unknown error"
        return self.notify(
            f"Training failed: {model}",
            text,
            EventType.TRAINING_FAILED,
            model=model,
            run_id=run_id,
            error=summary,
            **context,
        )

    def notify_cost_alert(
        self,
        current_cost: float,
        threshold: float,
        model_name: str | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """The run's cost passed ``threshold`` (same currency units as the hourly price)."""
        who = f" for {model_name}" if model_name else ""
        context.setdefault("key", f"{threshold:g}")
        return self.notify(
            f"Cost alert{who}: ${current_cost:,.2f}",
            f"Training cost ${current_cost:,.2f} passed the ${threshold:,.2f} threshold.",
            EventType.COST_THRESHOLD,
            model=model_name,
            cost=current_cost,
            threshold=threshold,
            **context,
        )

    def notify_evaluation_completed(
        self, model: str, run_id: str, metrics: Mapping[str, Any], **context: Any
    ) -> NotificationEvent | None:
        """An evaluation finished with ``metrics``."""
        return self.notify(
            f"Evaluation completed: {model}",
            format_metrics(metrics) or "no metrics",
            EventType.EVALUATION_COMPLETED,
            model=model,
            run_id=run_id,
            metrics=dict(metrics),
            **context,
        )


def _safe_status(name: str, handler: NotificationHandler) -> ChannelStatus:
    try:
        return handler.status()
    except Exception as error:
        return ChannelStatus(name, False, f"status check failed: {redact(error)}")


def _settings_from_environment() -> Settings:
    return _read_settings(_open_env(None, None, None), None)


def _report_config_error(error: ConfigurationError) -> None:
    log.error("afs-callbacks: %s (using the default)", redact(error))


def _strict_from(env: Mapping[str, str]) -> bool:
    try:
        return bool(Env(env, env_file=False).flag("AFS_STRICT"))
    except ConfigurationError as error:
        _report_config_error(error)
        return False


def _open_env(
    environ: Mapping[str, str] | None, env_file: str | os.PathLike[str] | None, strict: bool | None
) -> Env:
    """The environment over its ``.env`` file; a missing ``.env`` file named by
    ``AFS_ENV_FILE`` is reported and skipped unless in strict mode."""
    try:
        return Env(environ, env_file=env_file)
    except ConfigurationError as error:
        if strict or (strict is None and _strict_from(os.environ if environ is None else environ)):
            raise
        _report_config_error(error)
        return Env(environ, env_file=False)


def _read_settings(env: Env, strict: bool | None) -> Settings:
    """Core settings; in strict mode a bad value raises, otherwise it is logged once and
    that one option keeps its default."""
    if strict is None:
        strict = _strict_from(env)
    if strict:
        return Settings.from_env(env)
    return Settings.from_env(env, on_error=_report_config_error)


def _redact_values(value: Any) -> Any:
    """Redact every string in a context, however nested: an error text or a URL passed as a
    context field must not carry a secret into the history."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_values(item) for item in value]
    return value


def _report(
    finished: Mapping[str, Mapping[str, int]], counts: Mapping[str, Mapping[str, int]]
) -> FlushReport:
    by_channel: dict[str, dict[str, int]] = {}
    for channel in set(finished) | set(counts):
        done, now = finished.get(channel, {}), counts.get(channel, {})
        by_channel[channel] = {
            "delivered": done.get(DELIVERED, 0),
            "dead": done.get(DEAD, 0),
            "pending": now.get(PENDING, 0) + now.get(SENDING, 0),
        }
    return FlushReport(
        delivered=sum(c["delivered"] for c in by_channel.values()),
        dead=sum(c["dead"] for c in by_channel.values()),
        pending=sum(c["pending"] for c in by_channel.values()),
        by_channel=by_channel,
    )


_exit_hook_installed = False


def _ensure_exit_hook() -> None:
    global _exit_hook_installed
    if not _exit_hook_installed:
        _exit_hook_installed = True
        atexit.register(_close_all_at_exit)


def _close_all_at_exit() -> None:
    for manager in list(_managers):
        manager.close()


def _after_fork_in_child() -> None:
    for manager in list(_managers):
        manager._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
