"""Notifications from a training loop you wrote: plain PyTorch, Lightning Fabric, accelerate.

Example::

    from afs_callbacks.integrations.loop import RunNotifier

    with RunNotifier(model_name="resnet", total_steps=len(loader) * epochs) as run:
        for epoch in range(epochs):
            for batch in loader:
                loss = train_step(batch)
                if run.step(loss=loss):      # True when stop_on_nan asks to stop
                    break
            run.epoch({"val_loss": validate()})

Leaving the block normally completes the run (with its summary); an exception escaping
it is reported (failed, out of memory, or interrupted for Ctrl-C and SIGTERM) and raised
again. The loss may stay a device tensor: it is read once every ``nan_check_every`` steps.

With Fabric or accelerate, give the process's place so that only the main process
announces the run, and every process can report a crash::

    RunNotifier(rank=fabric.global_rank, world_size=fabric.world_size, ...)
    RunNotifier(rank=accelerator.process_index, world_size=accelerator.num_processes, ...)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from afs_callbacks.integrations._base import NotifierBase, broadcast_run_id
from afs_callbacks.tracking.sink import EventSink


class RunNotifier(NotifierBase):
    """Report a hand-written training loop's run (see the module docstring).

    Args:
        manager: where notifications go (default: the environment's channels).
        total_steps: optimizer steps planned (for progress and ETA).
        epochs: epochs planned.
        batch_size: samples per step (for samples/s).
        rank / world_size: this process's place under DDP, Fabric or accelerate
            (default: torchrun's ``RANK``/``WORLD_SIZE``, else a single process).
        **options: the arguments every adapter takes
            (:class:`~afs_callbacks.integrations._base.NotifierBase`: ``model_name``,
            ``run_id``, ``monitor``, ``mode``, ``patience``, ``nan_check_every``,
            ``stop_on_nan``, ``stall_timeout``, ``monitors``, ``chart``...).

    Raises:
        ValueError: an argument out of range; the message names ``RunNotifier``.
    """

    def __init__(
        self,
        manager: EventSink | None = None,
        *,
        total_steps: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(manager, **options)
        for name, value in (("total_steps", total_steps), ("epochs", epochs), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"RunNotifier({name}={value!r}) must be an integer >= 1")
        self._plan = {"max_steps": total_steps, "epochs": epochs, "batch_size": batch_size}
        self._rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
        self._world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
        self._step = 0
        self._epoch = 0
        self._inside = False
        self._end_reason: str | None = None

    def __enter__(self) -> RunNotifier:
        """Announce the run (TRAINING_STARTED)."""
        if self._tracker_ended():
            self._new_run()  # the same notifier used for a second loop: a new run
        self._step, self._epoch, self._end_reason = 0, 0, None
        self._bind(rank=self._rank, world_size=self._world)
        if self._world > 1 and self._config.run_id is None:
            self._share_run_id(broadcast_run_id)
        self._install_crash_hooks()  # SIGTERM then raises here and is reported as such
        tracker = self.tracker
        tracker.start(world_size=self._world, **self._plan)
        tracker.epoch_started(0)
        self._inside = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Complete the run, or report what escaped the block; never swallows it."""
        self._inside = False
        self._remove_sigterm_handler()
        from afs_callbacks.watch import is_failure

        if exc is not None and is_failure(exc):
            self.tracker.failed(exc)
        else:
            self.tracker.completed(end_reason=self._end_reason)

    def step(self, loss: Any = None, *, grad_norm: Any = None, step: int | None = None) -> bool:
        """One optimizer step finished (``step``: its number, default: counted here).
        Returns True when training should stop (a NaN/Inf loss with ``stop_on_nan``).

        ``loss`` may be a float or a tensor on any device (no sync here).
        """
        self._step = self._step + 1 if step is None else int(step)
        return self._stop_asked(self.tracker.on_step(self._step, loss, grad_norm))

    def epoch(self, metrics: Mapping[str, Any] | None = None) -> None:
        """An epoch finished with ``metrics`` (floats or 0-d tensors; read here, once)."""
        tracker = self.tracker
        tracker.epoch_end(self._epoch, metrics or {})
        self._epoch += 1
        tracker.epoch_started(self._epoch)

    def evaluation(self, metrics: Mapping[str, Any]) -> None:
        """An evaluation finished. Inside the block it is progress (``validation_completed``,
        at the epoch cadence) and its metrics judge the monitored metric (improvement,
        plateau); outside, it is a standalone evaluation, always pushed."""
        self.tracker.evaluation_completed(metrics, in_training=self._inside)

    def checkpoint(self, path: str | os.PathLike[str], *, best: bool = False) -> None:
        """A checkpoint was written to ``path`` (``best``: it holds the best model)."""
        self.tracker.checkpoint_saved(os.fspath(path), step=self._step, best=best)

    def stop(self, reason: str) -> None:
        """Say why the loop ends early (``"early_stopping"``, ``"time budget"``): the
        completion names it."""
        self._end_reason = reason

    @property
    def should_stop(self) -> bool:
        """True after a NaN/Inf loss when ``stop_on_nan`` is set."""
        return self._stop_asked(self.tracker.stop_requested)


__all__ = ["RunNotifier"]
