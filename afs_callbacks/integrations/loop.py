"""Notifications from a training loop you wrote: plain PyTorch, Lightning Fabric, accelerate.

Example::

    from afs_callbacks.integrations.loop import RunNotifier

    with RunNotifier(model_name="resnet", total_steps=len(loader) * epochs) as run:
        for epoch in range(epochs):
            for batch in loader:
                loss = train_step(batch)
                stop = run.step(loss=loss)   # True: a NaN with stop_on_nan, or a stop command
                if run.checkpoint_requested: # a checkpoint command (or a stop: save first)
                    run.checkpoint(save_checkpoint(model))
                if stop:
                    break
            run.epoch({"val_loss": validate()})

Leaving the block normally completes the run (with its summary); an exception escaping
it is reported (failed, out of memory, or interrupted for Ctrl-C and SIGTERM) and raised
again. The loss may stay a device tensor: it is read once every ``nan_check_every`` steps.

With Fabric or accelerate, give the process's place so that only the main process
announces the run, and every process can report a crash::

    RunNotifier(rank=fabric.global_rank, world_size=fabric.world_size, ...)
    RunNotifier(rank=accelerator.process_index, world_size=accelerator.num_processes, ...)

The model name may come first: ``RunNotifier("resnet", total_steps=...)``. A guessed name
says which one is meant: ``RunNotifier(total_epochs=...)`` → ``did you mean
RunNotifier(epochs=...)?``, ``run.epoch_end(...)`` → ``did you mean run.epoch()?``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from afs_callbacks.integrations._base import NotifierBase, agree_across_ranks, broadcast_run_id, refuse
from afs_callbacks.tracking.asks import CHECKPOINT, STOP, Ask
from afs_callbacks.tracking.sink import EventSink


class RunNotifier(NotifierBase):
    """Report a hand-written training loop's run (see the module docstring).

    Args:
        name_or_manager: the model name (``RunNotifier("resnet")``), or a manager.
        total_steps: optimizer steps planned (for progress and ETA).
        epochs: epochs planned.
        batch_size: samples per step (for samples/s).
        rank / world_size: this process's place under DDP, Fabric or accelerate
            (default: torchrun's ``RANK``/``WORLD_SIZE``, else a single process).
        **options: the arguments every adapter takes
            (:class:`~afs_callbacks.integrations._base.NotifierBase`: ``model_name``,
            ``manager``, ``run_id``, ``monitor``, ``mode``, ``patience``, ``nan_check_every``,
            ``stop_on_nan``, ``stall_timeout``, ``monitors``, ``chart``...).

    Raises:
        ValueError: an argument out of range; the message names ``RunNotifier``.
        TypeError: an unknown argument, with the likely intended one.
    """

    def __init__(
        self,
        name_or_manager: str | EventSink | None = None,
        /,
        *,
        total_steps: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name_or_manager, **options)
        for name, value in (("total_steps", total_steps), ("epochs", epochs), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                refuse(ValueError(f"{type(self).__name__}({name}={value!r}) must be an integer >= 1"))
        self._plan = {"max_steps": total_steps, "epochs": epochs, "batch_size": batch_size}
        self._rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
        self._world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
        self._step = 0
        self._epoch = 0
        self._inside = False
        self._end_reason: str | None = None
        self._stop_ask: Ask | None = None
        self._checkpoint_ask: Ask | None = None

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
        self._stop_ask = self._checkpoint_ask = None
        self._attach_control(self._world)
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
        tracker = self.tracker
        attention = tracker.on_step(self._step, loss, grad_norm)
        if self._agree:
            # Every rank must stop (and save) at the same step: agree every few steps.
            if self._step % self._agree_every == 0:
                self._take(*self._agreed_asks(agree_across_ranks))
        elif attention:
            self._take(tracker.stop_requested, *tracker.asks_waiting())
        return self._stop_ask is not None or self._stop_asked(tracker.stop_requested)

    def _take(self, nan_stop: bool, stop: bool, checkpoint: bool) -> None:
        """Hold what was asked until the loop reads :attr:`should_stop` and
        :attr:`checkpoint_requested` (on other ranks than zero, what rank zero agreed)."""
        if not (stop or checkpoint):
            return
        tracker = self.tracker
        asked = tracker.asked(stop=stop, checkpoint=checkpoint)
        agreed = Ask(CHECKPOINT, "rank 0", "rank 0")  # what the other ranks act on
        if stop:
            self._stop_ask = asked.stop or Ask(STOP, "rank 0", "rank 0")
        if checkpoint or stop:
            self._checkpoint_ask = asked.save or self._stop_ask or agreed

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
        """A checkpoint was written to ``path`` (``best``: it holds the best model). It
        answers a checkpoint asked from outside (:attr:`checkpoint_requested`)."""
        tracker = self.tracker
        tracker.checkpoint_saved(os.fspath(path), step=self._step, best=best)
        ask, self._checkpoint_ask = self._checkpoint_ask, None
        if ask is not None:
            tracker.answered(ask, checkpoint=os.fspath(path))

    def stop(self, reason: str) -> None:
        """Say why the loop ends early (``"early_stopping"``, ``"time budget"``): the
        completion names it."""
        self._end_reason = reason

    @property
    def should_stop(self) -> bool:
        """True after a NaN/Inf loss when ``stop_on_nan`` is set, or when someone asked the
        run to stop (``afs-notify stop``, the dashboard, a chat button, a rule): finish
        the step, save if :attr:`checkpoint_requested`, then leave the loop."""
        return self._stop_ask is not None or self._stop_asked(self.tracker.stop_requested)

    @property
    def checkpoint_requested(self) -> bool:
        """True when someone asked for a checkpoint now (``afs-notify checkpoint``), or
        asked the run to stop: save one and pass its path to :meth:`checkpoint`, which
        answers them. Read after :meth:`step`; a loop that never saves can ignore it."""
        return self._checkpoint_ask is not None

    def __dir__(self) -> list[str]:
        # The guessed names below are no part of the API: not offered by tab completion.
        return [name for name in super().__dir__() if name not in _GUESSED]


#: Names people guess from other tools -> the method they mean.
METHOD_GUESSES: Mapping[str, str] = {
    **dict.fromkeys(
        ("epoch_end", "end_epoch", "on_epoch_end", "epoch_completed", "log_epoch", "epoch_done"), "epoch"
    ),
    **dict.fromkeys(
        ("on_step", "step_end", "on_batch_end", "batch_end", "log_step", "train_step", "log", "update"),
        "step",
    ),
    **dict.fromkeys(
        ("evaluate", "eval", "validate", "validation", "on_evaluate", "log_metrics"), "evaluation"
    ),
    **dict.fromkeys(("save", "save_checkpoint", "checkpoint_saved", "on_save"), "checkpoint"),
    **dict.fromkeys(("early_stop", "stop_training", "request_stop"), "stop"),
}
# Names for starting or ending a run: the block does both.
_BLOCK_VERBS = frozenset(
    {
        "start",
        "begin",
        "finish",
        "end",
        "complete",
        "completed",
        "done",
        "close",
        "fail",
        "failed",
        "stop_run",
    }
)


class _Guessed:
    """A name people guess for a :class:`RunNotifier` method: looking it up raises the
    ``AttributeError`` Python would, saying which method is meant.

    A descriptor on the class rather than ``__getattr__``: a class with ``__getattr__``
    makes CPython route every attribute access of its instances through a slower hook,
    which cost ``run.step()`` about 0.2 µs (a third of it). A plain typo (``run.shuold_stop``)
    gets Python's own ``Did you mean: 'should_stop'?``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # No name= or obj=: Python would add a suggestion of its own to this one.
        raise AttributeError(_no_such_method(owner or type(instance), self.name))


def _no_such_method(cls: type, name: str) -> str:
    """``'RunNotifier' object has no attribute 'epoch_end': did you mean run.epoch()?``"""
    missing = f"{cls.__name__!r} object has no attribute {name!r}"
    if name in _BLOCK_VERBS:
        return (
            f"{missing}: a run starts and ends with its block (with {cls.__name__}(...) as run: ...);"
            " leaving it completes the run, an exception escaping it fails it"
        )
    guess = METHOD_GUESSES[name]
    return f"{missing}: did you mean run.{guess}{'()' if callable(getattr(cls, guess, None)) else ''}?"


_GUESSED = frozenset(name for name in (*METHOD_GUESSES, *_BLOCK_VERBS) if not hasattr(RunNotifier, name))
for _name in _GUESSED:
    setattr(RunNotifier, _name, _Guessed(_name))


__all__ = ["RunNotifier"]
