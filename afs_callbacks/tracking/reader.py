"""Loss windows on a device read off the training thread.

Reading a window of loss tensors on a GPU is the one device sync the tracker makes: the
training thread must not wait for the device's queue to drain. So it hands each such window
to a reader thread (one per process) and picks the verdict up at a later step, in order; it
waits for reads only when it needs the last verdict (the run's end, a per-batch message).
With ``stop_on_nan`` the window is read on the training thread at the check itself: the run
must stop there.

A window of Python floats (HF, Keras) or of CPU tensors is read at once, on the training
thread: a CPU tensor has no device to wait for, and its read (a stack and a copy, about
20 µs for 50 steps) costs the run less than a hand-over, which woke the reader thread to
ask for the GIL while the training thread held it, a few times per window (the attribution
is in benchmarks/README.md, issue #27).

Handing a window over is a deque append and an event set, a few microseconds once every N
steps (a ``concurrent.futures`` pool costs ten times that per window). The reader thread
blocks while there is nothing to read: it never wakes up on its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.tracking.nan import PendingWindow, Window

log = get_logger(__name__)


class _Read:
    """One window on its way through the reader: its verdict, or why there is none."""

    __slots__ = ("done", "error", "owner", "pending", "stream", "window")

    def __init__(self, pending: PendingWindow, stream: Any, owner: WindowReads) -> None:
        self.pending, self.stream, self.owner = pending, stream, owner
        self.window: Window | None = None
        self.error: BaseException | None = None
        self.done = False


class _Reader:
    """The process's reader thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._jobs: deque[_Read] = deque()
        self._wake = threading.Event()
        self.finished = threading.Condition()
        threading.Thread(target=self._run, name="afs-loss-reader", daemon=True).start()

    def submit(self, job: _Read) -> None:
        self._jobs.append(job)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()  # no timeout: idle means asleep
            self._wake.clear()  # before draining: a submit from now on wakes the next turn
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    job.window = _read(job.pending, job.stream)
                except BaseException as error:  # reported on the training thread, once
                    job.error = error
                job.pending = None  # type: ignore[assignment]  # the tensors can go
                job.done = True
                job.owner.landed = True
                with self.finished:
                    self.finished.notify_all()


_lock = threading.Lock()
_reader_of_process: _Reader | None = None


def _reader() -> _Reader:
    """The process's reader (a fresh one in a forked child: the parent's thread is not there)."""
    global _reader_of_process
    with _lock:
        if _reader_of_process is None or _reader_of_process.pid != os.getpid():
            _reader_of_process = _Reader()
        return _reader_of_process


class WindowReads:
    """One tracker's windows being read, oldest first.

    ``landed`` turns True when a verdict comes in (the reader thread sets it): the step
    hook tests that plain attribute, and looks at the reads only then.
    """

    def __init__(self) -> None:
        self.in_flight: deque[_Read | Window] = deque()
        self.landed = False
        self._failed = False

    def submit(self, pending: PendingWindow) -> None:
        """Start reading ``pending`` on the reader thread (floats and CPU tensors: here, at
        once, after the windows already in flight)."""
        if not pending.needs_device:
            self.read_here(pending)
            return
        self.in_flight.append(_Read(pending, _stream_of(pending), self))
        _reader().submit(self.in_flight[-1])  # type: ignore[arg-type]

    def read_here(self, pending: PendingWindow) -> None:
        """Read ``pending`` on this thread, after the windows already in flight."""
        try:
            self.in_flight.append(pending.window())
        except Exception as error:
            self._report(error)
        self.landed = True

    def ready(self) -> list[Window]:
        """The verdicts that are in, in order (stops at the first still being read)."""
        self.landed = False  # before looking: a verdict landing meanwhile sets it again
        done = []
        jobs = self.in_flight
        while jobs:
            job = jobs[0]
            if isinstance(job, _Read):
                if not job.done:
                    break
                window = self._verdict(job)
            else:
                window = job
            jobs.popleft()
            if window is not None:
                done.append(window)
        return done

    def wait(self, timeout: float) -> list[Window]:
        """Every verdict, waiting up to ``timeout`` seconds in all for reads to finish (a
        read that does not finish in time is given up, with one log line)."""
        deadline = time.monotonic() + timeout
        pending = [job for job in self.in_flight if isinstance(job, _Read) and not job.done]
        if pending:
            finished = _reader().finished
            with finished:
                while not all(job.done for job in pending):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.warning("afs-callbacks: a loss window took too long to read; it is left out")
                        break
                    finished.wait(left)
        self.landed = False
        done = []
        while self.in_flight:
            job = self.in_flight.popleft()
            window = (self._verdict(job) if job.done else None) if isinstance(job, _Read) else job
            if window is not None:
                done.append(window)
        return done

    def _verdict(self, job: _Read) -> Window | None:
        if job.error is not None:
            self._report(job.error)
        return job.window

    def _report(self, error: BaseException) -> None:
        if not self._failed:  # one traceback per run: a broken read repeats every window
            self._failed = True
            log.error(
                "afs-callbacks: could not read a loss window; NaN checks may miss it",
                exc_info=(type(error), error, error.__traceback__),
            )


def _stream_of(pending: PendingWindow) -> Any:
    """The CUDA stream the training thread queued the losses on (None on a CPU): the
    reader must read them after that stream's work, not on its own default stream."""
    first = pending.tensors[0]
    if not getattr(first, "is_cuda", False):
        return None
    import torch  # pragma: no cover - needs a GPU

    return torch.cuda.current_stream(first.device)  # pragma: no cover - needs a GPU


def _read(pending: PendingWindow, stream: Any) -> Window:
    if stream is None:
        return pending.window()
    import torch  # pragma: no cover - needs a GPU

    with torch.cuda.stream(stream):  # pragma: no cover - needs a GPU
        return pending.window()


__all__ = ["WindowReads"]
