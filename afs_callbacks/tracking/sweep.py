"""Which sweep a run is a trial of, found without configuration where the tool tells.

A researcher rarely trains one run; a sweep's trials are one thing to them. Each trial is
tagged (``sweep``, ``trial`` and ``trial_params`` in every event's context, a line naming
the trial and its parameters in every message), so routing can keep its routine starts and
clean ends in the history (:mod:`afs_callbacks.delivery.routing`) and a sweep's summary can
gather them (:mod:`afs_callbacks.sweeps`).

Where a sweep is told, first found wins:

==========================  ===========================================================
explicit                    ``sweep=`` (an adapter's argument), else ``AFS_SWEEP``;
                            ``AFS_TRIAL`` names the trial; ``off``: not a sweep
an Optuna trial             passed in (``trial=``), else found in the call stack
                            (``study.optimize(objective)``, HF ``hyperparameter_search``
                            with the Optuna backend): the study's name, the trial's
                            number and its parameters
HF hyperparameter search    the ``TrainerState``'s ``trial_name``/``trial_params``
Ray Tune                    the trial's context (``ray.tune.get_context()``): the
                            experiment, the trial's id, its ``config``
W&B sweep                   ``WANDB_SWEEP_ID`` (the agent sets it), ``WANDB_RUN_ID``
SLURM array job             ``SLURM_ARRAY_JOB_ID`` and ``SLURM_ARRAY_TASK_ID``
==========================  ===========================================================

No tool is imported here: a tool's state is read only where the program already imported
it (``sys.modules``). Nothing here raises.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from afs_callbacks._log import get_logger

log = get_logger(__name__)

#: Most parameters kept per trial (the rest are counted in the text).
MAX_PARAMS = 20
#: ``AFS_SWEEP`` (or ``sweep=``) values that say "not a sweep", whatever the tool tells.
_NOT_A_SWEEP = frozenset({"off", "none", "false", "no", "0"})
#: Frames looked at for an Optuna trial or Ray's trial config.
_STACK_DEPTH = 60


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep.

    Args:
        sweep: the sweep's id (the study's name, the Ray experiment, the W&B sweep id...).
        trial: the trial's id within it.
        params: the trial's parameters (scalars only).
        tool: what told: ``explicit``, ``optuna``, ``transformers``, ``ray``, ``wandb``,
            ``slurm``.
    """

    sweep: str
    trial: str
    params: dict[str, str | int | float | bool] = field(default_factory=dict)
    tool: str = "explicit"

    def context(self) -> dict[str, Any]:
        """The fields every event of the trial carries."""
        fields: dict[str, Any] = {"sweep": self.sweep, "trial": self.trial, "sweep_tool": self.tool}
        if self.params:
            fields["trial_params"] = dict(self.params)
        return fields

    def line(self) -> str:
        """The trial in words: ``Trial 3 of sweep lr-study: lr=0.01, layers=2``."""
        shown = ", ".join(f"{name}={_short(value)}" for name, value in self.params.items())
        return f"Trial {self.trial} of sweep {self.sweep}" + (f": {shown}" if shown else "")


def detect(
    *,
    sweep: str | None = None,
    trial: Any = None,
    hf_state: Any = None,
    run_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Trial | None:
    """The sweep this run is a trial of, or None (see the module's table). ``trial``: an
    Optuna trial the caller was given, or HF's ``TrainerState`` (also ``hf_state``).
    Never raises."""
    env = os.environ if environ is None else environ
    try:
        explicit = sweep or env.get("AFS_SWEEP", "").strip() or None
        if explicit is not None and explicit.lower() in _NOT_A_SWEEP:
            return None  # a SLURM array of independent jobs, say: not a sweep
        if trial is not None and not _is_optuna_trial(trial) and hf_state is None:
            trial, hf_state = None, trial  # HF's TrainerState, passed as the trial
        optuna_trial = trial if trial is not None else _optuna_trial_in_stack()
        found = _optuna(optuna_trial) or _transformers(hf_state) or _ray() or _wandb(env) or _slurm(env)
        if explicit is not None:
            name = env.get("AFS_TRIAL", "").strip() or (found.trial if found else None) or run_id or "?"
            return Trial(explicit, name, found.params if found else {}, "explicit")
        return found
    except Exception:
        log.debug("afs-callbacks: sweep detection failed", exc_info=True)
        return None


# The tools ----------------------------------------------------------------------------


def _is_optuna_trial(value: Any) -> bool:
    optuna = sys.modules.get("optuna")
    if optuna is None or value is None:
        return False
    kinds = tuple(
        kind
        for kind in (getattr(optuna.trial, "Trial", None), getattr(optuna.trial, "FrozenTrial", None))
        if kind
    )
    return bool(kinds) and isinstance(value, kinds)


def _optuna_trial_in_stack() -> Any:
    """The trial Optuna's own frames hand the objective (``study.optimize`` runs
    ``func(trial)``). Only the tool's frames are read: reading a frame's locals keeps a
    snapshot of them, and the caller's own objects must not be kept alive so."""
    if "optuna" not in sys.modules:
        return None
    for frame in _frames():
        if _module(frame).startswith("optuna."):
            value = frame.f_locals.get("trial")
            if _is_optuna_trial(value):
                return value
    return None


def _optuna(trial: Any) -> Trial | None:
    if trial is None:
        return None
    study = getattr(trial, "study", None)
    name = getattr(study, "study_name", None) or "optuna"
    return Trial(str(name), str(trial.number), _scalars(getattr(trial, "params", {}) or {}), "optuna")


def _transformers(state: Any) -> Trial | None:
    name = getattr(state, "trial_name", None)
    if not name:
        return None
    return Trial(
        "hyperparameter_search",
        str(name),
        _scalars(getattr(state, "trial_params", None) or {}),
        "transformers",
    )


def _ray() -> Trial | None:
    if "ray.train._internal.session" not in sys.modules:
        return None
    from ray.train._internal import session  # type: ignore[import-not-found]  # already imported

    current = session.get_session()
    info = getattr(current, "trial_info", None)
    if info is None or not getattr(info, "id", None):
        return None
    if getattr(current, "world_rank", None) is not None:
        return None  # a Ray Train worker (a training of its own, not a Tune trial)
    return Trial(str(info.experiment_name or "ray-tune"), str(info.id), _ray_config(), "ray")


def _ray_config() -> dict[str, str | int | float | bool]:
    """The trial's ``config``: the argument Ray's function wrapper passes the trainable."""
    for frame in _frames():
        if _module(frame).startswith("ray.tune."):  # only the tool's frames (see above)
            config = frame.f_locals.get("config")
            if isinstance(config, Mapping):
                return _scalars(config)
    return {}


def on_tool_stop(callback: Callable[[], None]) -> bool:
    """Call ``callback()`` when the sweep's tool ends this trial from outside, before it
    ends the process: Ray Tune's scheduler (ASHA, HyperBand, median stopping) or the
    experiment's stop criteria finish the trial's session (``_TrainSession.finish``), then
    the worker is ended at once, while the trainable still waits in ``report()``. Returns
    whether a hook was installed (only inside a Ray Tune trial). Never raises."""
    try:
        if "ray.train._internal.session" not in sys.modules:
            return False
        from ray.train._internal import session  # already imported

        current = session.get_session()
        finish = getattr(current, "finish", None)
        if current is None or not callable(finish) or getattr(current, "world_rank", None) is not None:
            return False  # no Tune trial here (a Ray Train worker's session is its trainer's)

        def finish_and_tell(*args: Any, **kwargs: Any) -> Any:
            try:
                callback()
            except Exception:
                log.exception("afs-callbacks: reporting the trial's stop failed")
            return finish(*args, **kwargs)

        # This trial's session only; setattr: mypy refuses assigning to a method.
        setattr(current, "finish", finish_and_tell)  # noqa: B010
        return True
    except Exception:
        log.debug("afs-callbacks: no hook on the tool's stop", exc_info=True)
        return False


def _wandb(env: Mapping[str, str]) -> Trial | None:
    sweep = env.get("WANDB_SWEEP_ID", "").strip()
    if not sweep:
        return None
    return Trial(sweep, env.get("WANDB_RUN_ID", "").strip() or "?", {}, "wandb")


def _slurm(env: Mapping[str, str]) -> Trial | None:
    job, task = env.get("SLURM_ARRAY_JOB_ID", "").strip(), env.get("SLURM_ARRAY_TASK_ID", "").strip()
    if not (job and task):
        return None
    return Trial(f"slurm-{job}", task, {}, "slurm")


# Small helpers ------------------------------------------------------------------------


def _frames() -> list[FrameType]:
    """The caller's stack (this thread's: a trial's tool calls the training on it)."""
    frames: list[FrameType] = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and len(frames) < _STACK_DEPTH:
        frames.append(frame)
        frame = frame.f_back
    return frames


def _module(frame: FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) else ""


def _scalars(values: Mapping[Any, Any]) -> dict[str, str | int | float | bool]:
    kept: dict[str, str | int | float | bool] = {}
    for name, value in values.items():
        if len(kept) >= MAX_PARAMS:
            break
        if isinstance(value, (bool, int, float)):
            kept[str(name)] = value
        elif isinstance(value, str):
            kept[str(name)] = value[:100]
    return kept


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


__all__ = ["MAX_PARAMS", "Trial", "detect", "on_tool_stop"]
