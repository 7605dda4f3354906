"""The callbacks the benchmarks compare, for Lightning, the HF Trainer and Keras 3.

The framework's empty ``Callback`` and one overriding the same hooks as AFSNotify (each doing
nothing); ``AFSNotify``; the peers users would otherwise pick: a synchronous notifier that
calls ``requests.post`` in its hooks (what most community callbacks do) and knockknock's
decorator around the fit call; and the instruments: :class:`LoopTimer` (train start to train
end) and :class:`HookClock` (time inside a callback's hooks). Frameworks are imported only
when a callback is built.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

Wrap = Callable[[Callable[[], Any]], Callable[[], Any]]


class LoopTimer:
    """Marks the framework's train-start and train-end hooks (put first among callbacks)."""

    started = ended = float("nan")

    @staticmethod
    def make(
        framework: str,
        before_start: Callable[[], Any] | None = None,
        after_end: Callable[[], Any] | None = None,
    ) -> Any:
        """An instance of a subclass of the framework's callback base that sets both marks;
        ``before_start`` runs just before the start mark, ``after_end`` just after the end
        mark (so what they do stays out of the timed loop)."""

        def start(self: Any, *args: Any, **kwargs: Any) -> None:
            if before_start is not None:
                before_start()
            self.started = time.perf_counter()

        def end(self: Any, *args: Any, **kwargs: Any) -> None:
            self.ended = time.perf_counter()
            if after_end is not None:
                after_end()

        names = (
            ("on_train_start", "on_train_end")
            if framework == "lightning"
            else ("on_train_begin", "on_train_end")
        )
        members = {names[0]: start, names[1]: end, "started": float("nan"), "ended": float("nan")}
        return type("LoopTimer", (callback_base(framework),), members)()


def same_hooks_callback(framework: str, like: type, batch_end: Callable[..., None] | None = None) -> Any:
    """A callback overriding the same ``on_*`` hooks as the class ``like``, each doing nothing:
    what the framework's dispatch to such a callback costs. ``batch_end``: a method to use as
    its ``on_train_batch_end`` instead."""
    base = callback_base(framework)

    def nothing(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    hooks: dict[str, Any] = {
        name: nothing
        for name in dir(like)
        if name.startswith("on_")
        and callable(getattr(like, name))
        and getattr(like, name) is not getattr(base, name, None)
    }
    # The hooks ``like`` sets to None (Lightning skips them) are skipped here too.
    hooks.update({name: None for name in dir(like) if name.startswith("on_") and getattr(like, name) is None})
    if batch_end is not None:
        hooks["on_train_batch_end"] = batch_end
    return type("SameHooksCallback", (base,), hooks)()


def knockknock_wrap(url: str) -> tuple[Wrap, str]:
    """knockknock's ``slack_sender`` decorator posting to ``url`` (a post when the call starts
    and one when it ends), and where it came from. Where knockknock cannot be imported, the
    same two synchronous posts, re-implemented."""
    try:
        from knockknock.slack_sender import slack_sender

        return slack_sender(url, "bench"), "knockknock"
    except Exception:
        import requests

        def wrap(call: Callable[[], Any]) -> Callable[[], Any]:
            def wrapped() -> Any:
                requests.post(url, json={"text": "Your training has started"}, timeout=10)
                value = call()
                requests.post(url, json={"text": "Your training is complete"}, timeout=10)
                return value

            return wrapped

        return wrap, "knockknock re-implemented (not importable here)"


def empty_callback(framework: str) -> Any:
    """A subclass of the framework's callback base class that overrides nothing."""
    base = callback_base(framework)
    return type("EmptyCallback", (base,), {})()


def afs_class(framework: str) -> type:
    """The framework's ``AFSNotify`` class."""
    if framework == "lightning":
        from afs_callbacks.integrations.lightning import AFSNotify as LightningNotify

        return LightningNotify
    if framework == "transformers":
        from afs_callbacks.integrations.transformers import AFSNotify as TrainerNotify

        return TrainerNotify
    from afs_callbacks.integrations.keras import AFSNotify as KerasNotify

    return KerasNotify


def afs_callback(framework: str, manager: Any, **options: Any) -> Any:
    """``AFSNotify(manager=manager, **options)`` of the framework's integration."""
    if framework == "lightning":
        from afs_callbacks.integrations.lightning import AFSNotify as LightningNotify

        return LightningNotify(manager, **options)
    if framework == "transformers":
        from afs_callbacks.integrations.transformers import AFSNotify as TrainerNotify

        return TrainerNotify(manager, **options)
    from afs_callbacks.integrations.keras import AFSNotify as KerasNotify

    return KerasNotify(manager, **options)


def sync_callback(framework: str, url: str) -> Any:
    """The usual community notifier: ``requests.post`` in the hooks, at start, at every
    epoch end and at the end, waiting for each answer (timeout 10 s)."""
    import requests

    def post(text: str) -> None:
        # The polite ones at least do not crash the run when the service is down.
        with contextlib.suppress(requests.RequestException):
            requests.post(url, json={"text": text}, timeout=10)

    base = callback_base(framework)
    if framework == "lightning":
        hooks: dict[str, Any] = {
            "on_train_start": lambda self, trainer, module: post("training started"),
            "on_train_epoch_end": lambda self, trainer, module: post(
                f"epoch {trainer.current_epoch} done: {_floats(trainer.callback_metrics)}"
            ),
            "on_train_end": lambda self, trainer, module: post("training finished"),
        }
    elif framework == "transformers":
        hooks = {
            "on_train_begin": lambda self, args, state, control, **kw: post("training started"),
            "on_epoch_end": lambda self, args, state, control, **kw: post(f"epoch {state.epoch} done"),
            "on_train_end": lambda self, args, state, control, **kw: post("training finished"),
        }
    else:
        hooks = {
            "on_train_begin": lambda self, logs=None: post("training started"),
            "on_epoch_end": lambda self, epoch, logs=None: post(f"epoch {epoch} done: {logs}"),
            "on_train_end": lambda self, logs=None: post("training finished"),
        }
    return type("SyncPostCallback", (base,), hooks)()


class HookClock:
    """Times the hook methods a callback overrides (wrapping them on the instance): the
    ``on_*`` hooks, and Lightning's ``setup``/``teardown``.

    Only for an instrumented run: the wrapper itself costs a fraction of a microsecond.
    With ``record``, every call is also logged as ``(name, start, seconds)`` in ``log``.
    ``framework`` "" takes ``object`` as the base (nothing is inherited).
    """

    def __init__(self, callback: Any, framework: str, *, record: bool = False) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.log: list[tuple[str, float, float]] | None = [] if record else None
        base = callback_base(framework) if framework else object
        for name in dir(type(callback)):
            method = getattr(type(callback), name)
            hook = name.startswith("on_") or (framework == "lightning" and name in ("setup", "teardown"))
            if hook and callable(method) and method is not getattr(base, name, None):
                setattr(callback, name, self._wrap(name, getattr(callback, name)))

    def _wrap(self, name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
        self.seconds[name], self.calls[name] = 0.0, 0
        log, clock = self.log, time.perf_counter
        if log is not None:  # the lightest wrapper: one append; totals on demand (totals())

            def logged(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                try:
                    return hook(*args, **kwargs)
                finally:
                    log.append((name, start, clock() - start))

            return logged

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return hook(*args, **kwargs)
            finally:
                self.seconds[name] += clock() - start
                self.calls[name] += 1

        return timed

    def totals(self) -> None:
        """Fill ``seconds`` and ``calls`` from ``log`` (with ``record``)."""
        for name, _, seconds in self.log or ():
            self.seconds[name] += seconds
            self.calls[name] += 1

    def per_step_s(self, steps: int) -> float:
        """Seconds per step spent in the hooks called about once a step or more."""
        per_step = [name for name, calls in self.calls.items() if calls >= steps // 2]
        return sum(self.seconds[name] for name in per_step) / max(steps, 1)


def callback_base(framework: str) -> Any:
    """The framework's callback base class."""
    if framework == "lightning":
        from lightning.pytorch.callbacks import Callback

        return Callback
    if framework == "transformers":
        from transformers import TrainerCallback

        return TrainerCallback
    import keras

    return keras.callbacks.Callback


def _floats(metrics: Any) -> dict[str, float]:
    return {key: round(float(value), 4) for key, value in dict(metrics).items()}
