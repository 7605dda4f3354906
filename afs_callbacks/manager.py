"""NotificationManager: the registry of channels and the one door every event goes through.

``notify()``, ``emit()`` and ``post()`` hand an event to admission
(:mod:`afs_callbacks.delivery.admission`: context, true repeats held back, valid, bounded
and redacted text, the channels that take it) and from there to the writer's queue: a
deque append, so the training thread never waits on a disk, a lock or a network, and
nothing here raises into the caller. Storing, sending, flushing and the exit flush live in
:mod:`afs_callbacks.delivery` (``writer``, ``outbox``, ``sender``, ``lifecycle``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from afs_callbacks import _pending as pending
from afs_callbacks import messages
from afs_callbacks._log import get_logger
from afs_callbacks.channels import REGISTRY, build_channel, channel_classes
from afs_callbacks.channels.base import ChannelStatus, NotificationHandler
from afs_callbacks.channels.variables import warn_unknown_variables
from afs_callbacks.config import Env, Settings, open_env, read_settings
from afs_callbacks.delivery.admission import Admission
from afs_callbacks.delivery.hooks import RunHooks
from afs_callbacks.delivery.lifecycle import FlushReport, Lifecycle, budget_policy, retry_policy, track
from afs_callbacks.delivery.limits import StormGuard
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.delivery.routing import Route, channel_status
from afs_callbacks.events import DEFAULT_LEVELS, Attachment, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import exception_report, lead_of, lead_with_error
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import MetricPoint, RunState

log = get_logger(__name__)

#: ``shared()``'s managers, by the settings they were built from.
_shared: dict[frozenset[tuple[str, str]], NotificationManager] = {}
_shared_lock = threading.Lock()

__all__ = ["STORE_END_SECONDS", "FlushReport", "NotificationManager", "Route", "StoredEnd"]


#: Longest :meth:`NotificationManager.emit_end` waits for a run's end to be stored.
STORE_END_SECONDS = 5.0


class StoredEnd:
    """A run's end as stored by :meth:`NotificationManager.emit_end`, its deliveries
    possibly held for a chart."""

    def __init__(self, event: NotificationEvent, admission: Admission, *, pushed: bool = True) -> None:
        self.event = event
        #: Whether some channel takes it: an end kept in the history only (a sweep's
        #: routine trial end) needs no chart drawn for it.
        self.pushed = pushed
        self._admission = admission

    def attach(self, attachments: Sequence[Attachment] = ()) -> None:
        """Add ``attachments`` (none: only release) and send the held deliveries now.
        Never raises."""
        self._admission.attach(self.event, attachments)


@dataclass
class _Registration:
    handler: NotificationHandler
    route: Route
    configured: bool = True


class NotificationManager:
    """Routes events to channels through a durable outbox and background senders.

    Args:
        handlers: channels to register at once, by name.
        settings: core options; default read from ``AFS_*`` environment variables.
        state_dir: overrides ``settings.state_dir`` (where the outbox database lives).
        context: fields added to every event (``project``, ``run_id``, ...).
        env: the settings the manager was built from; monitors read theirs from it too.

    With ``AFS_ENABLED=false`` the manager is inert: it sends nothing, starts no thread and
    writes no file.

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
        env: Env | None = None,
    ) -> None:
        if settings is None:
            env = open_env() if env is None else env
            settings = read_settings(env)
        channel_classes()  # every service's secret shapes, masked in event text from now on
        self.settings = settings
        self.env = env
        self.state_dir = os.fspath(state_dir) if state_dir is not None else str(settings.state_dir)
        self.context = dict(context or {})
        self.config_errors: dict[str, str] = {}
        self._registrations: dict[str, _Registration] = {}
        # Whether some channel takes an event of a (type, level): routes look at nothing else.
        self._pushed: dict[tuple[EventType, NotificationLevel], bool] = {}
        self._lock = threading.RLock()
        self._console: _Registration | None = None
        self._closed = False
        self._before_close: list[Callable[[], None]] = []
        self._delivery = Lifecycle(
            self.state_dir,
            retry_policy(settings),
            on_open=self._on_store_open,
            budget=budget_policy(settings),
        )
        self._admission = Admission(
            StormGuard(settings.dedup_window),
            self._route,
            self._delivery,
            context=self.context,
            verbosity=settings.verbosity,
        )
        self._runs = RunHooks(
            self._delivery,
            settings,
            self.state_dir,
            channels=self._configured,
            emit=self.emit,
        )
        track(self)
        for name, handler in (handlers or {}).items():
            self.register_handler(name, handler)

    @property
    def enabled(self) -> bool:
        """False when ``AFS_ENABLED`` turned the library off (nothing is sent or written)."""
        return self.settings.enabled

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
            ConfigurationError: in strict mode, the first bad setting; an unknown name in
                ``channels`` (named ``channels``) always.
        """
        if not isinstance(env, Env):
            env = open_env(env, env_file, strict)
        settings = read_settings(env, strict)
        strict = settings.strict if strict is None else strict
        wanted = set(REGISTRY) if channels is None else set(channels)
        unknown = wanted - set(REGISTRY)
        if unknown:
            raise ConfigurationError("channels", f"unknown channel(s): {', '.join(sorted(unknown))}")
        manager = cls(settings=settings, env=env, **kwargs)
        for name in REGISTRY:
            if name in wanted and name != "console":
                manager._register_from_env(name, env, strict)
        if settings.enabled:  # a misspelt SLAK_WEBHOOK_URL is named at run time too
            warn_unknown_variables(env, env.file_names, configured=bool(manager._configured()))
        return manager

    @classmethod
    def shared(cls) -> NotificationManager:
        """The process's manager for the environment as it is now (and its ``.env``):
        built by :meth:`from_env` on first use and handed to every later caller while the
        settings are the same and it is open. The default of every callback given no
        manager, so that a sweep's hundred trials in one process share one store
        connection, one writer and one sender per channel, instead of a set each that
        lives until exit. Changed settings (another ``AFS_STATE_DIR``, a channel added)
        get a manager of their own."""
        env = open_env()
        key = frozenset(env.items()) | {("\0env_file", str(env.env_file))}
        with _shared_lock:
            manager = _shared.get(key)
            if manager is None or manager._closed:
                manager = _shared[key] = cls.from_env(env)
            return manager

    def _register_from_env(self, name: str, env: Env, strict: bool) -> None:
        spec = REGISTRY[name]
        try:
            # The core settings reach the channel (send timeout, plain-http opt-in).
            handler = build_channel(name, env, self.settings)
            if handler is None:
                return
            prefix = spec.prefix
            default_level = NotificationLevel.parse(spec.min_level)
            min_level = env.level(f"{prefix}_MIN_LEVEL", default_level) or default_level
            events = env.event_types(f"{prefix}_EVENTS")
            cards = env.flag(f"{prefix}_CARD", True)
        except (ConfigurationError, ImportError) as error:
            if strict:
                raise
            self.config_errors[name] = redact(error)
            log.error("afs-callbacks: %s channel not used: %s", name, redact(error))
            return
        self.register_handler(name, handler, min_level=min_level, events=events)
        if not cards:
            self._runs.cards_off.add(name)

    def register_handler(
        self,
        name: str,
        handler: NotificationHandler,
        *,
        min_level: NotificationLevel | str | None = None,
        events: Iterable[EventType | str] | None = None,
    ) -> None:
        """Add a channel under ``name``, optionally only for some levels and event types.

        ``events`` names the types the channel gets whatever ``AFS_VERBOSITY`` says. A
        handler that is not configured (``status()`` or ``is_configured()`` says so) is kept
        for ``status()`` but receives nothing; the reason is logged once.
        """
        route = Route(
            NotificationLevel.parse(min_level) if min_level is not None else NotificationLevel.INFO,
            None if events is None else frozenset(EventType.parse(e) for e in events),
        )
        status = channel_status(name, handler)
        if not status.configured:
            log.warning("afs-callbacks: %s channel is not usable: %s", name, status.reason)
        with self._lock:
            self._registrations[name] = _Registration(handler, route, status.configured)
            self._pushed = {}
        self._delivery.forget_worker(name, timeout=0)

    def unregister_handler(self, name: str) -> None:
        """Remove a channel; its undelivered messages stay in the outbox."""
        with self._lock:
            self._registrations.pop(name, None)
            self._pushed = {}
        self._delivery.forget_worker(name, timeout=1.0)

    @property
    def handlers(self) -> dict[str, NotificationHandler]:
        """The registered channels by name."""
        with self._lock:
            return {name: reg.handler for name, reg in self._registrations.items()}

    def status(self) -> list[ChannelStatus]:
        """Every registered channel's status plus channels whose configuration failed."""
        statuses = [channel_status(name, reg.handler) for name, reg in self.handlers_items()]
        statuses += [ChannelStatus(name, False, reason) for name, reason in self.config_errors.items()]
        return statuses

    def handlers_items(self) -> list[tuple[str, _Registration]]:
        """(name, registration) pairs, a snapshot."""
        with self._lock:
            return list(self._registrations.items())

    # Admission -----------------------------------------------------------------------

    def notify(
        self,
        title: str,
        message: str = "",
        event_type: EventType | str = EventType.CUSTOM,
        level: NotificationLevel | str | None = None,
        *,
        attachments: Sequence[Attachment] = (),
        key: str = "",
        **context: Any,
    ) -> NotificationEvent | None:
        """Accept a notification; return the stored event, or None if it was collapsed as a
        repeat or could not be accepted. Never raises, never waits on a disk or a network.

        ``key`` marks repeats: alerts (warning or worse) of one type and run with the same
        key collapse whatever their text; other messages only when their text is the same. A
        message sent by name here is pushed whatever ``AFS_VERBOSITY`` says (only the
        channels' routes apply); the verbosity governs the run events of :meth:`emit`.
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
                key=str(key or ""),
            )
        except Exception as error:
            log.error("afs-callbacks: notification dropped, bad arguments: %s", redact(error))
            return None
        return self._admission.now(event, "verbose") if self.settings.enabled else None

    def emit(self, event: NotificationEvent) -> NotificationEvent | None:
        """Accept a ready-made run event (the tracker's sink); see :meth:`notify`.

        Which channels get it follows ``AFS_VERBOSITY``: at ``normal`` a run's progress
        (epochs, improvements, checkpoints) is kept in the history, not pushed.
        """
        return self._admission.now(event, self.settings.verbosity) if self.settings.enabled else None

    def emit_end(self, event: NotificationEvent, *, hold: float = 0.0) -> StoredEnd | None:
        """Accept a run's end and return once it is stored (see :meth:`emit`): a launcher
        may end the process right after training returns (Ray Tune, ``os._exit``, a
        multiprocessing worker), and the end must survive it. Waits at most
        :data:`STORE_END_SECONDS` for the outbox write (never for a network).

        ``hold``: seconds its deliveries wait before they go, for the chart being drawn;
        :meth:`StoredEnd.attach` adds it and sends them at once (no wait when no channel
        takes the end: :attr:`StoredEnd.pushed`). If the process dies
        first, the end goes without the chart once the hold is over (another process
        sharing the state directory, or the death watcher, sends it). Returns None when
        nothing was stored (disabled, a repeat held back).
        """
        if not self.settings.enabled:
            return None
        pushed = bool(self._targets(event, self.settings.verbosity))
        hold_until = time.time() + hold if hold > 0 and pushed else 0.0
        stored = self._admission.now(event, self.settings.verbosity, hold_until=hold_until)
        if stored is None:
            return None
        if not self._delivery.store_queued(STORE_END_SECONDS):
            log.warning(
                "afs-callbacks: the end of run %s was not stored within %.0f s; it is sent if"
                " this process lives on",
                event.run_id,
                STORE_END_SECONDS,
            )
        return StoredEnd(stored, self._admission, pushed=pushed)

    def post(self, event: NotificationEvent) -> None:
        """Hand a run event over from a training thread: :meth:`emit`, with admission's steps
        run on the writer thread, so the caller pays a deque append. Returns nothing: the
        event as stored is known only there."""
        if self.settings.enabled:
            self._admission.later(event, hurry=self._is_pushed(event))

    def _is_pushed(self, event: NotificationEvent) -> bool:
        """Whether some channel takes ``event`` (then progress is stored at once, not
        gathered: a run that ends meanwhile would make it stale). A dict lookup after the
        first event of each type and level."""
        key = (event.event_type, event.level)
        pushed = self._pushed.get(key)
        if pushed is None:
            pushed = self._pushed[key] = bool(self._targets(event, self.settings.verbosity))
        return pushed

    # Routing (admission's route step) ------------------------------------------------

    def _route(self, event: NotificationEvent, verbosity: str) -> list[tuple[str, NotificationHandler]]:
        """The channels that take ``event`` at ``verbosity``."""
        return [(name, reg.handler) for name, reg in self._targets(event, verbosity)]

    def _targets(self, event: NotificationEvent, verbosity: str) -> list[tuple[str, _Registration]]:
        with self._lock:
            usable = [(name, reg) for name, reg in self._registrations.items() if reg.configured]
            mode = self.settings.console
            if mode == "always" or (mode == "auto" and not usable):
                usable.append(("console", self._console_registration()))
        return [(name, reg) for name, reg in usable if reg.route.accepts(event, verbosity)]

    def _console_registration(self) -> _Registration:
        if self._console is None:
            from afs_callbacks.channels.console import ConsoleNotifier

            self._console = _Registration(ConsoleNotifier(), Route())
        return self._console

    # Run states ----------------------------------------------------------------------

    def update_run(self, state: RunState, points: Sequence[MetricPoint] = ()) -> None:
        """Queue a run's latest state and new metric points (history, dashboard, live
        cards). Latest wins per run; stored off the calling thread; never raises."""
        if self.settings.enabled:
            self._runs.update(state, points)

    def prepare(self) -> None:
        """Get ready for a run about to start (a callback's ``setup``, before the training
        loop): start the writer, which opens and tidies the store; the senders of the
        channels a run's start goes to; and the death watcher. The run's first hook then
        only hands over, instead of paying thread starts and the open inside the loop.
        Cheap when already done (a sweep's next trial); never raises."""
        if not self.settings.enabled or self._closed:
            return
        try:
            probe = NotificationEvent(EventType.TRAINING_STARTED, NotificationLevel.INFO, "")
            self._delivery.prepare(self._route(probe, self.settings.verbosity))
            self._runs.prepare()
        except Exception as error:
            log.error("afs-callbacks: could not get ready for the run: %s", redact(error))

    def on_store_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` on a background thread after another process wrote to the
        store (at most about once a second; run control reads its commands so). Returns
        the function that stops it. Never raises."""
        return self._delivery.changes.listen(listener)

    def store_changed(self) -> None:
        """This process wrote something the store's listeners want (a chat poller stored a
        command): tell them now."""
        self._delivery.changes.poke()

    def _on_store_open(self) -> None:
        self._runs.store_opened()

    # The seed API ------------------------------------------------------------------
    # The old code's convenience methods over notify(), each worded exactly as the run
    # tracker words the same event (both use afs_callbacks.messages).

    def notify_training_started(
        self,
        model: str,
        run_id: str,
        epochs: int | None = None,
        batch_size: int | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """Training began."""
        text = messages.training_started(
            model, run_id, plan_text=messages.plan(epochs, batch_size=batch_size)
        )
        return self.notify(
            text.title,
            text.body,
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
        text = messages.training_completed(
            model, run_id, messages.Summary(duration=duration, final=all_metrics)
        )
        return self.notify(
            text.title,
            text.body,
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
        if isinstance(error, BaseException):
            report = exception_report(error)
            text = messages.training_failed(
                model, report, step=context.get("step"), epoch=context.get("epoch")
            )
            context.setdefault("traceback", report.traceback)
            summary = report.headline
        else:
            # A pasted traceback (``afs-notify error --error "$(tail log)"``) leads with
            # its error, as an exception's report does.
            detail = lead_with_error(redact(error))
            text = messages.training_failed(model, detail)
            summary = lead_of(detail).splitlines()[0] if detail.strip() else "unknown error"
        return self.notify(
            text.title,
            text.body,
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
        text = messages.cost_alert(current_cost, threshold, model_name)
        key = str(context.pop("key", "") or f"{threshold:g}")
        return self.notify(
            text.title,
            text.body,
            EventType.COST_THRESHOLD,
            key=key,
            model=model_name,
            cost=current_cost,
            threshold=threshold,
            **context,
        )

    def notify_evaluation_completed(
        self, model: str, run_id: str, metrics: Mapping[str, Any], **context: Any
    ) -> NotificationEvent | None:
        """An evaluation finished with ``metrics``."""
        text = messages.evaluation_completed(model, metrics)
        return self.notify(
            text.title,
            text.body,
            EventType.EVALUATION_COMPLETED,
            model=model,
            run_id=run_id,
            metrics=dict(metrics),
            **context,
        )

    # Flushing and closing -----------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        """The outbox/history this manager writes to (opened now, for reading)."""
        return self._delivery.opened_store()

    def flush(self, timeout: float | None = 10.0) -> FlushReport:
        """Store what is queued, then try every pending message of the registered channels
        now, ignoring backoff; never raises.

        Returns what was delivered and what died since the previous flush (or since this
        manager was made), and what is still pending, also for channels this process has no
        handler for.
        """
        if not self.settings.enabled:
            return FlushReport(0, 0, 0)
        started = time.monotonic()
        pending.wait(timeout, owner=self)  # a completion still drawing its chart is part of "what is queued"
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return self._delivery.flush(self._active(), left)

    def _configured(self) -> list[tuple[str, NotificationHandler]]:
        """The registered channels that can be used (the console aside)."""
        with self._lock:
            return [(name, reg.handler) for name, reg in self._registrations.items() if reg.configured]

    def _active(self) -> list[tuple[str, NotificationHandler]]:
        active = self._configured()
        console = self._console
        if console is not None:
            active.append(("console", console.handler))
        return active

    def before_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when this manager closes (at the latest at process exit),
        before its last flush: what waits for a quiet moment to speak (a sweep's summary)
        speaks then. A callback that raises is logged; the close goes on."""
        with self._lock:
            self._before_close.append(callback)

    def close(self, timeout: float | None = None) -> FlushReport | None:
        """Send what can be sent within ``timeout`` (default ``AFS_EXIT_FLUSH_TIMEOUT``),
        then stop the sender threads. Undelivered messages stay pending in the outbox."""
        if self._closed:
            return None
        self._closed = True
        if not self.settings.enabled:
            return None
        with self._lock:
            callbacks, self._before_close = self._before_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception as error:
                log.error("afs-callbacks: a closing step failed: %s", redact(error))
        wait = self.settings.exit_flush_timeout if timeout is None else timeout
        report = None
        started = time.monotonic()
        pending.wait(wait, owner=self)
        try:
            self._admission.close()
            # One budget for both: the cards' last edits take at most half of it.
            self._runs.close(wait / 2)
            report = self._delivery.close(self._active(), max(0.0, wait - (time.monotonic() - started)))
        except Exception as error:
            log.error("afs-callbacks: closing the manager failed: %s", redact(error))
        for _, handler in self._active() + [
            (n, r.handler) for n, r in self.handlers_items() if not r.configured
        ]:
            try:
                handler.close()
            except Exception as error:
                log.error("afs-callbacks: closing a channel failed: %s", redact(error))
        return report

    def __enter__(self) -> NotificationManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(); locks may have been held by one that did not.
        self._lock = threading.RLock()
        self._before_close = []  # the parent's closing steps act on the parent's threads
        self._admission.after_fork_in_child()
        self._delivery.after_fork_in_child()
        self._runs.after_fork_in_child()
