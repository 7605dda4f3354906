"""Loss windows read off the training thread.

Reading a window of loss tensors is the one device sync the tracker makes, and even on a
CPU it is a few torch calls over N tensors: tens of microseconds in a tight loop, hundreds
inside a training loop whose step has just pushed them out of the cache. So the training
thread hands each window to a reader thread (one per process) and picks the verdict up at
a later step, in order; it waits for reads only when it needs the last verdict (the run's
end, a per-batch message, ``stop_on_nan``). A window of Python floats (HF, Keras) is read
at once: it costs nothing.

The reader thread blocks on its queue while there is nothing to read: it never wakes up
on its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.tracking.nan import PendingWindow, Window

log = get_logger(__name__)

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_owner_pid = -1


def _reader() -> ThreadPoolExecutor:
    """The process's reader (a fresh one in a forked child: the parent's thread is not there)."""
    global _executor, _owner_pid
    with _lock:
        if _executor is None or _owner_pid != os.getpid():
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="afs-loss-reader")
            _owner_pid = os.getpid()
        return _executor


class WindowReads:
    """One tracker's windows being read, oldest first.

    ``landed`` turns True when a verdict comes in (the reader thread sets it): the step
    hook tests that plain attribute, and looks at the reads only then.
    """

    def __init__(self) -> None:
        self.in_flight: deque[Future[Window] | Window] = deque()
        self.landed = False
        self._failed = False

    def submit(self, pending: PendingWindow) -> None:
        """Start reading ``pending`` (floats only: read here, at once)."""
        if not pending.needs_device:
            self.in_flight.append(pending.window())
            self.landed = True
            return
        job = _reader().submit(_read, pending, _stream_of(pending))
        self.in_flight.append(job)
        job.add_done_callback(self._land)

    def _land(self, job: Future[Window]) -> None:
        self.landed = True

    def ready(self) -> list[Window]:
        """The verdicts that are in, in order (stops at the first still being read)."""
        self.landed = False  # before looking: a verdict landing meanwhile sets it again
        done = []
        jobs = self.in_flight
        while jobs:
            job = jobs[0]
            if isinstance(job, Future):
                if not job.done():
                    break
                window = self._result(job, 0.0)
            else:
                window = job
            jobs.popleft()
            if window is not None:
                done.append(window)
        return done

    def wait(self, timeout: float) -> list[Window]:
        """Every verdict, waiting up to ``timeout`` seconds in all for reads to finish (a
        read that does not finish in time is given up, with one log line)."""
        self.landed = False
        done = []
        jobs = self.in_flight
        deadline = time.monotonic() + timeout
        while jobs:
            job = jobs.popleft()
            left = max(0.0, deadline - time.monotonic())
            window = self._result(job, left) if isinstance(job, Future) else job
            if window is not None:
                done.append(window)
        return done

    def _result(self, job: Future[Window], timeout: float) -> Window | None:
        try:
            return job.result(timeout)
        except FutureTimeout:
            log.warning("afs-callbacks: a loss window took too long to read; it is left out")
        except Exception:
            if not self._failed:  # one traceback per run: a broken read repeats every window
                self._failed = True
                log.exception("afs-callbacks: could not read a loss window; NaN checks may miss it")
        return None


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
