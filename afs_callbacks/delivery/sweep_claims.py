"""Who speaks for a sweep: one claim per sweep and state directory, made once across processes.

A sweep's start and its summary must each be said once, whoever sees the sweep first: a
``Sweep`` block in the driver, an Optuna study in its own process, or — for a sweep whose
trials run in processes of their own (Ray Tune, W&B agents, SLURM array tasks) — the first
of its trials, with the death watcher summarising it once it is quiet. The claim is a small
file in ``<state dir>/sweeps/``: ``<key>.<generation>.json`` says the sweep is open and which
voice speaks for it, ``<key>.<generation>.done`` that its summary was claimed. Both are made
with an exclusive create (``os.link`` of a written temporary file, ``O_EXCL``), which one
process wins and every other one sees as taken, so two trials starting together never both
announce and two watchers never both summarise. A trial that comes after the summary opens
the next generation (a sweep's name used again: a new sweep).

The events that the claims let through have ids derived from the claim
(:meth:`Claim.event_id`), so even a message handed over twice is stored and sent once.

This module imports nothing above the files helpers: the trials' processes and the
watcher both use it. Nothing here raises: a state dir that cannot be written makes no claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace

from afs_callbacks._files import private_dir, tighten_file
from afs_callbacks._log import get_logger
from afs_callbacks._pids import pid_exists

log = get_logger(__name__)

FOLDER = "sweeps"
#: The voices: ``trials`` (its trials announce it, the death watcher summarises it when
#: quiet), ``block`` (a ``Sweep`` block in the driver), ``study`` (an Optuna study's own
#: process, see :mod:`afs_callbacks.sweeps`).
VOICES = ("trials", "block", "study")
#: Closed claims older than this are removed (a name used again after it is a new sweep).
KEEP_SECONDS = 7 * 86400.0


@dataclass(frozen=True)
class Claim:
    """An open (or just closed) sweep and who speaks for it.

    Args:
        name: the sweep's name (what its trials are tagged with).
        generation: 0 for the first sweep of that name here, then 1, 2... once each closed.
        voice: one of :data:`VOICES`.
        started: when it was opened (epoch seconds): its summary counts trials from then.
        host / pid: the process that opened it (or took it over).
        metric / mode: what the best trial is chosen by (``None``: each trial's monitored
            metric; ``min`` or ``max``).
        won: this call opened it (it announces the sweep); False: it joined an open one.
    """

    name: str
    generation: int
    voice: str
    started: float
    host: str
    pid: int
    metric: str | None = None
    mode: str = "min"
    won: bool = False

    def event_id(self, what: str) -> str:
        """The id of this sweep's ``what`` message (``started``, ``summary``): the same in
        every process, so it is stored and sent once whoever hands it over."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"afs-callbacks:sweep:{self.name}:{self.generation}:{what}").hex

    @property
    def stale(self) -> bool:
        """The block or study process that opened it is gone from this host without closing
        it (killed): nobody will summarise it but whoever takes it over."""
        return self.voice != "trials" and self.host == socket.gethostname() and not pid_exists(self.pid)


def claim(
    state_dir: str, name: str, voice: str, *, metric: str | None = None, mode: str = "min"
) -> Claim | None:
    """Open sweep ``name`` for ``voice`` (``won``), or return the open one it joins. None
    when the folder cannot be used. Never raises."""
    try:
        folder = private_dir(os.path.join(state_dir, FOLDER))
        key = _key(name)
        for _ in range(8):  # lost races: read again (each loss means someone else moved it on)
            generation, done = _latest(str(folder), key)
            if generation is not None and not done:
                found = _read(str(folder), key, generation)
                if found is not None:
                    return found
            mine = Claim(
                name,
                0 if generation is None else generation + 1,
                voice,
                time.time(),
                socket.gethostname(),
                os.getpid(),
                metric,
                mode,
            )
            if _create(_path(str(folder), key, mine.generation, "json"), _dump(mine)):
                return replace(mine, won=True)
        return None
    except Exception as error:
        log.debug("afs-callbacks: could not claim sweep %s: %s", name, error)
        return None


def take_over(state_dir: str, open_claim: Claim, voice: str) -> Claim:
    """Make ``voice`` (this process) the one that speaks for ``open_claim`` from now on (a
    ``Sweep`` block adopting a sweep its trials opened, a trial adopting a stale one).
    Returns the new claim (the old one if the file could not be written)."""
    new = replace(open_claim, voice=voice, host=socket.gethostname(), pid=os.getpid(), won=False)
    try:
        folder = os.path.join(state_dir, FOLDER)
        target = _path(folder, _key(new.name), new.generation, "json")
        temporary = f"{target}.{os.getpid()}.tmp"
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(_dump(new))
        tighten_file(temporary)
        os.replace(temporary, target)
        return new
    except Exception as error:
        log.debug("afs-callbacks: could not take sweep %s over: %s", new.name, error)
        return open_claim


def close(state_dir: str, open_claim: Claim) -> bool:
    """Mark ``open_claim`` summarised; True for the one call that did (it sends the
    summary), False when another process already had. Never raises."""
    try:
        folder = os.path.join(state_dir, FOLDER)
        return _create(_path(folder, _key(open_claim.name), open_claim.generation, "done"), "")
    except Exception as error:
        log.debug("afs-callbacks: could not close sweep %s: %s", open_claim.name, error)
        return False


def open_claims(state_dir: str) -> list[Claim]:
    """Every open sweep of ``state_dir`` (cheap when there is none: one ``listdir``)."""
    folder = os.path.join(state_dir, FOLDER)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    present = set(names)
    for name in names:
        key, _, rest = name.partition(".")
        generation, _, ext = rest.partition(".")
        if ext != "json" or not generation.isdigit() or f"{key}.{generation}.done" in present:
            continue
        opened = _read(folder, key, int(generation))
        if opened is not None:
            found.append(opened)
    return found


def prune(state_dir: str, *, now: float | None = None) -> int:
    """Remove the claims of sweeps closed more than :data:`KEEP_SECONDS` ago; returns how
    many files went. Never raises."""
    folder = os.path.join(state_dir, FOLDER)
    cutoff = (time.time() if now is None else now) - KEEP_SECONDS
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if not name.endswith(".done"):
                continue
            done = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.path.getmtime(done) < cutoff:
                    os.unlink(done.removesuffix(".done") + ".json")
                    os.unlink(done)
                    removed += 2
    return removed


# The files ------------------------------------------------------------------------------------


def _key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _path(folder: str, key: str, generation: int, ext: str) -> str:
    return os.path.join(folder, f"{key}.{generation}.{ext}")


def _latest(folder: str, key: str) -> tuple[int | None, bool]:
    """The newest generation of ``key`` and whether it is closed."""
    names = set(os.listdir(folder))
    generations = [
        int(generation)
        for name in names
        if name.startswith(key + ".") and name.endswith(".json")
        for generation in [name[len(key) + 1 : -len(".json")]]
        if generation.isdigit()
    ]
    if not generations:
        return None, False
    newest = max(generations)
    return newest, f"{key}.{newest}.done" in names


def _create(path: str, text: str) -> bool:
    """Make ``path`` with ``text`` unless it exists; True when this call made it. The text
    is written to a temporary file first and linked in: a reader never sees half of it."""
    temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with open(temporary, "x", encoding="utf-8") as handle:
        handle.write(text)
    try:
        tighten_file(temporary)
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: an exclusive create, written after
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _dump(found: Claim) -> str:
    fields = asdict(found)
    fields.pop("won")
    return json.dumps(fields)


def _read(folder: str, key: str, generation: int) -> Claim | None:
    try:
        with open(_path(folder, key, generation, "json"), encoding="utf-8") as handle:
            fields = json.load(handle)
        return Claim(
            str(fields["name"]),
            int(generation),
            str(fields["voice"]),
            float(fields["started"]),
            str(fields["host"]),
            int(fields["pid"]),
            fields.get("metric"),
            "max" if fields.get("mode") == "max" else "min",
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["FOLDER", "KEEP_SECONDS", "VOICES", "Claim", "claim", "close", "open_claims", "prune", "take_over"]
