"""What every framework adapter shares, written once and importing no framework.

:class:`NotifierBase` holds the arguments every adapter takes, their defaults and their
validation (errors name the adapter: ``AFSNotify(patience=-1) must be >= 0``), the
tracker an adapter reports through, the facts a framework settles (model name, ranks, the
shared run id, the NaN-check cadence), the crash hooks and pickling for spawned workers.
An adapter subclasses it next to its framework's callback class and only translates hooks.

Beside it: :func:`hook`, the guard every hook body runs under (an error in an adapter is
logged once and never reaches the framework), :func:`broadcast_run_id`, the collective
that gives every rank rank zero's run id, and the words a completion uses to say why a run
ended (``max_epochs``, ``early_stopping (val_loss, patience 3, best 0.21)``...), which each
adapter's ``end_reason`` reads from its framework.

How a call is read: the one positional argument is the model name (``AFSNotify("resnet")``,
as most callbacks take their main argument) or, as before, a manager (told apart by type:
a manager has ``emit``); everything else is by keyword. A slip names the class the user
wrote and the likely intended argument (``RunNotifier(total_epochs=...) is not an argument:
did you mean RunNotifier(epochs=...)?``), where Python's own error would name
``NotifierBase.__init__()``. Under LightningCLI (jsonargparse), which would bury that
sentence in a report on the whole ``callbacks`` Union, a bad argument ends the command with
the one sentence, as jsonargparse's own bad-argument errors do (:func:`refuse`).

One set of defaults:

* ``mode`` is ``"min"`` unless given, except that the Hugging Face adapter follows the
  Trainer's ``greater_is_better`` when it monitors ``metric_for_best_model``;
* ``nan_check_every`` means the same everywhere: optimizer steps per loss window. Once per
  window the on-device NaN/Inf flag of tensor losses is read (one sync) and one point of
  the loss curve is recorded; float losses are checked at once for free. Default: the
  framework's logging cadence (Lightning ``log_every_n_steps``, HF ``logging_steps``),
  else 50.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NoReturn, TypeVar, cast

from afs_callbacks._log import get_logger
from afs_callbacks.tracking import RunTracker, TrackerConfig
from afs_callbacks.tracking.ending import (
    FAST_DEV_RUN,
    MAX_EPOCHS,
    MAX_STEPS,
    MAX_TIME,
    SHOULD_STOP,
    TERMINATE_ON_NAN,
    early_stopping,
    early_stopping_not_finite,
    named,
)
from afs_callbacks.tracking.sink import EventSink
from afs_callbacks.tracking.sweep import Trial
from afs_callbacks.tracking.tracker import check_settings

log = get_logger(__name__)

#: ``nan_check_every`` when neither the user nor the framework decides.
DEFAULT_NAN_CHECK_EVERY = 50

_F = TypeVar("_F", bound=Callable[..., Any])
_N = TypeVar("_N", bound="NotifierBase")


def hook(method: _F) -> _F:
    """Run a hook body so that no exception reaches the framework; log each hook's first
    failure (a per-step hook would flood the log)."""

    @functools.wraps(method)
    def guarded(self: NotifierBase, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            hook_failed(self, method.__name__)
            return None

    return cast(_F, guarded)


def hook_failed(notifier: NotifierBase, name: str) -> None:
    """Log the first failure of hook ``name`` (with its traceback); later ones stay quiet.
    Call it from an ``except`` block: a hot hook guards its body inline, not with
    :func:`hook`, whose wrapper would pack the framework's keyword arguments once more."""
    if name not in notifier._failed_hooks:
        notifier._failed_hooks.add(name)
        log.exception("afs-callbacks: %s.%s failed; training continues", type(notifier).__name__, name)


def agree_across_ranks(flags: tuple[bool, ...]) -> tuple[bool, ...]:
    """Each flag true on any rank of an initialised ``torch.distributed`` group (else
    ``flags`` unchanged). A collective: every rank must call it at the same step."""
    try:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return flags
        on_gpu = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        values = torch.tensor([int(flag) for flag in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(value) for value in values.tolist())
    except Exception:
        log.warning("afs-callbacks: the processes could not agree on stopping", exc_info=True)
        return flags


class _SweepVoice:
    """:mod:`afs_callbacks.sweeps` speaking for a sweep whose trial a run turns out to be
    (imported then: a run outside a sweep does not pay for it)."""

    def trial_started(self, trial: Trial, sink: EventSink) -> None:
        from afs_callbacks import sweeps

        sweeps.trial_started(trial, sink)

    def trial_ended(self, trial: Trial, sink: EventSink) -> None:
        from afs_callbacks import sweeps

        sweeps.trial_ended(trial, sink)


_SWEEP_VOICE = _SweepVoice()


def broadcast_run_id(run_id: str) -> str:
    """Rank zero's run id on every rank of an initialised ``torch.distributed`` group
    (else ``run_id`` unchanged). A collective: every rank must call it at the same point."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [run_id]
            dist.broadcast_object_list(box, src=0)
            return str(box[0])
    except Exception:
        log.warning("afs-callbacks: could not share the run id between processes", exc_info=True)
    return run_id


class NotifierBase:
    """The arguments and plumbing every adapter shares (see the module docstring).

    Args:
        name_or_manager: the one positional argument: the model name (a ``str``, as
            ``model_name``) or a manager (as ``manager``); all others are keywords.
        model_name: shown in every message (default: what the framework knows: the
            module's or model's class or name).
        manager: where notifications go (default: ``NotificationManager.shared()``, the
            process's manager for its environment and ``.env``, built on first use).
        run_id: identifies the run (default: generated on the main process, shared with
            the other processes and kept across resumes).
        monitor: metric whose improvement/plateau is reported (default: ``val_loss``,
            ``eval_loss``, then ``loss``, whichever is logged; HF: ``metric_for_best_model``).
        mode: ``"min"`` or ``"max"`` for ``monitor`` (default ``"min"``; HF: from
            ``greater_is_better`` when monitoring ``metric_for_best_model``).
        min_delta: smallest change of ``monitor`` that counts as an improvement.
        patience: evaluations without improvement before a "not improving" warning.
        epoch_every: report every N epochs (default: about ten reports per run).
        batch_every: report every N optimizer steps (0, the default: never).
        nan_check_every: optimizer steps per loss window: one NaN/Inf read of tensor
            losses and one loss-curve point each (default: the framework's logging
            cadence, else 50).
        stop_on_nan: stop training at the first NaN/Inf loss, like ``TerminateOnNaN``.
        stall_timeout: seconds without a finished step before "training stalled"
            (None: off).
        monitors: watch GPU/host memory, temperature and cost during the run.
        chart: attach a loss-curve PNG to the completion message (needs ``matplotlib``).
        flush_timeout: seconds to wait for delivery when the run fails or is interrupted
            (the process is likely to exit); a completed run never waits.
        sweep: the sweep this run is a trial of (default: ``AFS_SWEEP``, else what the tool
            tells: Ray Tune, Optuna, HF ``hyperparameter_search``, W&B, SLURM arrays).
        crash_hook: where the framework has no exception hook (HF, Keras), install the
            ``sys.excepthook`` fallback and the SIGTERM handler while training runs
            (each only where nobody installed one).
        tracker: a ready :class:`~afs_callbacks.tracking.RunTracker` to report through
            (the other arguments except ``manager``, ``crash_hook`` and ``rules`` are
            then ignored).
        rules: conditions on the run and what to do when one holds
            (``"val_loss < 0.3"``, ``"loss > 3 * best -> stop"``: docs/rules.md), a list
            or one ``;``-separated string; ``AFS_RULES`` adds its own. Read on global rank
            zero from what the run reports anyway: nothing per step.

    Raises:
        ValueError: an argument out of range; the message names the class and argument.
        TypeError: an unknown keyword (with the likely intended one), a positional
            argument too many, or one that is neither a model name nor a manager.
        afs_callbacks.rules.RuleError: a rule cannot be read (a ``ValueError`` naming the
            rule and its column).
    """

    def __new__(cls: type[_N], *args: Any, **kwargs: Any) -> _N:
        # Before __init__ binds the call: an unknown keyword or a positional too many is
        # refused here, naming this class (see check_call).
        if args or kwargs:
            check_call(cls, args, kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        name_or_manager: str | EventSink | None = None,
        /,
        *,
        model_name: str | None = None,
        manager: EventSink | None = None,
        run_id: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
        min_delta: float = 0.0,
        patience: int = 3,
        epoch_every: int | None = None,
        batch_every: int = 0,
        nan_check_every: int | None = None,
        stop_on_nan: bool = False,
        stall_timeout: float | None = 1800.0,
        monitors: bool = True,
        chart: bool = True,
        flush_timeout: float = 5.0,
        sweep: str | None = None,
        crash_hook: bool = True,
        tracker: RunTracker | None = None,
        rules: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()  # the framework's Callback, next in an adapter's MRO
        owner = type(self).__name__
        try:
            model_name, manager = _positional(owner, name_or_manager, model_name, manager)
            check_settings(
                owner,
                mode=mode,
                min_delta=min_delta,
                patience=patience,
                epoch_every=epoch_every,
                batch_every=batch_every,
                nan_check_every=nan_check_every,
                stall_timeout=stall_timeout,
                flush_timeout=flush_timeout,
            )
        except (TypeError, ValueError) as error:
            refuse(error)
        self._config = TrackerConfig(
            model_name=model_name,
            run_id=run_id,
            monitor=monitor,
            mode=mode or "min",
            min_delta=min_delta,
            patience=patience,
            epoch_every=epoch_every,
            batch_every=batch_every,
            nan_check_every=nan_check_every or DEFAULT_NAN_CHECK_EVERY,
            stop_on_nan=stop_on_nan,
            stall_timeout=stall_timeout,
            monitors=monitors,
            chart=chart,
            flush_timeout=flush_timeout,
            sweep=sweep,
        )
        self._given = {
            "model_name": model_name is not None,
            "monitor": monitor is not None,
            "mode": mode is not None,
            "nan_check_every": nan_check_every is not None,
        }
        from afs_callbacks.rules import Rules  # the rules' layer, above the tracker's

        self._rules = Rules.from_sources(rules, owner=type(self).__name__)
        self._manager = manager
        self._tracker = tracker
        self._own_tracker = tracker is None
        self._manager_dropped = False
        self._run_id_shared = False
        self.crash_hook = crash_hook
        self._restore_sigterm: Callable[[], None] | None = None
        self._failed_hooks: set[str] = set()
        self._training = False  # inside train()/fit() (HF, Keras)
        self._control_on = False  # settled by _attach_control at the start
        self._agree = False  # DDP ranks agree every _agree_every steps (NaN stop, commands)
        self._agree_every = DEFAULT_NAN_CHECK_EVERY
        self._reset_run()

    def _reset_run(self) -> None:
        """Set the adapter's per-run state (called at construction; adapters extend it
        and call it again when a run starts)."""

    # The tracker ----------------------------------------------------------------------

    @property
    def tracker(self) -> RunTracker:
        """The run tracker this callback reports through (built on first use)."""
        if self._tracker is None:
            self._tracker = RunTracker(manager=self._manager, config=self._config)
            self._tracker.use_sweep_voice(_SWEEP_VOICE)
        return self._tracker

    def _new_run(self) -> None:
        """The next run gets a fresh tracker (an own one only: a given tracker is the
        caller's run). Called when the framework starts again after a run ended."""
        if self._own_tracker and self._tracker is not None:
            self._tracker.close()
            self._tracker, self._run_id_shared = None, False

    def _tracker_ended(self) -> bool:
        """Whether the current run has been reported ended."""
        return self._tracker is not None and self._tracker.finished

    def _resolve(
        self,
        *,
        model_name: str | None = None,
        monitor: str | None = None,
        mode: str | None = None,
        nan_check_every: int | None = None,
    ) -> None:
        """Settle what the framework decides, where the user did not decide it."""
        facts: dict[str, Any] = {
            "model_name": model_name,
            "monitor": monitor,
            "mode": mode,
            "nan_check_every": nan_check_every,
        }
        tracker = self.tracker
        if not self._own_tracker:  # a given tracker: only what its config leaves open
            facts = {"model_name": model_name if tracker.config.model_name is None else None}
        else:
            facts = {name: value for name, value in facts.items() if not self._given[name]}
        if any(value is not None for value in facts.values()):
            tracker.resolve(**facts)

    def _bind(self, *, rank: int, world_size: int, is_global_zero: bool | None = None) -> None:
        """This process's place in the run."""
        self.tracker.bind(rank=rank, world_size=world_size, is_global_zero=is_global_zero)

    def _share_run_id(self, broadcast: Callable[[str], str]) -> None:
        """Give every rank global zero's run id (once per run): ranks that share it make
        one message of a failure several of them report. ``broadcast`` must be a
        collective every rank calls at the same point."""
        if self._run_id_shared:
            return
        self._run_id_shared = True
        tracker = self.tracker
        tracker.resolve(run_id=str(broadcast(tracker.run_id)))

    def _stop_asked(self, stop: bool) -> bool:
        """Whether the framework should stop now for a NaN (``stop_on_nan``); ``stop`` is
        the step hook's answer, which also says an ask from outside waits."""
        return stop and self.tracker.stop_requested

    # Commands from outside (afs_callbacks.control) ------------------------------------

    def _attach_control(self, world_size: int) -> None:
        """After ``tracker.start``: rank zero's run takes commands (stop, checkpoint) when
        ``AFS_CONTROL`` allows it, and under DDP every rank learns whether the ranks must
        agree at a step (a NaN stop or a command: each rank reads the same environment)."""
        tracker = self.tracker
        settings = getattr(tracker.manager, "settings", None)
        self._control_on = bool(getattr(settings, "control", ()))
        # Rules that stop or checkpoint act through rank zero's asks, like a command.
        acts = self._control_on or self._rules.acts
        self._agree = world_size > 1 and (tracker.config.stop_on_nan or acts)
        self._agree_every = max(1, tracker.config.nan_check_every)
        if self._control_on and tracker.is_global_zero:
            from afs_callbacks.control.run import attach  # the control layer, above the tracker

            attach(tracker)
        if self._rules and tracker.is_global_zero:
            self._rules.watch(tracker)  # fresh per run: every rule starts armed

    def _agreed_asks(self, agree: Callable[[tuple[bool, ...]], tuple[bool, ...]]) -> tuple[bool, bool, bool]:
        """(stop for a NaN, stop asked, checkpoint asked) as every rank agrees: rank zero
        holds the asks, the others learn them through ``agree`` (a collective taking the
        maximum of each flag; every rank calls it at the same step)."""
        tracker = self.tracker
        stop, checkpoint = tracker.asks_waiting() if tracker.is_global_zero else (False, False)
        flags = agree((tracker.stop_requested, stop, checkpoint))
        return bool(flags[0]), bool(flags[1]), bool(flags[2])

    def _in_training(self) -> bool:
        """Inside ``train()``/``fit()`` (HF, Keras): begun, and neither ended nor crashed
        (a crash skips the framework's end hook but ends the run)."""
        return self._training and self._tracker is not None and not self._tracker.finished

    # Crashes where the framework has no exception hook (HF, Keras; RunNotifier's SIGTERM)

    def _caller_caught(self, error: BaseException) -> None:
        """``train()``/``fit()`` raised (its wrapper tells: see ``_caller.wrap_call``).

        The run is reported failed (or interrupted) now, with the exception's type, so a
        caller that catches it (a notebook, a retry loop) leaves no run open and no stall
        watchdog running; the next call is a new run. Inside ``afs_callbacks.watch()`` the
        block reports it instead (one message per crash).
        """
        tracker = self._tracker
        if tracker is None or not tracker.started or tracker.finished or _watch_block_open():
            return
        self._training = False
        self._remove_sigterm_handler()
        if isinstance(error, GeneratorExit) or (isinstance(error, SystemExit) and error.code in (None, 0)):
            tracker.close()  # a clean exit is no failure: stop the watchdog, report nothing
            return
        tracker.failed(error)

    def _install_crash_hooks(self) -> None:
        """The excepthook fallback and SIGTERM handler (frameworks without an exception hook)."""
        if not self.crash_hook:
            return
        from afs_callbacks.watch import install_excepthook, install_sigterm_handler

        install_excepthook()
        if self._restore_sigterm is None:
            self._restore_sigterm = install_sigterm_handler()

    def _remove_sigterm_handler(self) -> None:
        """Training is over: SIGTERM gets its default handling back."""
        restore, self._restore_sigterm = self._restore_sigterm, None
        if restore is not None:
            restore()

    # Pickling (ddp_spawn) -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get a pickled callback; a manager holds threads and a database
        # connection that cannot travel, so each worker builds its own from the environment.
        state = self.__dict__.copy()
        state["_manager_dropped"] = self._manager is not None or self._manager_dropped
        state["_manager"] = None
        state["_restore_sigterm"] = None
        state.pop("_trainer_ref", None)  # a weak reference (HF): found again after unpickling
        return state

    def _warn_if_manager_dropped(self) -> None:
        if self._manager_dropped and self.tracker.is_global_zero:
            self._manager_dropped = False
            log.warning(
                "afs-callbacks: the manager given to %s(manager=...) cannot be sent to spawned worker"
                " processes; each worker takes its channels from the environment",
                type(self).__name__,
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self._config.model_name!r}, monitor={self._config.monitor!r})"
        )


# Reading a call: the positional argument, unknown keywords, LightningCLI ------------------

#: Names people bring from other tools, and the argument they mean (offered only where the
#: class takes it). Close misspellings are found by difflib; these are not close.
KEYWORD_GUESSES: Mapping[str, str] = {
    "name": "model_name",
    "model": "model_name",
    "run_name": "model_name",
    "experiment": "model_name",
    "experiment_name": "model_name",
    "project": "model_name",
    "id": "run_id",
    "metric": "monitor",
    "monitor_metric": "monitor",
    "notifier": "manager",
    "notification_manager": "manager",
    "sink": "manager",
    "total_epochs": "epochs",
    "max_epochs": "epochs",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "max_steps": "total_steps",
    "num_steps": "total_steps",
    "n_steps": "total_steps",
    "steps": "total_steps",
    "terminate_on_nan": "stop_on_nan",
    "check_nan_every": "nan_check_every",
    "nan_every": "nan_check_every",
    "stall": "stall_timeout",
    "charts": "chart",
    "plot": "chart",
    "monitor_gpu": "monitors",
    "gpu_monitor": "monitors",
}
# What an adapter reads from its framework instead of taking it as an argument.
_FRAMEWORK_PLAN = frozenset({"epochs", "total_steps", "batch_size", *KEYWORD_GUESSES})


@functools.cache
def _call_shape(cls: type) -> tuple[frozenset[str], int] | None:
    """(keywords, positionals) that ``cls(...)`` accepts, read from the ``__init__`` code of
    each class up to :class:`NotifierBase` (a signature shown to LightningCLI hides some);
    None when a subclass outside this package takes ``**kwargs`` it may use itself."""
    names: set[str] = set()
    positional: int | None = None
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        code = getattr(init, "__code__", None)
        if code is None:
            return None
        count = code.co_argcount + code.co_kwonlyargcount
        names.update(code.co_varnames[code.co_posonlyargcount : count])
        takes_args = bool(code.co_flags & inspect.CO_VARARGS)
        if positional is None and not takes_args:
            positional = code.co_argcount - 1  # self
        if not code.co_flags & inspect.CO_VARKEYWORDS:
            break  # this __init__ binds every keyword it can take
        if not klass.__module__.startswith("afs_callbacks."):
            return None
    names.discard("self")
    return frozenset(names), positional if positional is not None else 1


def check_call(cls: type, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a call ``cls(*args, **kwargs)`` that ``__init__`` could not bind, with a
    sentence naming ``cls`` (see :func:`refuse`): an unknown keyword, with the likely
    intended one (``did you mean RunNotifier(epochs=...)?``), or a positional too many."""
    shape = _call_shape(cls)
    if shape is None:
        return
    accepted, positional = shape
    owner = cls.__name__
    if len(args) > positional:
        refuse(
            TypeError(
                f"{owner}() takes one positional argument, the model name (or a manager), but"
                f" {len(args)} were given; pass the others by keyword: {owner}(model_name=..., patience=...)"
            )
        )
    for name in kwargs:
        if name not in accepted:
            refuse(TypeError(unknown_argument(owner, name, accepted)))


def unknown_argument(owner: str, name: str, accepted: Iterable[str]) -> str:
    """``RunNotifier(total_epochs=...) is not an argument: did you mean RunNotifier(epochs=...)?``"""
    accepted = sorted(accepted)
    guess = KEYWORD_GUESSES.get(name.lower())
    if guess not in accepted:
        close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.75)
        guess = close[0] if close else None
    if guess is not None:
        return f"{owner}({name}=...) is not an argument: did you mean {owner}({guess}=...)?"
    if name in _FRAMEWORK_PLAN and "epochs" not in accepted:
        return (
            f"{owner}({name}=...) is not an argument: the adapter reads the run's plan (epochs,"
            " steps, batch size) from the framework"
        )
    return f"{owner}({name}=...) is not an argument; {owner} takes {', '.join(accepted)}"


def _positional(
    owner: str, given: Any, model_name: str | None, manager: EventSink | None
) -> tuple[str | None, EventSink | None]:
    """``(model_name, manager)`` once the positional argument is placed: a ``str`` is the
    model name, an object with ``emit`` a manager (the positional argument of old). A
    ``manager=`` that is no manager is refused here: at the run's start it would cost the
    whole run's notifications (``'str' object has no attribute 'emit'``)."""
    if manager is not None and not callable(getattr(manager, "emit", None)):
        hint = f"; the model name goes in {owner}(model_name=...)" if isinstance(manager, str) else ""
        raise TypeError(
            f"{owner}(manager={type(manager).__name__} object): a manager is a NotificationManager"
            f" (or any object with emit()){hint}"
        )
    if given is None:
        return model_name, manager
    if isinstance(given, str):
        if model_name is not None:
            raise TypeError(f"{owner}() got the model name twice: {given!r} and model_name={model_name!r}")
        return given, manager
    if callable(getattr(given, "emit", None)):
        if manager is not None:
            raise TypeError(f"{owner}() got two managers: one positionally and one as manager=")
        return model_name, cast(EventSink, given)
    raise TypeError(
        f"{owner}({type(given).__name__} object): the one positional argument is the model name (a str)"
        f" or a manager; pass the others by keyword, e.g. {owner}(model_name='resnet', manager=manager)"
    )


def refuse(error: Exception) -> NoReturn:
    """Raise ``error``, a bad argument to an adapter; under LightningCLI, print it as one
    line and exit 2 instead.

    jsonargparse (LightningCLI's parser) catches what a callback's constructor raises and
    reports it inside a list of every ``Union`` member it tried, a traceback in which the
    one useful sentence is hard to find. Its own answer to a bad argument is ``error: ...``
    on stderr and exit code 2, which is what a user of that command line expects; so a
    construction by jsonargparse (found up the stack, only on this error path) ends the
    same way, unless its parser raises rather than exits (``exit_on_error=False``) or
    ``JSONARGPARSE_DEBUG`` asks for tracebacks.
    """
    if _jsonargparse_exits():
        sys.stderr.write(f"error: {error}\n")
        sys.stderr.flush()
        raise SystemExit(2) from error
    raise error


def _jsonargparse_exits() -> bool:
    """Whether a jsonargparse parser that exits on errors is building this object."""
    if "jsonargparse" not in sys.modules or os.environ.get("JSONARGPARSE_DEBUG", "").lower() in (
        "1",
        "true",
        "yes",
    ):
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("jsonargparse"):
            parser = frame.f_locals.get("self")
            if isinstance(parser, argparse.ArgumentParser):
                return bool(getattr(parser, "exit_on_error", True))
        frame = frame.f_back  # type: ignore[assignment]
    return False


def config_signature() -> inspect.Signature:
    """:class:`NotifierBase`'s arguments as a configuration file gives them (for
    LightningCLI, which builds its options and the ``config.yaml`` it saves from a
    signature): without the positional argument, ``manager`` and ``tracker``, which are
    Python objects no YAML file can hold."""
    signature = inspect.signature(NotifierBase.__init__, eval_str=True)
    hidden = {"name_or_manager", "manager", "tracker"}
    return signature.replace(parameters=[p for p in signature.parameters.values() if p.name not in hidden])


def _watch_block_open() -> bool:
    """Whether an ``afs_callbacks.watch()`` block is open: it reports what escapes it on
    the running tracker, so a wrapper leaves the report to it (one report per crash)."""
    module = sys.modules.get("afs_callbacks.watch")
    return bool(getattr(module, "_open_blocks", 0)) if module is not None else False


# Why a run ended: the words every adapter's ``end_reason`` uses, owned by the tracker
# (afs_callbacks/tracking/ending.py, which also says which outcome each one means).
#
# Each adapter reads its framework at the end of a run, duck-typed (no framework import),
# and returns None when it cannot tell; the tracker then infers the reason from the run's
# plan, or from its own NaN stop (``stop_on_nan``), which the adapters leave to it.

__all__ = [
    "DEFAULT_NAN_CHECK_EVERY",
    "FAST_DEV_RUN",
    "MAX_EPOCHS",
    "MAX_STEPS",
    "MAX_TIME",
    "SHOULD_STOP",
    "TERMINATE_ON_NAN",
    "NotifierBase",
    "agree_across_ranks",
    "broadcast_run_id",
    "check_call",
    "config_signature",
    "early_stopping",
    "early_stopping_not_finite",
    "hook",
    "hook_failed",
    "named",
    "refuse",
    "unknown_argument",
]
