"""``afs-notify exporter``: every run on the host on one ``/metrics``, read from the store.

One scrape target per machine, however many trainings it runs: the exporter reads the
outbox that every training process of the user writes (``AFS_STATE_DIR``) at each scrape,
read-only, and answers with the series of :mod:`afs_callbacks.prometheus.families`. It
holds nothing of its own: restart it whenever you like.

Which runs: every live one, and those that ended within ``keep`` seconds
(``AFS_PROMETHEUS_KEEP``), so a scrape sees how each ended before its series go. A live
run's heartbeat is the scrape's time while its process is alive on this host (the death
watcher's test), and its last state's time once it is gone: the same meaning as the
textfile's heartbeat, so one set of rules serves both ways in.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from afs_callbacks._log import get_logger
from afs_callbacks.delivery.deathwatch import process_gone
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox, OutboxUnavailable
from afs_callbacks.outcome import LIVE_STATUSES
from afs_callbacks.prometheus.families import RunSample, outbox_families, run_families
from afs_callbacks.redaction import redact
from afs_callbacks.runstate import RunState

log = get_logger(__name__)

#: The port ``afs-notify exporter`` listens on by default.
DEFAULT_PORT = 9464


class StoreCollector(Collector):
    """The runs and channels of the outbox in ``state_dir``, read at each collection.

    Args:
        state_dir: the folder of the outbox (``AFS_STATE_DIR``).
        keep: seconds an ended run stays in the output.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, keep: float = 3600.0) -> None:
        self.state_dir = os.path.realpath(Path(state_dir).expanduser())
        self.path = os.path.join(self.state_dir, OUTBOX_FILE)
        self.keep = keep
        self._host = socket.gethostname()
        self._outbox: Outbox | None = None
        self._lock = threading.Lock()  # scrapes may overlap; one connection serves them in turn

    def collect(self) -> Iterable[Metric]:
        """Run and delivery families as the store has them now."""
        now = time.time()
        with self._lock:
            read = self._read(now)
        if read is None:
            return [*run_families(()), *outbox_families(self.state_dir, None)]
        states, health = read
        samples = [RunSample(state, self._heartbeat(state, now)) for state in states]
        shown = [sample for sample in samples if self._shown(sample, now)]
        return [*run_families(shown), *outbox_families(self.state_dir, health)]

    def close(self) -> None:
        """Close the store's connection."""
        with self._lock:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None

    def _read(self, now: float) -> tuple[list[RunState], list[Any]] | None:
        """The runs to show and the channels' health, or None when the store cannot be
        read (missing yet, locked past its timeout, damaged): ``afs_outbox_up`` says 0."""
        try:
            if self._outbox is None:
                self._outbox = Outbox(self.path, read_only=True)
            outbox = self._outbox
            return outbox.runs(limit=None, ended_since=now - self.keep), outbox.channel_health()
        except OutboxUnavailable as problem:
            if problem.reason != "missing":
                log.warning("afs-callbacks: exporter: %s", redact(problem))
        except Exception as error:
            log.warning("afs-callbacks: exporter cannot read %s: %s", self.path, redact(error))
        if self._outbox is not None:  # open afresh at the next scrape (a file moved aside)
            self._outbox.close()
            self._outbox = None
        return None

    def _heartbeat(self, state: RunState, now: float) -> float | None:
        """Now while the run's process lives on this host; its last state's time once it
        is gone; None for another host's run (its own exporter knows)."""
        if state.status not in LIVE_STATUSES:
            return None
        if state.host != self._host:
            return None
        return state.updated_at if process_gone(state.pid, state.updated_at) else now

    def _shown(self, sample: RunSample, now: float) -> bool:
        """A live row whose process vanished more than ``keep`` ago (nobody marked it
        killed) is history, not a run to alert on."""
        beat = sample.heartbeat
        return beat is None or sample.state.status not in LIVE_STATUSES or now - beat < self.keep


class ExporterServer(socketserver.ThreadingMixIn, WSGIServer):
    """The exporter's HTTP server: one thread per scrape, daemon threads."""

    daemon_threads = True
    url = ""


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_exporter(
    host: str, port: int, state_dir: str | os.PathLike[str], *, keep: float = 3600.0
) -> tuple[ExporterServer, StoreCollector]:
    """A server for ``http://host:port/metrics`` over the outbox in ``state_dir`` (not
    started: call ``serve_forever``); port 0 picks a free one.

    Raises:
        OSError: the address cannot be bound.
    """
    collector = StoreCollector(state_dir, keep=keep)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("ExporterServer", (ExporterServer,), {"address_family": family})
    server: ExporterServer = make_server(host, port, make_wsgi_app(registry), server_class, _QuietHandler)
    shown = f"[{host}]" if ":" in host else host
    server.url = f"http://{shown}:{server.server_port}/metrics"
    return server, collector


__all__ = ["DEFAULT_PORT", "ExporterServer", "StoreCollector", "make_exporter"]
