"""Lightning's SLURM auto-requeue, seen from the notifier.

With ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default on SLURM), the requeue
signal (``SIGUSR1`` unless set otherwise) makes Lightning save an HPC checkpoint and run
``scontrol requeue``; the scheduler then stops the job (SIGTERM) and starts it again later,
and Lightning resumes from that checkpoint. People want one message for all of it:
"preempted, requeued", and the resumed job under the same run.

:class:`RequeueWatch` puts a small handler in front of Lightning's for the requeue signal.
The handler only sets a flag (a signal handler must not take locks the interrupted code
may hold); the adapter reports at its next hook. Lightning's own teardown puts back the
handlers it found, which removes this one too.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.tracking.cluster import slurm_job

log = get_logger(__name__)


def requeue_signal(trainer: Any) -> int | None:
    """The signal Lightning requeues the SLURM job on, when it does (else None)."""
    environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    if environment is None:
        environment = getattr(getattr(trainer, "strategy", None), "cluster_environment", None)
    if type(environment).__name__ != "SLURMEnvironment" or not getattr(environment, "auto_requeue", False):
        return None
    number = getattr(environment, "requeue_signal", None)
    return int(number) if number is not None else None


class RequeueWatch:
    """Notices the SLURM requeue signal for one fit."""

    def __init__(self) -> None:
        self.signalled = False
        self._installed_for: int | None = None

    def install(self, trainer: Any) -> None:
        """Chain a flag-setting handler in front of Lightning's (main thread only)."""
        self.signalled = False
        number = requeue_signal(trainer)
        if number is None or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(number)
        if getattr(previous, "_afs_requeue_watch", False):
            return  # already in front (a second fit with the same callback)

        def on_requeue(signum: int, frame: FrameType | None) -> None:
            self.signalled = True
            if callable(previous):
                previous(signum, frame)

        on_requeue._afs_requeue_watch = True  # type: ignore[attr-defined]
        try:
            signal.signal(number, on_requeue)
            self._installed_for = number
        except (ValueError, OSError):
            log.debug("afs-callbacks: could not watch the SLURM requeue signal", exc_info=True)

    def reason(self) -> str:
        """What the interruption message says."""
        job = slurm_job()
        return f"preempted, requeued (SLURM job {job})" if job else "preempted, requeued"


__all__ = ["RequeueWatch", "requeue_signal"]
