"""How an adapter is built: the model name may come first (a manager given first still works),
and a slip names the class the user wrote with the argument or method they probably meant.

Real tiny trainings on CPU for the positional model name, with the channels taken from the
environment as ``AFSNotify("my-model")`` takes them; the exact sentences for the rest.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationManager
from afs_callbacks.testing import LoopbackReceiver

#: Off what these tests do not look at, so each training takes a second or two.
QUIET: dict[str, Any] = {"monitors": False, "chart": False, "stall_timeout": None}

ADAPTERS = {
    "lightning": "afs_callbacks.integrations.lightning",
    "transformers": "afs_callbacks.integrations.transformers",
    "keras": "afs_callbacks.integrations.keras",
    "loop": "afs_callbacks.integrations.loop",
}
FRAMEWORK = {
    "lightning": "lightning.pytorch",
    "transformers": "transformers",
    "keras": "keras",
    "loop": "torch",
}


def adapter(name: str) -> Any:
    pytest.importorskip(FRAMEWORK[name])
    module = importlib.import_module(ADAPTERS[name])
    return module.RunNotifier if name == "loop" else module.AFSNotify


def received(
    receiver: LoopbackReceiver, *, until: set[EventType], timeout: float = 30.0
) -> list[NotificationEvent]:
    """What reached the webhook, once every type in ``until`` has, in whatever order."""
    deadline = time.monotonic() + timeout
    while True:
        events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
        if until <= {event.event_type for event in events}:
            return events
        assert time.monotonic() < deadline, [event.title for event in events]
        time.sleep(0.05)


def train(name: str, callback: Any, tmp_path: Path) -> None:
    """One tiny real run of the framework ``name`` with ``callback``."""
    if name == "lightning":
        from tests.integrations.test_lightning import TinyModel, make_trainer

        make_trainer(tmp_path, callback, max_epochs=1).fit(TinyModel())
    elif name == "transformers":
        from tests.integrations.test_fidelity_transformers import make_trainer

        make_trainer(tmp_path, [callback], num_train_epochs=1).train()
    elif name == "keras":
        from tests.integrations.test_fidelity_keras import fit, make_model

        fit(make_model(), [callback], epochs=1)
    else:
        with callback as run:
            for step in range(4):
                run.step(loss=1.0 / (step + 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ADAPTERS))
def test_the_model_name_may_be_given_first_in_a_real_training(
    name: str, receiver: LoopbackReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setenv("WEBHOOK_URL", receiver.url("/hook"))
    callback = adapter(name)("my-model", **QUIET)
    with caplog.at_level(logging.WARNING, logger="afs_callbacks"):
        train(name, callback, tmp_path)
        events = received(receiver, until={EventType.TRAINING_STARTED, EventType.TRAINING_COMPLETED})
    # By type, not position: which of a tiny run's start and end is sent first is the
    # sender's ordering, not what this test is about.
    started = [event for event in events if event.event_type is EventType.TRAINING_STARTED]
    assert [event.title for event in started] == ["Training started: my-model"]
    assert {event.model for event in events} == {"my-model"}
    assert not [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    callback.tracker.close()


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_a_manager_given_first_still_works(name: str, tmp_path: Path) -> None:
    manager = NotificationManager({})
    try:
        callback = adapter(name)(manager, model_name="named", **QUIET)
        assert callback.tracker.manager is manager
        assert callback.tracker.config.model_name == "named"
    finally:
        manager.close(timeout=0)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_a_wrong_first_argument_says_how_to_pass_it(name: str) -> None:
    cls = adapter(name)
    owner = cls.__name__
    with pytest.raises(TypeError) as wrong:
        cls(3)
    assert str(wrong.value) == (
        f"{owner}(int object): the one positional argument is the model name (a str) or a manager;"
        f" pass the others by keyword, e.g. {owner}(model_name='resnet', manager=manager)"
    )
    with pytest.raises(TypeError) as twice:
        cls("a", model_name="b")
    assert str(twice.value) == f"{owner}() got the model name twice: 'a' and model_name='b'"
    with pytest.raises(TypeError) as not_a_manager:
        cls(manager="resnet")
    assert str(not_a_manager.value) == (
        f"{owner}(manager=str object): a manager is a NotificationManager (or any object with emit());"
        f" the model name goes in {owner}(model_name=...)"
    )
    with pytest.raises(TypeError) as many:
        cls("a", "b")
    assert str(many.value) == (
        f"{owner}() takes one positional argument, the model name (or a manager), but 2 were given;"
        f" pass the others by keyword: {owner}(model_name=..., patience=...)"
    )


@pytest.mark.parametrize(
    ("name", "keyword", "line"),
    [
        (
            "loop",
            "total_epochs",
            "RunNotifier(total_epochs=...) is not an argument: did you mean RunNotifier(epochs=...)?",
        ),
        (
            "loop",
            "max_steps",
            "RunNotifier(max_steps=...) is not an argument: did you mean RunNotifier(total_steps=...)?",
        ),
        (
            "loop",
            "pateince",
            "RunNotifier(pateince=...) is not an argument: did you mean RunNotifier(patience=...)?",
        ),
        (
            "lightning",
            "pateince",
            "AFSNotify(pateince=...) is not an argument: did you mean AFSNotify(patience=...)?",
        ),
        (
            "lightning",
            "name",
            "AFSNotify(name=...) is not an argument: did you mean AFSNotify(model_name=...)?",
        ),
        (
            "transformers",
            "monitor_metric",
            "AFSNotify(monitor_metric=...) is not an argument: did you mean AFSNotify(monitor=...)?",
        ),
        (
            "keras",
            "terminate_on_nan",
            "AFSNotify(terminate_on_nan=...) is not an argument: did you mean AFSNotify(stop_on_nan=...)?",
        ),
        (
            "lightning",
            "max_epochs",
            "AFSNotify(max_epochs=...) is not an argument: the adapter reads the run's plan (epochs, steps,"
            " batch size) from the framework",
        ),
    ],
)
def test_an_unknown_keyword_names_the_class_and_the_likely_argument(
    name: str, keyword: str, line: str
) -> None:
    with pytest.raises(TypeError) as caught:
        adapter(name)(**{keyword: 3})
    assert str(caught.value) == line
    assert "NotifierBase" not in str(caught.value)


def test_an_unknown_keyword_without_a_close_name_lists_the_arguments() -> None:
    with pytest.raises(TypeError) as caught:
        adapter("keras")(colour="red")
    assert str(caught.value) == (
        "AFSNotify(colour=...) is not an argument; AFSNotify takes batch_every, chart, crash_hook,"
        " epoch_every, flush_timeout, manager, min_delta, mode, model_name, monitor, monitors,"
        " nan_check_every, patience, rules, run_id, stall_timeout, stop_on_nan, sweep, tracker"
    )


@pytest.mark.parametrize(
    ("guess", "line"),
    [
        ("epoch_end", "'RunNotifier' object has no attribute 'epoch_end': did you mean run.epoch()?"),
        ("on_step", "'RunNotifier' object has no attribute 'on_step': did you mean run.step()?"),
        ("evaluate", "'RunNotifier' object has no attribute 'evaluate': did you mean run.evaluation()?"),
        (
            "save_checkpoint",
            "'RunNotifier' object has no attribute 'save_checkpoint': did you mean run.checkpoint()?",
        ),
        (
            "finish",
            "'RunNotifier' object has no attribute 'finish': a run starts and ends with its block (with"
            " RunNotifier(...) as run: ...); leaving it completes the run, an exception escaping it fails it",
        ),
    ],
)
def test_a_guessed_method_says_which_one_is_meant(guess: str, line: str) -> None:
    run = adapter("loop")("m", **QUIET)
    with pytest.raises(AttributeError) as caught:
        getattr(run, guess)
    assert str(caught.value) == line


def test_a_guessed_name_is_not_offered_by_completion() -> None:
    run = adapter("loop")("m", **QUIET)
    assert "epoch_end" not in dir(run) and "finish" not in dir(run)
    assert "epoch" in dir(run) and not hasattr(run, "epoch_end")


def test_a_plain_typo_gets_pythons_own_suggestion(tmp_path: Path) -> None:
    """What a user's script prints for ``run.shuold_stop``: Python's suggestion, which the
    class keeps (the guesses are class attributes, not a ``__getattr__``)."""
    pytest.importorskip("torch")
    script = (
        "from afs_callbacks.integrations.loop import RunNotifier\n"
        "run = RunNotifier('m', monitors=False, chart=False, stall_timeout=None)\n"
        "run.shuold_stop\n"
    )
    env = {**os.environ, "AFS_ENABLED": "false"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.stderr.splitlines()[-1] == (
        "AttributeError: 'RunNotifier' object has no attribute 'shuold_stop'. Did you mean: 'should_stop'?"
    )


def test_the_hint_is_not_on_the_step_path() -> None:
    """A class with ``__getattr__`` routes every attribute access of its instances through
    a slower hook (``run.step()`` paid about 0.2 µs for it): the guesses are descriptors,
    and the methods a loop calls every step are found on the class."""
    cls = adapter("loop")
    assert not any("__getattr__" in vars(klass) for klass in cls.__mro__ if klass is not object)
    for method in ("step", "epoch", "evaluation", "checkpoint", "stop", "should_stop", "tracker"):
        assert any(method in vars(klass) for klass in cls.__mro__), method
