"""The death watcher process: ``python -m afs_callbacks._watcher_main STATE_DIR PID [LABEL]``,
with the registration that started it on stdin.

Started by :func:`afs_callbacks.delivery.deathwatch.ensure_watcher`. One per user and host
(an exclusive ``flock`` in the private rendezvous folder of
:mod:`~afs_callbacks.delivery.rendezvous`), for every state dir whose runs registered. A
watcher started while another holds the lock hands its registration to that one over the
socket and exits; one started while the other is leaving takes the lock after it.

Runs register themselves over the socket (state dir, pid, run id, model, start time, and
the settings that configure delivery); the watcher keeps that in memory only. Every second,
for each state dir (:class:`Watcher`), it reads the ``runs`` table, notes each live run's
process (start time, memory cgroup, OOM-kill count), reports the runs that vanished,
reports registered runs that died before anything of them was stored (a row written from
the registration, then claimed like any other), and sends the stored ends that a process
ended right after training left unsent (Ray Tune, ``os._exit``), and the summary of a sweep
whose trials ran in processes of their own once it went quiet, keeping its live card
meanwhile (:mod:`~afs_callbacks.delivery.sweep_end`). It delivers through one
:class:`~afs_callbacks.manager.NotificationManager` per state dir and environment: the
channels of the run's own environment, where it registered, else of the latest
registration of that state dir. A state dir is let go once no run of this host has been
running in it, no registered process lived, no sweep there awaits its summary and nothing
registered for a grace period; the process leaves when no state dir is left, first taking
its socket's name away and the registrations already queued on it, so a run that
registered is never dropped.

It sits above the manager it delivers through; :mod:`~afs_callbacks.delivery.deathwatch`,
which the manager uses to start it, sits below. The package's modules are imported inside
functions: a watcher started while another runs only hands its message over and exits,
and should not pay for them (dozens of runs starting together each start one).

``AFS_DEATHWATCH_INTERVAL`` (seconds between checks, default 1; the smallest any
registration asks for) and ``AFS_DEATHWATCH_GRACE`` (default 60, per state dir, from its
latest registration: long enough for a process that runs one fit after another, a sweep or
a notebook, to keep one watcher instead of starting one per run: a start costs about 0.2 s
of CPU beside the training) tune it; tests shorten them. A state dir that is deleted is let
go at once; one whose every round raised for :data:`FAILING_LIMIT` seconds is let go too.

It keeps a log beside its lock (:data:`~afs_callbacks.delivery.rendezvous.LOG_NAME`, at
most two files of :data:`LOG_BYTES`): each registration and end it was told of, each state
dir taken and let go and why, what it reported and how the flush went, the package's own
warnings and retries, and a round's traceback when a streak of failing rounds begins. Its
stderr goes nowhere, so this is where a notice that did not come is traced; every line
goes through the package's redaction, so no channel's secret is written there.

It names itself, so that the process left in ``ps`` for a minute after a run says what it
is: ``afs-callbacks death watcher for /home/me/.local/state/afs-callbacks (lingers 60 s
after the last run)`` as its command line (``... and 2 more state dirs ...`` when it watches
more; written over its own arguments, which the spawner pads with a label for the room;
Linux), and ``afs-deathwatch`` as its process name (``prctl(PR_SET_NAME)``, what ``top``
and ``pgrep`` show). No dependency: ``ctypes`` only, and where that fails the label
argument still says what it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from afs_callbacks.delivery import rendezvous

if TYPE_CHECKING:
    from afs_callbacks.delivery.deathwatch import Sighting
    from afs_callbacks.delivery.outbox import Outbox
    from afs_callbacks.events import NotificationEvent
    from afs_callbacks.manager import NotificationManager
    from afs_callbacks.runstate import RunState

DELIVERY_BOUND = 15.0  # seconds a notice may take to leave before the loop goes on
#: Seconds a watcher started while another holds the lock keeps trying to hand its
#: registration over (or to take the lock, should the other one leave meanwhile).
HAND_OVER_SECONDS = 30.0
DEFAULT_INTERVAL = 1.0
DEFAULT_GRACE = 60.0
#: Seconds of rounds that all failed (raised) after which a state dir is let go: its
#: duties cannot be done, and it would otherwise keep the watcher for ever.
FAILING_LIMIT = 600.0
#: The size at which the log is rotated (one older file is kept).
LOG_BYTES = 512 * 1024

log = logging.getLogger("afs_callbacks.watcher")


@dataclass
class Registration:
    """A run (or a process) that asked to be watched: what it said of itself."""

    pid: int
    run_id: str | None
    model: str
    started_at: float | None
    sighting: Sighting | None


class Watcher:
    """The watcher's duties for one state dir, and whether that dir still keeps it."""

    def __init__(self, state_dir: str, host: str) -> None:
        self.state_dir = state_dir
        self.host = host
        self.grace = DEFAULT_GRACE
        self.seen: dict[int, Sighting] = {}
        self.outbox: Outbox | None = None
        self.registered: dict[tuple[str | None, int], Registration] = {}
        #: Delivery settings by fingerprint (in memory only: they may hold tokens), and
        #: which fingerprint each run and process registered with.
        self.envs: dict[str, dict[str, str]] = {}
        self.env_of_run: dict[str, str] = {}
        self.env_of_pid: dict[int, str] = {}
        self.latest_env: str | None = None
        self.managers: dict[str, NotificationManager] = {}
        self.active_at = time.monotonic()  # a request, a running row or a registered process
        self.failing_since: float | None = None  # when the rounds that all raised began
        self.sent_ends: set[str] = set()  # unsent ends of gone processes this watcher sent

    # What runs tell it ----------------------------------------------------------------

    def register(self, message: dict[str, Any]) -> None:
        """Note a registration: the process (its OOM-kill count now is the run's baseline),
        the run's identity and its delivery settings."""
        from afs_callbacks.delivery import deathwatch as dw

        pid = int(message["pid"])
        env = {str(k): str(v) for k, v in (message.get("env") or {}).items()}
        key = hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()
        self.envs[key] = env
        self.latest_env = key
        self.grace = _seconds(env.get("AFS_DEATHWATCH_GRACE"), DEFAULT_GRACE)
        run_id = message.get("run_id")
        run_id = None if run_id is None else str(run_id)
        sighting = self.seen.get(pid) or dw.sight(pid)
        if sighting is not None:
            self.seen[pid] = sighting
        started = message.get("started_at")
        self.registered[(run_id, pid)] = Registration(
            pid,
            run_id,
            str(message.get("model") or "?"),
            None if started is None else float(started),
            sighting,
        )
        if run_id is not None:
            self.env_of_run[run_id] = key
            # The process's ask before its run (RunHooks.prepare) is superseded: once this
            # run ends with a word, nothing of the process keeps the watcher.
            self.registered.pop((None, pid), None)
        self.env_of_pid[pid] = key
        self.active_at = time.monotonic()
        log.info("%s: %s (pid %d) registered", self.state_dir, _run_words(run_id), pid)

    def ended(self, message: dict[str, Any]) -> None:
        """A registered run ended with a word: nothing is owed for it if its process goes."""
        run_id, pid = str(message.get("run_id")), int(message["pid"])
        if self.registered.pop((run_id, pid), None) is not None:
            log.info("%s: %s (pid %d) ended", self.state_dir, _run_words(run_id), pid)
        self.active_at = time.monotonic()

    # One round ------------------------------------------------------------------------

    def check(self) -> bool:
        """One round of this state dir's duties; return whether something still runs
        here (a ``running`` row of this host, or a registered process alive)."""
        from afs_callbacks.delivery import deathwatch as dw
        from afs_callbacks.delivery import sweep_end
        from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox
        from afs_callbacks.runstate import RUNNING

        gone = [key for key, reg in self.registered.items() if self._gone(reg)]
        alive = len(self.registered) > len(gone)
        if self.outbox is None:
            path = os.path.join(self.state_dir, OUTBOX_FILE)
            if not os.path.exists(path) and not any(self.registered[key].run_id for key in gone):
                for key in gone:
                    del self.registered[key]
                return alive  # no run wrote anything yet, and none died unstored
            try:
                if not os.path.isdir(self.state_dir):  # a run killed before its manager made it
                    from afs_callbacks._files import private_dir

                    private_dir(self.state_dir)
                self.outbox = Outbox(path, busy_timeout=5.0)
            except (OSError, sqlite3.Error):
                return True  # a busy or half-made file: open it again next round
        try:
            for key in gone:
                # A registered run that died before anything of it was stored: a row from
                # its registration, which the claim below reports like any other.
                reg = self.registered[key]
                if reg.run_id is not None:
                    log.info(
                        "%s: run %s (pid %d) died before it stored anything",
                        self.state_dir,
                        reg.run_id,
                        reg.pid,
                    )
                    dw.unstored_run(self.outbox, self._state_of(reg))
                del self.registered[key]
            for state in self.outbox.runs(status=RUNNING, host=self.host, limit=None):
                if state.pid is not None and not dw.process_gone(state.pid, state.updated_at):
                    self.note(state.pid)
            notices = dw.find_and_claim(
                self.outbox, host=self.host, seen=self.seen, detected_by="the death watcher"
            )
            running = bool(self.outbox.runs(status=RUNNING, host=self.host, limit=1))
            unsent = dw.unsent_ends(self.outbox, host=self.host, tried=self.sent_ends)
            # A sweep of trials in processes of their own: its summary once it went quiet,
            # and its live card meanwhile.
            notices += sweep_end.quiet_summaries(self.outbox, self.state_dir, show=self.show_card)
        except sqlite3.Error:
            self.outbox.close()  # a busy or replaced file: open it again next round
            self.outbox = None
            return True
        if notices or unsent:
            self.sent_ends.update(event_id for event_id, _ in unsent)
            self.deliver(notices, [pid for _, pid in unsent])
        # Further periodic duties per state dir go here, like the sweeps' above: each one
        # a call that shares self.outbox and self.manager_for(), and tells lingers()
        # whether it still needs the watcher.
        return running or alive

    def lingers(self, busy: bool) -> bool:
        """The linger rule: whether this state dir still keeps the watcher after a round
        that found it ``busy`` or not (idle for the grace period: let go)."""
        now = time.monotonic()
        if not os.path.isdir(self.state_dir) and not self.registered:
            log.info("%s: let go (the state dir was deleted)", self.state_dir)
            return False  # nothing left to report into
        if self.failing_since is not None and now - self.failing_since > FAILING_LIMIT:
            log.error("%s: let go (every round failed for %.0f s)", self.state_dir, now - self.failing_since)
            return False  # its duties could not be done for minutes: try no more
        from afs_callbacks.delivery import sweep_end

        if busy or sweep_end.awaiting_summary(self.state_dir):
            self.active_at = now
        if now - self.active_at < self.grace:
            return True
        log.info("%s: let go (nothing ran or asked for %.0f s)", self.state_dir, self.grace)
        return False

    def note(self, pid: int) -> None:
        """Remember a live process (its OOM-kill count now is the run's baseline)."""
        from afs_callbacks.delivery import deathwatch as dw

        if pid not in self.seen:
            sighting = dw.sight(pid)
            if sighting is not None:
                self.seen[pid] = sighting

    def _gone(self, reg: Registration) -> bool:
        from afs_callbacks.delivery import deathwatch as dw

        return dw.process_gone(reg.pid, reg.started_at, reg.sighting)

    def _state_of(self, reg: Registration) -> Any:
        from afs_callbacks.runstate import RunState

        assert reg.run_id is not None
        return RunState(reg.run_id, reg.model, host=self.host, pid=reg.pid, started_at=reg.started_at)

    # Delivery -------------------------------------------------------------------------

    def show_card(self, state: RunState) -> None:
        """A sweep's live card (``sweep_end``): stored and edited like a run's, through
        the channels of the latest registration."""
        self.manager_for(None).update_run(state)

    def manager_for(self, key: str | None) -> NotificationManager:
        """The manager of one registered environment (the latest one's for None)."""
        from afs_callbacks.config import Env
        from afs_callbacks.manager import NotificationManager  # only once there is news

        key = key if key in self.envs else self.latest_env
        name = key or ""
        manager = self.managers.get(name)
        if manager is None:
            env = Env(self.envs[key], env_file=False) if key is not None else None
            manager = self.managers[name] = NotificationManager.from_env(env, state_dir=self.state_dir)
        return manager

    def deliver(self, notices: list[NotificationEvent], unsent_pids: list[int | None]) -> None:
        """Send the notices through the channels of their run's environment (and queue
        them for the run's own channels, which may have been set up in code); the flush
        also sends the ends that processes gone meanwhile stored but did not send."""
        batches: dict[str | None, list[NotificationEvent]] = {}
        for notice in notices:
            key = self.env_of_run.get(notice.run_id or "", self.latest_env)
            batches.setdefault(key, []).append(notice)
        for pid in unsent_pids:
            batches.setdefault(self.env_of_pid.get(pid or -1, self.latest_env), [])
        for key, batch in batches.items():
            manager = self.manager_for(key)
            for notice in batch:
                log.info("%s: reporting %r (%s)", self.state_dir, notice.title, _run_words(notice.run_id))
                manager.emit(notice)
            report = manager.flush(DELIVERY_BOUND)
            log.log(
                logging.INFO if report.ok else logging.WARNING,
                "%s: delivered %d, failed for good %d,"
                " still pending %d (for the next run or `afs-notify flush`)",
                self.state_dir,
                report.delivered,
                report.dead,
                report.pending,
            )
        if self.outbox is not None:
            for notice in notices:
                if notice.run_id is not None:
                    self.outbox.route_like_run(notice.id, notice.run_id)

    def close(self) -> None:
        """Close the outbox and the managers (sending what is left within a bound)."""
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        for manager in self.managers.values():
            with contextlib.suppress(Exception):
                manager.close(timeout=5.0)
        self.managers.clear()


class WatcherProcess:
    """The one watcher of this user and host: its socket, its state dirs, its loop."""

    def __init__(self, folder: str, lock_fd: int, listener: socket.socket, interval: float) -> None:
        self.folder = folder
        self.lock_fd = lock_fd
        self.listener = listener
        self.interval = interval
        self.host = socket.gethostname()
        self.watched: dict[str, Watcher] = {}
        self.title = ""

    def take(self, message: dict[str, Any]) -> None:
        """Act on one message from a run (a bad one is dropped)."""
        try:
            state_dir = os.path.realpath(str(message["state_dir"]))
            watcher = self.watched.get(state_dir)
            if message.get("op") == "ended":
                if watcher is not None:
                    watcher.ended(message)
                return
            if watcher is None:
                watcher = self.watched[state_dir] = Watcher(state_dir, self.host)
                log.info("%s: now watched", state_dir)
            watcher.register(message)
            asked = (message.get("env") or {}).get("AFS_DEATHWATCH_INTERVAL")
            self.interval = min(self.interval, _seconds(asked, self.interval))
        except (KeyError, TypeError, ValueError) as error:
            log.warning("a message was dropped: %s", type(error).__name__)
            return
        self.retitle()

    def run(self) -> None:
        """Watch until no state dir is left; hand the lock back on the way out."""
        next_round = time.monotonic()
        while True:
            for message in rendezvous.receive(self.listener, max(0.0, next_round - time.monotonic())):
                self.take(message)
            if time.monotonic() < next_round:
                continue
            self.round()
            next_round = time.monotonic() + self.interval
            if not self.watched and self.leave():
                return

    def round(self) -> None:
        """Each state dir's duties once; let go of those that no longer linger."""
        for state_dir, watcher in list(self.watched.items()):
            try:
                busy = watcher.check()
                if watcher.failing_since is not None:
                    log.info("%s: a round works again", state_dir)
                watcher.failing_since = None
            except Exception:
                busy = True  # a failed delivery or an odd row: keep watching, try again
                if watcher.failing_since is None:
                    # At a streak's start only: a round comes every second, and the same
                    # traceback each time would fill the log.
                    log.exception("%s: a round failed; trying each round", state_dir)
                    watcher.failing_since = time.monotonic()
            if not watcher.lingers(busy):
                watcher.close()
                del self.watched[state_dir]
                self.retitle()

    def leave(self) -> bool:
        """Take the socket's name away, then the registrations already queued on it: none
        came, so the lock is handed back (True); some did, so the watcher stays."""
        rendezvous.unlisten(self.folder)
        late = rendezvous.receive(self.listener, 0.0)
        if not late:
            self.listener.close()
            os.close(self.lock_fd)
            log.info("leaving: no state dir is left to watch")
            return True
        for message in late:
            self.take(message)
        self.listener.close()
        self.listener = rendezvous.listen(self.folder)
        return False

    def retitle(self) -> None:
        """Say in ``ps`` which state dirs are watched."""
        if not self.watched:
            return
        dirs = sorted(self.watched)
        title = process_title(dirs, max(w.grace for w in self.watched.values()))
        if title != self.title:
            self.title = title
            name_process(title)

    def close(self) -> None:
        """Close every state dir's outbox and managers."""
        for watcher in self.watched.values():
            watcher.close()


#: The process name (15 bytes at most: the kernel's limit for ``comm``).
PROCESS_NAME = "afs-deathwatch"


def process_title(state_dirs: list[str], grace: float) -> str:
    """What the watcher is, for ``ps``: which state dirs, and why it is still there."""
    more = len(state_dirs) - 1
    others = f" and {more} more state dir{'s' if more > 1 else ''}" if more > 0 else ""
    return f"afs-callbacks death watcher for {state_dirs[0]}{others} (lingers {grace:g} s after the last run)"


def name_process(title: str) -> None:
    """Show ``title`` as this process's command line and :data:`PROCESS_NAME` as its name
    (Linux; elsewhere, or on any failure, nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(PROCESS_NAME.encode()), 0, 0, 0)  # PR_SET_NAME
    with contextlib.suppress(Exception):
        _write_command_line(title)


def _write_command_line(title: str) -> None:
    # The kernel serves /proc/PID/cmdline from the argument area of the process's memory
    # (arg_start..arg_end in /proc/self/stat). Python keeps its own copies of the
    # arguments, so the area can be written over: the title, then NULs to its end (the
    # last byte stays NUL, so the kernel reads no further).
    with open("/proc/self/stat", "rb") as stat:
        text = stat.read().decode()
    fields = text[text.rindex(")") + 2 :].split()
    start, end = int(fields[45]), int(fields[46])  # fields 48 and 49, counted from 1
    size = end - start
    if size <= 1:
        return
    data = title.encode()[: size - 1]
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)


def open_log(folder: str) -> None:
    """Write the package's log records, the watcher's own at INFO, to the log in ``folder``
    (the private rendezvous folder), each through the package's redaction, rotated at
    :data:`LOG_BYTES`. A log that cannot be opened leaves the watcher without one."""
    from logging.handlers import RotatingFileHandler

    from afs_callbacks.redaction import RedactingFilter

    try:
        handler = RotatingFileHandler(
            rendezvous.log_path(folder), maxBytes=LOG_BYTES, backupCount=1, encoding="utf-8"
        )
    except OSError:
        return
    # Every record is redacted where it is made (the package's loggers carry the filter);
    # the handler's own is for the records of other libraries that reach it.
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("afs_callbacks")
    package.addHandler(handler)
    package.setLevel(logging.INFO)  # a watcher only delivers: its retries are worth a line


def _run_words(run_id: str | None) -> str:
    return "a process" if run_id is None else f"run {run_id}"


def _seconds(value: str | None, default: float) -> float:
    try:
        return default if value is None else max(0.05, float(value))
    except ValueError:
        return default


def first_message(argv: list[str]) -> dict[str, Any]:
    """The registration this process was started for: on stdin from the spawner, else
    (started by hand) the arguments and this process's own settings."""
    data = b""
    with contextlib.suppress(OSError):
        if not os.isatty(0):
            data = sys.stdin.buffer.read(rendezvous.MAX_MESSAGE)
    with contextlib.suppress(ValueError):
        message = json.loads(data) if data else None
        if isinstance(message, dict) and message.get("op") == "watch":
            return message
    from afs_callbacks.delivery.deathwatch import delivery_env

    pid = int(argv[2]) if len(argv) > 2 and argv[2].isdigit() else os.getpid()
    return {"op": "watch", "state_dir": os.path.abspath(argv[1]), "pid": pid, "env": delivery_env()}


def main(argv: list[str]) -> int:
    """Entry point: ``STATE_DIR PID`` (the process that asked, also on stdin with its run
    and settings), then a label for ``ps`` that the process title replaces."""
    message = first_message(argv)
    folder = rendezvous.private_folder(create=True)
    if folder is None:
        return 1  # not ours alone (another user's folder in /tmp): no secret goes there
    deadline = time.monotonic() + HAND_OVER_SECONDS
    while True:
        lock_fd = rendezvous.acquire(folder)
        if lock_fd is not None:
            break
        if rendezvous.send(message) or time.monotonic() > deadline:
            return 0  # the watcher that runs has it now
        time.sleep(0.05)
    listener = rendezvous.listen(folder)
    open_log(folder)
    log.info("started (pid %d)", os.getpid())
    os.chdir("/")  # keep no folder busy (the run's may be deleted, or unmounted)
    interval = _seconds(os.environ.get("AFS_DEATHWATCH_INTERVAL"), DEFAULT_INTERVAL)
    process = WatcherProcess(folder, lock_fd, listener, interval)
    process.take(message)
    try:
        process.run()
    finally:
        process.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
