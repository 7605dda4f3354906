"""Death notices for runs that vanish without a word (SIGKILL, the OOM killer, a hard time
limit, a reboot).

A process that is killed outright runs no ``finally``, no ``atexit``, and sends nothing; its
row in the ``runs`` table would say "running" forever. Two things catch it:

* :func:`ensure_watcher` registers the run with its user's death watcher on this host (one
  process per user and host, for every state dir: :mod:`~afs_callbacks.delivery.rendezvous`)
  and starts the watcher if none answers. It runs in its own session, so it outlives the
  training process, checks every second for ``running`` rows of this host whose process
  is gone and for registered runs that died before anything of them was stored, and
  reports each one within seconds (``python -m afs_callbacks._watcher_main``, which
  delivers through a manager built from the registering run's environment).
* :func:`report_vanished` lets the next process that opens the outbox report runs that
  vanished while no watcher could see them (the whole job was killed, the node rebooted).

Either way a run is reported once: whoever turns its row from ``running`` to ``killed``
(:meth:`Outbox.claim_run_end`) sends the notice, and the notice has a deterministic id, so
DDP ranks, the watcher and the next run never make two. Only this host's runs are judged:
whether a process on another host still lives cannot be known from here. What can be
known about a process from outside it (gone, its exit signal, its cgroup's OOM kills and
peak memory) is read here too.

This module imports nothing above the outbox: the manager starts the watcher through it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks._pids import pid_exists
from afs_callbacks.config import open_env
from afs_callbacks.delivery import rendezvous
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.outcome import Outcome
from afs_callbacks.runstate import KILLED, RUNNING, RunState

log = get_logger(__name__)

REASON = "killed without a word"
_NOTICE_TITLE = "Training killed without a word"
#: ``RunState.extra`` of a row the watcher wrote for a run that died before anything of it
#: was stored: what it knew of the run came from the run's registration.
KNOWN_FROM = "known_from"
REGISTRATION = "registration"
_FALSE = frozenset({"0", "false", "no", "off"})
_TERMINAL_TYPES = ("training_completed", "training_failed", "out_of_memory", "training_interrupted")
#: Terminal events of a run looked at to tell whether it ended normally: its own, newest
#: first, past the notices of its earlier deaths (one per death).
_ENDS_LOOKED_AT = 50

#: Seconds a watcher just started may take to listen (its imports, on a loaded machine)
#: before this process would start another for a registration it could not hand over.
SPAWN_GRACE_SECONDS = 10.0

#: Seconds the spawner waits for `setsid --fork` to exit (it forks and leaves at once);
#: past that, a thread of its own reaps it.
REAP_SECONDS = 5.0


@dataclass(frozen=True, eq=False)
class _Queued:
    """A message no watcher took yet, with where it goes: the rendezvous folder of the
    environment it was made in (a process may change ``XDG_RUNTIME_DIR`` or ``TMPDIR``
    before it is handed over, as a test session does between tests) and, for a
    registration, that environment, which a watcher started for it gets."""

    message: dict[str, Any]
    folder: str
    env: dict[str, str] | None


_spawn_lock = threading.Lock()
#: Messages no watcher took yet, in the order they were made: a run's "ended" waits
#: behind its registration, else it would reach no watcher and the one started for the
#: registration would watch the process (a notebook's kernel) for as long as it lives.
_waiting: list[_Queued] = []
_spawner: threading.Thread | None = None
_spawned_at: dict[str, float] = {}  # monotonic time of this process's last spawn, by folder
_env_cache: tuple[Any, dict[str, str]] | None = None  # delivery_env()'s, with its key
_prefixes: tuple[str, ...] | None = None  # of the variables that configure delivery


# Registering with the watcher (and starting it) ------------------------------------------


def ensure_watcher(state_dir: str, pid: int, run: RunState | None = None) -> None:
    """Register process ``pid`` (and its run, when given) with this user's death watcher,
    which then watches ``state_dir``; start the watcher if none answers.

    On the caller's thread this is one message on a local socket (no network, no database
    lock, no waiting for an answer); starting a watcher happens on a thread of its own.
    Never raises. Does nothing when ``AFS_ENABLED`` is false.
    """
    try:
        if os.environ.get("AFS_ENABLED", "").strip().lower() in _FALSE:
            return
        _post(registration(state_dir, pid, run))
    except Exception as error:
        log.debug("afs-callbacks: could not register with the death watcher: %s", error)


def run_ended(state_dir: str, pid: int, run_id: str) -> None:
    """Tell the watcher that run ``run_id`` of ``pid`` ended with a word: a process that
    then exits with nothing of the run stored (a store kept in memory) is not "killed".
    One message, not waited for (behind the run's registration when that is still on its
    way); never raises."""
    with contextlib.suppress(Exception):
        _post({"op": "ended", "state_dir": os.path.abspath(state_dir), "pid": pid, "run_id": run_id})


def _post(message: dict[str, Any]) -> None:
    """Hand ``message`` to the watcher of this environment's folder now, or queue it for
    the spawner thread: behind earlier messages to that folder still on their way, or
    because no watcher listens there (a registration then starts one; an "ended" waits
    for the one just started, and is dropped where none is coming: nobody watches)."""
    folder = rendezvous.folder()
    with _spawn_lock:
        behind = any(queued.folder == folder for queued in _waiting)
    if not behind and rendezvous.send(message, folder):
        _watcher_seen(folder)
        return
    registering = message.get("op") == "watch"
    if registering or behind or _starting(folder):
        _spawn_soon(_Queued(message, folder, dict(os.environ) if registering else None))


def registration(state_dir: str, pid: int, run: RunState | None = None) -> dict[str, Any]:
    """The message that registers ``pid`` (and ``run``) for ``state_dir``: its identity and
    the settings that configure delivery (they may hold tokens: the message goes to a
    socket in a private folder and lives in the watcher's memory only)."""
    identity = {} if run is None else {"run_id": run.run_id, "model": run.model, "started_at": run.started_at}
    return {
        "op": "watch",
        "state_dir": os.path.abspath(state_dir),
        "pid": pid,
        "env": delivery_env(),
        "sent_at": time.time(),
        **identity,
    }


def delivery_env() -> dict[str, str]:
    """This process's settings that configure delivery: ``AFS_*`` and every channel's
    variables, from the environment over its ``.env`` file (read once per environment)."""
    global _env_cache, _prefixes
    if _prefixes is None:
        from afs_callbacks.channels import env_prefixes  # already imported by the manager

        _prefixes = ("AFS_", *env_prefixes())
    prefixes = _prefixes
    key = (tuple((k, v) for k, v in os.environ.items() if k.startswith(prefixes)), os.getcwd())
    cached = _env_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    values = {name: value for name, value in open_env().items() if name.startswith(prefixes)}
    _env_cache = (key, values)
    return values


def watcher_pid() -> int | None:
    """The pid of this user's death watcher on this host, or None when none runs."""
    return rendezvous.lock_holder()


def watcher_alive() -> bool:
    """Whether this user's death watcher runs on this host."""
    return rendezvous.lock_holder() is not None


def watcher_log() -> str | None:
    """The path of this user's death watcher's log on this host (what it was told, what it
    reported, what failed), or None when no watcher has written one since the folder was
    made (``$XDG_RUNTIME_DIR`` is emptied at logout)."""
    path = rendezvous.log_path()
    return path if os.path.isfile(path) else None


def _spawn_soon(queued: _Queued) -> None:
    global _spawner
    with _spawn_lock:
        _waiting.append(queued)
        if _spawner is None or not _spawner.is_alive():
            # Spawning a process costs milliseconds: not on the caller's thread.
            _spawner = threading.Thread(target=_hand_over, name="afs-watch-start", daemon=True)
            _spawner.start()


def _hand_over() -> None:
    """Hand each waiting message to its folder's watcher, in order: the first registration
    for a folder with none starts one there (and goes with it); later messages wait for it
    to listen, and a registration starts another only past the grace."""
    while True:
        with _spawn_lock:
            if not _waiting:
                return
            queued = _waiting[0]
        if rendezvous.send(queued.message, queued.folder):
            _watcher_seen(queued.folder)
        elif _starting(queued.folder):
            time.sleep(0.05)
            continue
        elif queued.env is not None:
            try:
                _spawn(queued.message, queued.env)
            except Exception as error:
                log.debug("afs-callbacks: could not start the death watcher: %s", error)
            _spawned_at[queued.folder] = time.monotonic()
        # else: an "ended" that no watcher came for (none was started, or it left)
        with _spawn_lock:
            _waiting.remove(queued)


def _starting(folder: str) -> bool:
    """Whether this process started a watcher for ``folder`` that may still be on its way
    to listening (within :data:`SPAWN_GRACE_SECONDS`, and not seen since)."""
    return time.monotonic() - _spawned_at.get(folder, -SPAWN_GRACE_SECONDS) < SPAWN_GRACE_SECONDS


def _watcher_seen(folder: str) -> None:
    """A watcher of ``folder`` took a message: the one this process started there, if any,
    is up, so one that does not answer later has left (its grace ran out) and a new one
    starts at once."""
    _spawned_at.pop(folder, None)


def _spawn(message: dict[str, Any], env: dict[str, str]) -> None:
    """Start a watcher carrying ``message`` on its stdin (a pipe holds it even if this
    process dies right after), in the environment ``env`` the message was made in: it
    becomes the watcher, or hands it to the one that is."""
    import json

    state_dir = str(message["state_dir"])
    # The last argument says in `ps` what the process is (and leaves the watcher room to
    # write its full title over its command line: _watcher_main.name_process).
    command = [
        sys.executable,
        "-m",
        "afs_callbacks._watcher_main",
        state_dir,
        str(message["pid"]),
        f"afs-callbacks death watcher for {state_dir} and others",
    ]
    # Through util-linux's ``setsid --fork`` where there is one: the watcher is then not
    # this process's child, and a launcher that kills its worker's children when the
    # worker ends (Ray does, whatever their session) leaves it alone.
    setsid = shutil.which("setsid")
    process = subprocess.Popen(
        [setsid, "--fork", *command] if setsid else command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,  # not killed with the training process's group or terminal
        env=env,
    )
    assert process.stdin is not None
    with contextlib.suppress(OSError):
        process.stdin.write(json.dumps(message).encode())
    with contextlib.suppress(OSError):
        process.stdin.close()
    # Reap the child, so no zombie lingers while the training process lives. `setsid --fork`
    # exits as soon as it has forked the watcher: it is reaped here, on the spawner's
    # thread. Without setsid the child is the watcher itself: a thread waits for its exit.
    if setsid:
        try:
            process.wait(REAP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
    threading.Thread(target=process.wait, name="afs-deathwatch-reaper", daemon=True).start()


def _after_fork_in_child() -> None:
    global _spawn_lock, _spawner, _waiting
    _spawn_lock = threading.Lock()
    _spawner = None
    _waiting = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# Reporting -----------------------------------------------------------------------------


def find_and_claim(
    outbox: Outbox,
    *,
    host: str,
    seen: dict[int, Sighting] | None = None,
    detected_by: str,
) -> list[NotificationEvent]:
    """Claim every vanished run of ``host`` in ``outbox``; return their notices."""
    notices = []
    for state in outbox.runs(status=RUNNING, host=host, limit=None):
        if state.pid == os.getpid():
            continue
        sighting = None if seen is None or state.pid is None else seen.get(state.pid)
        if not process_gone(state.pid, state.updated_at, sighting):
            continue
        event_id = notice_id(outbox, state)
        won = claim(outbox, state)
        if won is not None and state.pid is not None:
            # What it was sending when it died would hold its run's notice for a lease.
            outbox.release_leases_of(state.host or host, state.pid)
        if won is not None:
            notices.append(build_notice(state, event_id, seen=sighting, detected_by=detected_by))
    return notices


def unstored_run(outbox: Outbox, run: RunState) -> bool:
    """Store a ``running`` row for a registered ``run`` whose process is gone while nothing
    of it was stored (no row written by its pid), so that :func:`find_and_claim` reports it
    like any other run, once (and the next run does, should the watcher die first). True
    when it wrote one; a run whose own row is there, or whose row another live process
    writes (a resume under the same id), is left to that row."""
    row = outbox.run(run.run_id)
    if row is not None and (row.pid == run.pid or row.status == RUNNING):
        return False
    extra = {**run.extra, KNOWN_FROM: REGISTRATION}
    outbox.save_run(replace(run, status=RUNNING, updated_at=run.started_at, extra=extra))
    return True


#: How far back the watcher looks for runs' ends left unsent by a process that is gone.
UNSENT_LOOKBACK_SECONDS = 3600.0


def unsent_ends(outbox: Outbox, *, host: str, tried: set[str]) -> list[tuple[str, int | None]]:
    """(event id, pid) of this host's runs' ends that are stored, due and unsent while the
    process that stored them is gone (it was ended right after training: Ray Tune,
    ``os._exit``), leaving out those in ``tried`` (the watcher sends each once; later tries
    are the next run's). Their runs ended with a word: no death notice, only the delivery
    is owed."""
    found = []
    for event_id, pid, updated_at in outbox.unsent_ends(host, time.time() - UNSENT_LOOKBACK_SECONDS):
        if event_id not in tried and pid != os.getpid() and process_gone(pid, updated_at):
            found.append((event_id, pid))
    return found


def report_vanished(state_dir: str, emit: Callable[[NotificationEvent], object]) -> None:
    """Report, through ``emit`` (a manager's), this host's runs in ``state_dir`` whose
    process vanished without a word (called once the manager's outbox is open). Never
    raises."""
    try:
        path = os.path.join(state_dir, OUTBOX_FILE)
        if not os.path.exists(path):
            return
        with Outbox(path) as outbox:  # its own connection, off the writer's
            notices = find_and_claim(outbox, host=socket.gethostname(), detected_by="the next run")
        for notice in notices:
            emit(notice)
    except Exception as error:
        log.warning("afs-callbacks: could not check for runs that vanished: %s", error)


def claim(outbox: Outbox, state: RunState) -> RunState | None:
    """Mark a vanished run ended; return its new state if this caller won it, else None.

    A run that sent its terminal event before its row said so ended normally: its row is
    corrected and None returned (no notice).
    """
    ended = _terminal_status(outbox, state)
    new = replace(
        state,
        status=ended or KILLED,
        ended_at=time.time(),
        end_reason=state.end_reason if ended else REASON,
    )
    return new if outbox.claim_run_end(new, pid=state.pid) and not ended else None


def _terminal_status(outbox: Outbox, state: RunState) -> str | None:
    since = state.started_at or 0.0
    ends = outbox.history(run_id=state.run_id, event_type=_TERMINAL_TYPES, limit=_ENDS_LOOKED_AT)
    for entry in ends:  # newest first; a death notice is not the run's own end
        if entry.event.timestamp.timestamp() < since:
            break  # an end of an earlier attempt
        outcome = Outcome.of_event(entry.event)
        if outcome is not Outcome.KILLED and _NOTICE_TITLE not in entry.event.title:
            return str((outcome or Outcome.INTERRUPTED).value)  # the run's own end, as it said
    return None


def notice_id(outbox: Outbox, state: RunState) -> str:
    """The notice's id: the same for every reporter of this run's death; a resumed run
    that dies again (its first notice already stored) gets one that names its process."""
    first = uuid.uuid5(uuid.NAMESPACE_URL, f"afs-callbacks:{state.run_id}:killed").hex
    if not outbox.history(event_id=first, limit=1):
        return first
    return uuid.uuid5(uuid.NAMESPACE_URL, f"afs-callbacks:{state.run_id}:killed:{state.pid}").hex


def build_notice(
    state: RunState, event_id: str, *, seen: Sighting | None, detected_by: str, now: float | None = None
) -> NotificationEvent:
    """The "killed without a word" event for ``state``, with everything that can be known."""
    now = time.time() if now is None else now
    signal_name = exit_signal(state.pid)
    folder = seen.cgroup if seen is not None and seen.cgroup else cgroup_dir(state.pid)
    oom_now, peak = cgroup_memory(folder)
    oom_before = seen.oom_kills if seen is not None else None
    lines = [
        f"The training process (pid {state.pid} on {state.host}) ended without a final message:"
        " a SIGKILL, the out-of-memory killer, a scheduler's hard time limit or a reboot.",
        f"Exit signal: {signal_name or 'unknown (the watcher is not its parent)'}.",
    ]
    if oom_now is not None and oom_before is not None:
        verdict = (
            "it was most likely killed for memory" if oom_now > oom_before else "none since the run began"
        )
        lines.append(f"Out-of-memory kills in its cgroup: {oom_before} -> {oom_now} ({verdict}).")
    elif oom_now is not None:
        lines.append(f"Out-of-memory kills in its cgroup so far: {oom_now} (no count from the run's start).")
    if peak is not None:
        lines.append(f"Peak memory of its cgroup: {peak / 2**30:.2f} GiB.")
    if state.extra.get(KNOWN_FROM) == REGISTRATION:
        lines.append(
            "Nothing of the run was stored before it died (not its start, not a step): it was"
            " killed in its first moments, and the watcher knew of it only because the run"
            " had registered with it."
        )
    else:
        lines.append(_progress_line(state, now))
    context: dict[str, Any] = {
        "model": state.model,
        "run_id": state.run_id,
        "host": state.host,
        "pid": state.pid,
        "reason": REASON,
        "outcome": Outcome.KILLED.value,
        "status": KILLED,
        "signal": signal_name,
        "oom_kills": oom_now,
        "oom_kills_at_start": oom_before,
        "peak_memory_bytes": peak,
        "step": state.step,
        "epoch": state.epoch,
        "last_update": state.updated_at,
        "detected_by": detected_by,
        "metrics": dict(state.metrics),
    }
    return NotificationEvent(
        event_type=EventType.TRAINING_FAILED,
        level=NotificationLevel.CRITICAL,
        title=f"{Outcome.KILLED.icon} {_NOTICE_TITLE}: {state.model}",
        message="\n".join(lines),
        context={key: value for key, value in context.items() if value is not None},
        id=event_id,
        timestamp=datetime.fromtimestamp(now, timezone.utc),
    )


def _progress_line(state: RunState, now: float) -> str:
    parts = []
    if state.step is not None:
        parts.append(f"step {state.step}" + (f"/{state.total_steps}" if state.total_steps else ""))
    if state.epoch is not None:
        parts.append(f"epoch {state.epoch}" + (f"/{state.total_epochs}" if state.total_epochs else ""))
    where = ", ".join(parts) or "no step recorded"
    if state.updated_at is None:
        return f"Last heard from: {where}."
    when = datetime.fromtimestamp(state.updated_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = max(0.0, now - state.updated_at)
    return f"Last heard from: {where}, at {when} ({ago:.0f} s before it was found gone)."


# What can be known about a process from outside it --------------------------------


@dataclass
class Sighting:
    """What the watcher learnt about a run's process while it was alive."""

    create_time: float | None
    cgroup: str | None
    oom_kills: int | None


def sight(pid: int) -> Sighting | None:
    """Note a live process's start time, memory cgroup and that cgroup's OOM-kill count."""
    try:
        import psutil

        created: float | None = psutil.Process(pid).create_time()
    except ImportError:
        created = None
    except Exception:
        return None  # already gone
    folder = cgroup_dir(pid)
    return Sighting(created, folder, cgroup_memory(folder)[0])


def process_gone(pid: int | None, last_update: float | None, seen: Sighting | None = None) -> bool:
    """Whether the process ``pid`` that wrote a run's row no longer exists on this host.

    A zombie counts as gone; so does a live process that started after the row was last
    written, or another one than the watcher saw (the pid was reused).
    """
    if pid is None or pid <= 0:
        return False
    if not pid_exists(pid):
        return True
    # It exists (perhaps another user's): the start time below still tells a reused pid.
    try:
        import psutil
    except ImportError:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        created = process.create_time()
    except psutil.NoSuchProcess:  # a zombie too (ZombieProcess is one)
        return True
    except psutil.Error:
        return False  # access denied: alive, and nothing more can be told
    if seen is not None and seen.create_time is not None:
        return abs(created - seen.create_time) > 1.0
    return last_update is not None and created > last_update + 1.0


def exit_signal(pid: int | None) -> str | None:
    """The signal that ended ``pid``, while it is a zombie its parent has not reaped yet."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        if fields[0] != b"Z" or len(fields) < 50:
            return None
        status = int(fields[-1])  # the wait status (Linux >= 3.5, same user)
    except (OSError, ValueError, IndexError):
        return None
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return signal.Signals(number).name
        return f"signal {number}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return None


def cgroup_dir(pid: int | None) -> str | None:
    """The memory cgroup folder of ``pid`` (v2 or v1), or of this process if ``pid`` is gone."""
    for who in ([str(pid)] if pid else []) + ["self"]:
        try:
            with open(f"/proc/{who}/cgroup", encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if controllers == "" and os.path.exists("/sys/fs/cgroup/memory.events"):
                return _existing("/sys/fs/cgroup", path)
            if "memory" in controllers.split(","):
                return _existing("/sys/fs/cgroup/memory", path)
    return None


def _existing(root: str, path: str) -> str:
    # Inside a container the path names the host's hierarchy; the mount shows its own root.
    candidate = os.path.join(root, path.lstrip("/"))
    return candidate if os.path.isdir(candidate) else root


def cgroup_memory(folder: str | None) -> tuple[int | None, int | None]:
    """(the cgroup's ``oom_kill`` count, its peak memory in bytes); None where unreadable."""
    if folder is None:
        return None, None
    oom = None
    for name in ("memory.events", "memory.oom_control"):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        oom = int(value)
            break
    peak = None
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                peak = int(handle.read().split()[0])
            break
    return oom, peak


__all__ = [
    "KNOWN_FROM",
    "REGISTRATION",
    "Sighting",
    "build_notice",
    "cgroup_dir",
    "cgroup_memory",
    "ensure_watcher",
    "exit_signal",
    "find_and_claim",
    "process_gone",
    "registration",
    "report_vanished",
    "run_ended",
    "sight",
    "unsent_ends",
    "unstored_run",
    "watcher_alive",
    "watcher_pid",
]
