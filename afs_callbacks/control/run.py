"""The run's side of control: read its commands off the training thread, hand them to the
tracker, record how they went.

:func:`attach` gives a started run a :class:`RunControl` (adapters call it on global rank
zero: rank zero receives commands, the ranks agree at a step). The control listens for
other processes' writes to the store (``manager.on_store_change``: piggy-backed on the
senders' once-a-second look, no thread of its own), reads the commands of its run, and
for each one still ``pending``:

* too old (``AFS_CONTROL_MAX_AGE``) → ``expired``;
* from a surface this run does not take → ``refused``;
* else ``accepted`` and handed to the tracker (:meth:`RunTracker.ask
  <afs_callbacks.tracking.tracker.RunTracker.ask>`), whose step hook then returns True: the
  training thread's whole cost is that one flag. The adapter acts at its next safe point
  and answers; the answer is written to the store by a recorder thread that sleeps
  without a timeout while there is nothing to write (no wake-up when idle).

Every command of the run, refused ones included, goes into the run's state
(``RunState.control["recent"]``), so the card and the dashboard show it.

:func:`ask` is the seam for rules (and any code inside the run's process): stop or save a
checkpoint, with a reason and a source, recorded like any other command.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.control.commands import STATUS, recent_entry, this_host
from afs_callbacks.control.policy import RULE, SLACK, TELEGRAM, ControlPolicy
from afs_callbacks.delivery.outbox import (
    ACCEPTED,
    DONE,
    EXPIRED,
    QUEUED,
    REFUSED,
    Command,
    Outbox,
)
from afs_callbacks.redaction import redact
from afs_callbacks.tracking.asks import Ask
from afs_callbacks.tracking.tracker import RunTracker

log = get_logger(__name__)

#: Commands a run's state keeps for its card and the dashboard, newest first.
RECENT = 5
#: Seconds the exit waits for answers still being written.
EXIT_WAIT = 2.0

_controls: weakref.WeakKeyDictionary[RunTracker, RunControl] = weakref.WeakKeyDictionary()


class RunControl:
    """Connects one run's tracker to its commands in the store (see the module docstring).

    Args:
        tracker: the run (started, global rank zero).
        manager: its manager: the store, the store's change listeners, the settings.
        policy: who may command (default: from the manager's settings).
    """

    def __init__(self, tracker: RunTracker, manager: Any, policy: ControlPolicy | None = None) -> None:
        self.tracker = tracker
        self.manager = manager
        self.policy = policy or ControlPolicy.from_settings(manager.settings, manager.env)
        self.host = this_host()
        self._lock = threading.Lock()
        self._since = time.time() - 1.0
        self._seen: dict[str, tuple[str, str]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._rules: list[dict[str, Any]] = []  # the rules that fired (afs_callbacks.rules)
        self._unlisten: Callable[[], None] | None = None

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.tracker.run_id

    def start(self) -> None:
        """Publish what the run takes, listen for its commands, start the chat pollers."""
        self.tracker.listen(self._answered)
        self._publish()
        if not self.policy.enabled:
            return  # rules only (see ask): nothing to listen for
        self._unlisten = self.manager.on_store_change(self.look)
        if TELEGRAM in self.policy.surfaces:
            from afs_callbacks.control.telegram import ensure_poller

            ensure_poller(self.manager, self.policy)
        if SLACK in self.policy.surfaces:
            from afs_callbacks.control.slack import ensure_socket

            ensure_socket(self.manager, self.policy)

    def stop(self) -> None:
        """Stop listening (the run ended)."""
        unlisten, self._unlisten = self._unlisten, None
        if unlisten is not None:
            unlisten()

    # Reading commands (a sender's thread, or the store-changes thread) ------------------

    def look(self) -> None:
        """Read the run's commands changed since the last look and act on the pending ones."""
        if self.tracker.finished:
            self.stop()
            return
        with self._lock:
            since, self._since = self._since, time.time()
            store = self._store()
            if store is None:
                return
            # A little overlap: a command committed while the previous look ran is not missed.
            rows = store.commands(run_ids=[self.run_id], updated_since=since - 2.0, limit=50)
            # Pending ones whatever their time (a command written with an old clock, or
            # while this run was not looking, is judged by its age, not skipped).
            known = {command.id for command in rows}
            rows += [c for c in store.commands(run_ids=[self.run_id], states=[QUEUED]) if c.id not in known]
            changed = False
            for command in reversed(rows):
                mark = (command.state, command.detail)
                if self._seen.get(command.id) == mark:
                    continue
                self._seen[command.id] = mark
                changed = True
                if command.state == QUEUED:
                    command = self._take(store, command)
                self._remember(command)
        if changed:
            self._publish()

    def _take(self, store: Outbox, command: Command) -> Command:
        """A pending command of this run: expire, refuse or hand it to the tracker."""
        if command.host and command.host != self.host:
            return command  # another host's (a copied store): only that host acts
        if time.time() - command.created > self.policy.max_age:
            detail = f"older than {self.policy.max_age:g} s when the run saw it (AFS_CONTROL_MAX_AGE)"
            return self._move(store, command, EXPIRED, detail)
        if command.action == STATUS:
            return self._move(store, command, DONE, "the run's card")
        if not self.policy.allows(command.source):
            return self._move(store, command, REFUSED, f"this run takes no commands through {command.source}")
        if not store.update_command(command.id, ACCEPTED, "the run acts at its next step", expect=[QUEUED]):
            return store.command(command.id) or command  # another reader took it
        asked = self.tracker.ask(
            command.action, source=command.source, actor=command.actor, command_id=command.id
        )
        if not asked:
            return self._move(store, command, REFUSED, "the run is not running", expect=ACCEPTED)
        return store.command(command.id) or command

    def _move(
        self, store: Outbox, command: Command, state: str, detail: str, expect: str = QUEUED
    ) -> Command:
        store.update_command(command.id, state, detail, expect=[expect])
        self._seen[command.id] = (state, detail)
        return store.command(command.id) or command

    # In-process asks and the adapter's answers -------------------------------------------

    def request(self, action: str, *, reason: str, source: str = RULE, actor: str | None = None) -> bool:
        """Ask this run to ``stop`` or ``checkpoint`` from inside its process (a rule);
        recorded in the history like any command. Safe on the training thread (the store
        is written by the recorder thread). False when the run is not running."""
        command = Command(
            id=uuid.uuid4().hex,
            run_id=self.run_id,
            action=action,
            source=source,
            actor=actor or source,
            created=time.time(),
            updated=time.time(),
            state=ACCEPTED,
            detail=reason or "the run acts at its next step",
            host=self.host,
        )
        if not self.tracker.ask(
            action, source=source, actor=command.actor, reason=reason, command_id=command.id
        ):
            return False
        _recorder.put(lambda: self._stored(command))
        return True

    def _stored(self, command: Command) -> None:
        store = self._store()
        if store is not None:
            store.add_command(command)
        with self._lock:
            self._seen[command.id] = (command.state, command.detail)
            self._remember(command)
        self._publish()

    def _answered(self, ask: Ask, state: str, detail: str) -> None:
        """The tracker's listener (training thread): hand the write to the recorder."""
        if ask.command_id is not None:
            _recorder.put(lambda: self._record(ask, state, detail))

    def _record(self, ask: Ask, state: str, detail: str) -> None:
        store = self._store()
        if store is None or ask.command_id is None:
            return
        store.update_command(ask.command_id, state, detail, expect=[QUEUED, ACCEPTED])
        command = store.command(ask.command_id)
        if command is None:
            return
        with self._lock:
            self._seen[command.id] = (command.state, command.detail)
            self._remember(command)
        self._publish()
        if state in (DONE, REFUSED):
            self.manager.store_changed()  # a chat poller of this process follows up

    # What the card and the dashboard show ---------------------------------------------------

    def _remember(self, command: Command) -> None:
        for index, entry in enumerate(self._recent):
            if entry["id"] == command.id:
                del self._recent[index]
                break
        self._recent.appendleft(recent_entry(command))

    def note_rules(self, fired: list[dict[str, Any]]) -> None:
        """The run's rules that fired, the latest first (``afs_callbacks.rules``): in the
        run's state as ``control["rules"]``, for the card."""
        with self._lock:
            self._rules = list(fired)
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            recent = list(self._recent)
            rules = list(self._rules)
        facts: dict[str, Any] = {"accepts": list(self.policy.surfaces), "recent": recent}
        if rules:
            facts["rules"] = rules
        self.tracker.note_control(facts)

    def _store(self) -> Outbox | None:
        try:
            store: Outbox = self.manager.outbox
            return store
        except Exception as error:
            log.warning("afs-callbacks: run control cannot read the history: %s", redact(error))
            return None


def attach(tracker: RunTracker, policy: ControlPolicy | None = None) -> RunControl | None:
    """Give a started run its control (adapters call this on global rank zero after
    ``tracker.start``); None when the run's sink is not a manager with a store. Idempotent.

    With ``AFS_CONTROL`` off the control only records what rules ask (:func:`ask`) and
    tells the card that the run takes no commands.
    """
    existing = _controls.get(tracker)
    if existing is not None:
        return existing
    manager = tracker.manager
    if not callable(getattr(manager, "on_store_change", None)) or not getattr(manager, "enabled", False):
        return None
    try:
        control = RunControl(tracker, manager, policy)
        control.start()
    except Exception:
        log.exception("afs-callbacks: run control could not start; the run takes no commands")
        return None
    _controls[tracker] = control
    return control


def control_of(tracker: RunTracker) -> RunControl | None:
    """The run's control, if :func:`attach` gave it one."""
    return _controls.get(tracker)


def ask(
    tracker: RunTracker,
    action: str,
    *,
    reason: str,
    source: str = RULE,
    actor: str | None = None,
) -> bool:
    """Ask a run to ``stop`` or to save a ``checkpoint`` at its next step, from inside its
    process: the seam rules use. ``reason`` says why (a rule's condition), ``source`` and
    ``actor`` who (default ``rule``). Recorded in the history and on the card; the run
    ends "stopped by <actor> via <source>". Safe on the training thread; never raises.
    Returns False when the run is not running.
    """
    try:
        control = _controls.get(tracker) or attach(tracker)
        if control is None:
            return tracker.ask(action, source=source, actor=actor or source, reason=reason)
        return control.request(action, reason=reason, source=source, actor=actor)
    except ValueError:
        raise
    except Exception:
        log.exception("afs-callbacks: asking the run to %s failed", action)
        return False


class _Recorder:
    """One daemon thread per process writing control's answers to the store, in order. It
    waits without a timeout: idle, it never wakes."""

    def __init__(self) -> None:
        self._work: deque[Callable[[], None]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._exit_hook = False

    def put(self, job: Callable[[], None]) -> None:
        with self._ready:
            if not self._exit_hook:
                # Registered with the first job, after the manager's own exit hook (its run
                # handed an event over before), so it runs first: the answers reach the
                # store before the manager closes.
                self._exit_hook = True
                atexit.register(self.drain, EXIT_WAIT)
            self._work.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="afs-control", daemon=True)
                self._thread.start()
            self._ready.notify()

    def drain(self, timeout: float) -> bool:
        """Wait until every job so far is done; True when it was within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._work or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._work:
                    self._ready.wait()
                job = self._work.popleft()
                self._busy = True
            try:
                job()
            except Exception:
                log.exception("afs-callbacks: recording a command's answer failed")
            finally:
                with self._ready:
                    self._busy = False
                    self._ready.notify_all()

    def after_fork_in_child(self) -> None:
        """Threads do not survive ``fork()``; the parent writes its own answers."""
        self._work = deque()
        self._ready = threading.Condition()
        self._thread = None
        self._busy = False


_recorder = _Recorder()
os.register_at_fork(after_in_child=_recorder.after_fork_in_child)

__all__ = ["EXIT_WAIT", "RECENT", "RunControl", "ask", "attach", "control_of"]
