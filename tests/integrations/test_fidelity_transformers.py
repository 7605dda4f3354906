"""Hugging Face Trainer runs whose messages a researcher can trust: right numbers under
gradient accumulation, the reason a run ended, a crash the caller catches closed at once,
evaluation and prediction named right.

Each test is a real tiny training on CPU (a linear regression, nothing downloaded); what
reached the channel goes through the real manager, outbox and sender, and what did *not*
reach it is checked too.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from afs_callbacks import EventType, watch  # noqa: E402
from afs_callbacks.integrations.transformers import AFSNotify  # noqa: E402
from tests.integrations.conftest import (  # noqa: E402
    assert_ended_as,
    history,
    in_order,
    kinds,
    make_manager,
    of_type,
    only,
    settle,
)

BATCH = 4
POINTS = 32  # 8 batches an epoch


class Regressor(nn.Module):
    """y = 3x + 1; forward returns ``(loss, prediction)`` as the Trainer expects.

    Args:
        loss_value: every training loss is exactly this (gradients of zero).
        eval_rising: the evaluation loss is the number of training forwards so far
            (it never improves after the first evaluation).
        nan_from: from this training forward on, the loss is NaN.
        raise_at: at this training forward, raise ``RuntimeError``.
    """

    def __init__(
        self,
        loss_value: float | None = None,
        eval_rising: bool = False,
        nan_from: int | None = None,
        raise_at: int | None = None,
    ) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.loss_value, self.eval_rising, self.nan_from, self.raise_at = (
            loss_value,
            eval_rising,
            nan_from,
            raise_at,
        )
        self.forwards = 0

    def forward(self, x: Any, labels: Any = None) -> Any:
        prediction = self.layer(x)
        loss = nn.functional.mse_loss(prediction, labels)
        if self.training:
            self.forwards += 1
            if self.raise_at == self.forwards:
                raise RuntimeError("the data went wrong")
            if self.loss_value is not None:
                loss = loss * 0 + self.loss_value
            if self.nan_from is not None and self.forwards >= self.nan_from:
                loss = loss * math.nan
        elif self.eval_rising:
            loss = loss * 0 + float(self.forwards)
        return (loss, prediction)


class Points(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self, count: int = POINTS) -> None:
        self.x = torch.linspace(0, 1, count).unsqueeze(1)
        self.y = 3 * self.x + 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": self.x[index], "labels": self.y[index]}


def make_trainer(
    root: Path, callbacks: list[Any], model: nn.Module | None = None, **overrides: Any
) -> Trainer:
    options: dict[str, Any] = dict(
        output_dir=str(root / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    options.update(overrides)
    return Trainer(
        model=model or Regressor(),
        args=TrainingArguments(**options),
        train_dataset=Points(),
        eval_dataset=Points(8),
        callbacks=callbacks,
    )


@pytest.fixture(autouse=True)
def restore_process_hooks() -> Iterator[None]:
    """A training that crashes never reaches on_train_end, which would have put back the
    SIGTERM handling the callback changed; keep other tests' process as it was."""
    handler, excepthook = signal.getsignal(signal.SIGTERM), sys.excepthook
    yield
    signal.signal(signal.SIGTERM, handler)
    sys.excepthook = excepthook


# 2. Right numbers ---------------------------------------------------------------------------


def test_gradient_accumulation_reports_the_real_loss_optimizer_steps_and_true_throughput(
    tmp_path: Path,
) -> None:
    manager, channel = make_manager(tmp_path, verbosity="verbose")
    callback = AFSNotify(manager, batch_every=1)
    with manager:
        trainer = make_trainer(tmp_path, [callback], Regressor(loss_value=2.0), gradient_accumulation_steps=4)
        trainer.train()
        settle(manager)
        pushed, kept = list(channel.events), history(manager)
    assert trainer.state.global_step == 4  # 8 batches an epoch, 4 per optimizer step, 2 epochs
    # Every step message the run made (the channel may get only the latest: progress
    # superseded by newer progress is kept in the history, not sent late).
    steps = of_type(kept, EventType.BATCH_PROCESSED)
    assert [event.context["step"] for event in steps] == [1, 2, 3, 4]
    assert all(event.context["metrics"]["loss"] == pytest.approx(2.0) for event in steps)
    completed = only(pushed, EventType.TRAINING_COMPLETED)
    assert completed.context["steps"] == 4
    rate = completed.context["steps_per_second"]
    assert completed.context["samples_per_second"] == pytest.approx(rate * BATCH * 4, rel=0.01)


# 3. Why the run ended -----------------------------------------------------------------------


class StopAfterFirstEpoch(TrainerCallback):  # type: ignore[misc]
    """The user's own reason to stop."""

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        control.should_training_stop = True
        return control


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("max_epochs", "max_epochs"),
        ("max_steps", "max_steps"),
        ("early_stopping", "early_stopping (eval_loss, patience 2, best 8)"),
        ("stop_on_nan", "stop_on_nan"),
        ("should_stop", "should_stop"),
    ],
)
def test_the_completion_says_why_the_run_ended(tmp_path: Path, case: str, expected: str) -> None:
    manager, channel = make_manager(tmp_path)
    callbacks: list[Any] = [AFSNotify(manager, stop_on_nan=case == "stop_on_nan")]
    model, options = Regressor(), {}
    if case == "max_steps":
        options = {"max_steps": 3}
    elif case == "early_stopping":
        model = Regressor(eval_rising=True)
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=2))
        options = dict(
            num_train_epochs=20,
            eval_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
        )
    elif case == "stop_on_nan":
        model, options = Regressor(nan_from=3), {"num_train_epochs": 20}
    elif case == "should_stop":
        callbacks.append(StopAfterFirstEpoch())
        options = {"num_train_epochs": 20}
    with manager:
        make_trainer(tmp_path, callbacks, model, **options).train()
        settle(manager)
    completed = only(channel.events, EventType.TRAINING_COMPLETED)
    assert completed.context["end_reason"] == expected
    assert_ended_as(completed, case, expected)


# 4. A crash the caller catches --------------------------------------------------------------


@pytest.mark.parametrize("watched", [False, True], ids=["bare", "watch"])
def test_a_caught_crash_closes_the_run_at_once_and_the_next_train_is_a_new_run(
    tmp_path: Path, watched: bool
) -> None:
    manager, channel = make_manager(tmp_path)
    callback = AFSNotify(manager, stall_timeout=1.0)
    trainer = make_trainer(tmp_path, [callback], Regressor(raise_at=3))
    with manager:
        with pytest.raises(RuntimeError, match="the data went wrong"):
            if watched:
                with watch():
                    trainer.train()
            else:
                trainer.train()  # a notebook cell: the caller sees the error, nothing else runs
        [failed] = channel.wait_for(lambda e: e.event_type is EventType.TRAINING_FAILED, timeout=5)
        assert failed.context["error_type"] == "RuntimeError"
        first_run = failed.run_id
        time.sleep(2.5)  # more than the stall timeout: a watchdog still running would fire
        trainer.train()  # the retry: forward 3 is behind the model now
        settle(manager)
        pushed = in_order(channel.events)
    assert not of_type(pushed, EventType.TRAINING_STALLED)
    assert kinds(pushed) == [
        EventType.TRAINING_STARTED,
        EventType.TRAINING_FAILED,
        EventType.TRAINING_STARTED,
        EventType.TRAINING_COMPLETED,
    ]
    second_run = pushed[2].run_id
    assert second_run != first_run and pushed[3].run_id == second_run
    assert {event.run_id for event in pushed[:2]} == {first_run}


# 5. Evaluation and prediction ---------------------------------------------------------------


@pytest.mark.parametrize("given", [None, "tiny-regressor"])
def test_evaluate_alone_names_the_model_and_predict_is_not_an_evaluation(
    tmp_path: Path, given: str | None
) -> None:
    manager, channel = make_manager(tmp_path, verbosity="verbose")
    with manager:
        trainer = make_trainer(tmp_path, [AFSNotify(manager, model_name=given)])
        trainer.predict(Points(8))
        trainer.evaluate()
        settle(manager)
        kept = history(manager)
    expected = given or "Regressor"
    completed = only(channel.events, EventType.EVALUATION_COMPLETED)
    assert completed.context["model"] == expected and completed.title.endswith(f": {expected}")
    assert len(of_type(kept, EventType.EVALUATION_STARTED)) == 1  # evaluate()'s, not predict()'s
    assert len(of_type(kept, EventType.EVALUATION_COMPLETED)) == 1
