"""The Hugging Face adapter's work between hooks: settling a run from the Trainer's
arguments, finding and watching the Trainer, resuming, and the reports a hook defers.

A base of :class:`afs_callbacks.integrations.transformers.AFSNotify`, kept apart so the
adapter itself only translates hooks; no transformers import.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from afs_callbacks.integrations import _hf_read as read
from afs_callbacks.integrations._base import NotifierBase, broadcast_run_id
from afs_callbacks.integrations._caller import holder_in_stack, holds, wrap_call


class HFRunSupport(NotifierBase):
    """What the Hugging Face adapter does besides translating hooks (internal)."""

    _trainer_ref: weakref.ref[Any] | None = None
    _pending_step: int | None
    _pending_epoch: int | None
    _epoch_metrics: dict[str, float]

    def _prepare_run(self, args: Any, state: Any, model: Any) -> None:
        """Settle what the Trainer's arguments decide, where the user did not."""
        monitor, mode = read.monitor_of(args)
        self._resolve(
            model_name=read.model_name(model),
            monitor=monitor,
            mode=None if self._given["monitor"] else mode,  # greater_is_better is about its own metric
            nan_check_every=max(1, int(getattr(state, "logging_steps", 0) or 50)),
        )
        self._reset_run()
        world_size = int(getattr(args, "world_size", 1) or 1)
        self._bind(rank=int(getattr(args, "process_index", 0) or 0), world_size=world_size)
        if world_size > 1:
            self._share_run_id(broadcast_run_id)
        self._install_crash_hooks()

    def _find_trainer(self) -> Any:
        """The Trainer running this callback (looked up the call stack once, then held
        weakly) with its ``train`` wrapped to report an exception the caller catches."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            runs_us = holds(self)
            trainer = holder_in_stack(lambda o: read.is_trainer(o) and runs_us(o.callback_handler), skip=2)
            if trainer is not None:
                self._trainer_ref = weakref.ref(trainer)
                wrap_call(trainer, "train", self._caller_caught)
        return trainer

    def _restore(self, args: Any, state: Any) -> str:
        """Resuming at ``state.global_step``: reload what :meth:`on_save` kept."""
        path = read.checkpoint_dir(args, state)
        saved = {"run_id": self.tracker.run_id, "started": True, **read.load_run_state(path)}
        self.tracker.load_state_dict(saved)
        return path if os.path.isdir(path) else f"global step {state.global_step}"

    def _report_step(self) -> None:
        """A step that expected a log which never came is counted without its loss."""
        if self._pending_step is not None:
            step, self._pending_step = self._pending_step, None
            self.tracker.on_step(step)

    def _report_epoch(self) -> None:
        if self._pending_epoch is None:
            return
        epoch, self._pending_epoch = self._pending_epoch, None
        metrics, self._epoch_metrics = self._epoch_metrics, {}
        self.tracker.epoch_end(epoch, metrics)

    def _stop_if_asked(self, control: Any, stop: bool) -> Any:
        if self._stop_asked(stop):
            control.should_training_stop = True
            return control
        return None


__all__ = ["HFRunSupport"]
