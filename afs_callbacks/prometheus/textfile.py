"""Each run's state as a ``.prom`` file in node exporter's textfile folder, off the
training thread.

Set ``AFS_PROMETHEUS_TEXTFILE_DIR`` to the folder node exporter reads
(``--collector.textfile.directory``) and every run of the process appears in its scrape.
The training thread's part is :meth:`TextfileWriter.offer`, called where the run's state
already goes to the store (:class:`~afs_callbacks.delivery.hooks.RunHooks`): a dict
assignment and a wake-up, no I/O. A daemon thread (``afs-prometheus``) writes:

* ``afs_run_<run>.prom`` per run, when its state changed, at most once every
  :data:`MIN_INTERVAL` seconds, and every :data:`HEARTBEAT_SECONDS` anyway: its
  ``afs_run_heartbeat_timestamp_seconds`` says the process is alive, so a run that died
  without a word shows as a stale heartbeat;
* ``afs_outbox_<store>.prom``: the outbox's channels, every :data:`OUTBOX_SECONDS`.

Each file is written with ``prometheus_client.write_to_textfile``: a temporary file beside
it, then a rename, so node exporter never reads half a file. An ended run's file is
rewritten once, marked ended (``status="ended"``, its ``outcome``, its end time), and
removed ``keep`` seconds later (``AFS_PROMETHEUS_KEEP``, default an hour): a scrape sees
how the run ended, then its series end. A file that nobody rewrote for ``keep`` seconds
(its process vanished) is removed by the next writer using the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afs_callbacks._log import get_logger
from afs_callbacks.delivery.outbox import ChannelHealth
from afs_callbacks.prometheus import INSTALL_HINT
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import RunState

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = get_logger(__name__)

#: Seconds between two writes of a run's file at least.
MIN_INTERVAL = 1.0
#: Seconds between two writes of a live run's file at most (its heartbeat).
HEARTBEAT_SECONDS = 15.0
#: Seconds between two writes of the outbox's file.
OUTBOX_SECONDS = 15.0
#: File names this module writes (and may remove when stale); temporary files end in
#: ``.prom.<pid>.<thread>``, which node exporter does not read.
_OURS = re.compile(r"^afs_(run|outbox)_[A-Za-z0-9_.-]+\.prom(\.\d+\.\d+)?$")


def run_file_name(run_id: str) -> str:
    """``afs_run_<run id, made safe>_<hash>.prom``: readable, and unique per run id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)[:64]
    return f"afs_run_{safe}_{_digest(run_id)}.prom"


def outbox_file_name(store: str) -> str:
    """``afs_outbox_<hash of the state folder>.prom``: one file per outbox on the host."""
    return f"afs_outbox_{_digest(store)}.prom"


class TextfileWriter:
    """Writes run states (and the outbox's health) for node exporter's textfile collector.

    Args:
        directory: the folder node exporter reads; it must exist.
        store: the outbox's label (its state folder).
        health: the outbox's channels now (None when it cannot be read); called on the
            writer's thread.
        keep: seconds an ended run's file stays, and a file nobody rewrites.
        interval: seconds between two writes of a run's file at least.
        heartbeat: seconds between two writes of a live run's file at most.
        outbox_every: seconds between two writes of the outbox's file.

    Example::

        writer = TextfileWriter("/var/lib/prometheus/node-exporter", store=state_dir,
                                health=outbox.channel_health)
        writer.offer(state)   # from the training thread: no I/O
        writer.close(5.0)     # the last states written, the thread ended
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        store: str = "",
        health: Callable[[], Sequence[ChannelHealth] | None] | None = None,
        keep: float = 3600.0,
        interval: float = MIN_INTERVAL,
        heartbeat: float = HEARTBEAT_SECONDS,
        outbox_every: float = OUTBOX_SECONDS,
    ) -> None:
        self.directory = Path(directory)
        self.store = store
        self.keep = keep
        self.interval = interval
        self.heartbeat = heartbeat
        self.outbox_every = outbox_every
        self._health = health
        #: Files written so far (a benchmark and the tests read it).
        self.writes = 0
        self._disabled = False
        self._start_lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        # Per-process state: a forked child starts empty (the parent writes its own runs).
        self._pending: dict[str, RunState] = {}
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # The writer thread's own: the runs it writes, when each was written.
        self._runs: dict[str, RunState] = {}
        self._written: dict[str, float] = {}
        self._ended: dict[str, float] = {}
        self._outbox_at = -float("inf")
        self._sweep_at = -float("inf")
        self._round_at = -float("inf")
        self._failed: str | None = None
        self._families: Any = None  # the families module, imported by the thread
        self._sample: Any = None

    # The training thread's side ---------------------------------------------------------

    def offer(self, state: RunState) -> None:
        """Queue ``state`` (latest wins per run) and wake the writer; no I/O, never raises."""
        if self._disabled:
            return
        if self._pid != os.getpid():
            self._reset()
        with self._pending_lock:  # uncontended but for the writer's swap
            self._pending[state.run_id] = state
        self._wake.set()
        if self._thread is None:
            self._start()

    # Control ----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (the run's end above all) and stop the thread, within
        ``timeout`` seconds. The files stay: an ended run's for ``keep`` seconds."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self._closing.set()
        self._wake.set()
        if thread is not threading.current_thread():
            thread.join(max(timeout, 0.0))

    def after_fork_in_child(self) -> None:
        """Threads do not survive ``fork()``; the child writes only what it offers itself."""
        self._start_lock = threading.Lock()
        self._reset()

    # The writer thread ------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._disabled:
                self._thread = threading.Thread(target=self._run, name="afs-prometheus", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        # prometheus_client is imported here, on this thread: never on the training thread.
        try:
            from afs_callbacks.prometheus import families
            from afs_callbacks.prometheus.families import RunSample
        except ImportError:
            self._disabled = True
            log.error(
                "afs-callbacks: AFS_PROMETHEUS_TEXTFILE_DIR is set but prometheus_client is not"
                " installed; run %s",
                INSTALL_HINT,
            )
            return
        self._families, self._sample = families, RunSample
        if not self.directory.is_dir():
            self._disabled = True
            log.error(
                "afs-callbacks: AFS_PROMETHEUS_TEXTFILE_DIR=%s is not a folder (it must be the one"
                " node exporter reads, --collector.textfile.directory); run states are not written"
                " for Prometheus",
                self.directory,
            )
            return
        while True:
            self._wake.wait(self._idle_wait())
            closing = self._closing.is_set()
            if not closing:
                # At most one round per interval: states that come meanwhile wait (latest wins).
                self._closing.wait(max(0.0, self._round_at + self.interval - time.monotonic()))
                closing = self._closing.is_set()
            self._wake.clear()
            try:
                self._round(closing=closing)
            except Exception as error:  # never let the thread die: the next round tries again
                self._note_failure(error)
            if closing:
                return

    def _idle_wait(self) -> float:
        """Seconds until the next heartbeat, outbox write or sweep is due."""
        now = time.monotonic()
        due = [self._outbox_at + self.outbox_every, self._sweep_at + self.heartbeat]
        due += [at + self.heartbeat for run_id, at in self._written.items() if run_id not in self._ended]
        return max(0.05, min(due) - now)

    def _round(self, *, closing: bool) -> None:
        now, wall = time.monotonic(), time.time()
        self._round_at = now
        with self._pending_lock:
            taken, self._pending = self._pending, {}
        for run_id, state in taken.items():
            self._runs[run_id] = state
            if not state.final:
                self._ended.pop(run_id, None)  # resumed in this process
            elif run_id not in self._ended:
                self._ended[run_id] = now
        for run_id, state in self._runs.items():
            live = run_id not in self._ended
            if run_id in taken or (live and now - self._written.get(run_id, -float("inf")) >= self.heartbeat):
                self._write(run_file_name(run_id), self._families.run_families([self._sample(state, wall)]))
                self._written[run_id] = now
        if self._health is not None and (closing or now - self._outbox_at >= self.outbox_every):
            families = self._families.outbox_families(self.store, self._health())
            self._write(outbox_file_name(self.store), families)
            self._outbox_at = now
        if now - self._sweep_at >= self.heartbeat:
            self._sweep(now, wall)
            self._sweep_at = now
        self._failed = None

    def _write(self, name: str, families: list[Metric]) -> None:
        from prometheus_client.exposition import write_to_textfile

        write_to_textfile(str(self.directory / name), self._families.Fixed(families))
        self.writes += 1

    def _sweep(self, now: float, wall: float) -> None:
        """Remove this writer's ended runs after ``keep``, and anyone's file nobody has
        rewritten for ``keep`` seconds (its process is gone)."""
        for run_id, ended in list(self._ended.items()):
            if now - ended >= self.keep:
                self._remove(self.directory / run_file_name(run_id))
                for table in (self._ended, self._runs, self._written):
                    table.pop(run_id, None)
        ours = {run_file_name(run_id) for run_id in self._runs}
        for entry in _entries(self.directory):
            if entry.name in ours or not _OURS.match(entry.name):
                continue
            try:
                stale = wall - entry.stat().st_mtime >= self.keep
            except OSError:
                continue
            if stale:
                self._remove(Path(entry.path))

    def _remove(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            self._note_failure(error)

    def _note_failure(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {redact(error)}"
        if text != self._failed:  # once per cause, not once a second
            self._failed = text
            log.warning(
                "afs-callbacks: writing run states for Prometheus in %s failed: %s", self.directory, text
            )


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as found:
            return list(found)
    except OSError:
        return []


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]


__all__ = [
    "HEARTBEAT_SECONDS",
    "MIN_INTERVAL",
    "OUTBOX_SECONDS",
    "TextfileWriter",
    "outbox_file_name",
    "run_file_name",
]
