"""AFSNotify for the Hugging Face Trainer: real trainings of tiny models on CPU (a linear
regression and a BERT built from a config, nothing downloaded), whose events travel
through the real outbox and a real webhook channel to a loopback HTTP receiver.

Crashes are reported through ``afs_callbacks.watch`` here; the excepthook fallback and
SIGTERM, which need a process of their own, are in
``integrations/scenario_transformers_*.py``.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from afs_callbacks import EventType, watch  # noqa: E402
from afs_callbacks.integrations.transformers import STATE_FILE, AFSNotify  # noqa: E402
from afs_callbacks.tracking import RunTracker  # noqa: E402
from tests.integrations.conftest import SECRET_TOKEN, delivered, of_type  # noqa: E402

BATCH = 8


class Regressor(nn.Module):
    """Learns y = 3x + 1; its forward returns ``(loss, prediction)`` as Trainer expects.

    Args:
        bad_steps: training steps (1-based) whose loss is multiplied by ``bad_value``.
        bad_from: from this training step on, every loss is multiplied by ``bad_value``.
        raise_at: at this training step, forward raises what ``error`` returns.
    """

    def __init__(
        self,
        bad_steps: tuple[int, ...] = (),
        bad_from: int | None = None,
        bad_value: float = math.nan,
        raise_at: int | None = None,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.bad_steps, self.bad_from, self.bad_value = bad_steps, bad_from, bad_value
        self.raise_at, self.error = raise_at, error
        self.steps = 0

    def forward(self, x: Any, labels: Any = None) -> Any:
        prediction = self.layer(x)
        loss = nn.functional.mse_loss(prediction, labels)
        if self.training:
            self.steps += 1  # one forward per step: no gradient accumulation here
            if self.raise_at == self.steps and self.error is not None:
                raise self.error()
            if self.steps in self.bad_steps or (self.bad_from is not None and self.steps >= self.bad_from):
                loss = loss * self.bad_value
        return (loss, prediction)


class Points(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self, count: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.rand(count, 1, generator=generator)
        self.y = 3 * self.x + 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": self.x[index], "labels": self.y[index]}


def make_trainer(root: Path, callback: Any, model: nn.Module | None = None, **overrides: Any) -> Trainer:
    options: dict[str, Any] = dict(
        output_dir=str(root / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=0.05,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    options.update(overrides)
    callbacks = callback if isinstance(callback, list) else [callback]
    return Trainer(
        model=model or Regressor(),
        args=TrainingArguments(**options),
        train_dataset=Points(),
        eval_dataset=Points(16, seed=1),
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


# A run, end to end -----------------------------------------------------------------------


def test_run_reports_started_epochs_checkpoints_and_completed_with_metrics(manager, receiver, tmp_path):
    trainer = make_trainer(
        tmp_path, AFSNotify(manager), num_train_epochs=3, eval_strategy="epoch", save_strategy="epoch"
    )
    trainer.train()

    events = delivered(manager, receiver)
    kinds = [event.event_type for event in events]
    assert kinds[0] is EventType.TRAINING_STARTED and kinds[-1] is EventType.TRAINING_COMPLETED
    started, completed = events[0], events[-1]
    assert started.model == "Regressor" and started.context["epochs"] == 3
    assert started.context["max_steps"] == 24 and started.context["batch_size"] == BATCH
    assert {event.run_id for event in events} == {started.run_id}

    epochs = of_type(events, EventType.EPOCH_COMPLETED)
    assert [event.context["epoch"] for event in epochs] == [1, 2, 3]  # 1-based, as the titles
    assert all({"loss", "eval_loss", "learning_rate"} == set(event.metrics) for event in epochs)
    saved = of_type(events, EventType.CHECKPOINT_SAVED)
    assert [Path(event.context["checkpoint"]).name for event in saved] == [
        "checkpoint-8",
        "checkpoint-16",
        "checkpoint-24",
    ]
    assert all(Path(event.context["checkpoint"], STATE_FILE).is_file() for event in saved)
    final_eval = [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]["eval_loss"]
    assert completed.metrics["eval_loss"] == pytest.approx(final_eval)
    assert completed.metrics["train_loss"] == pytest.approx(trainer.state.log_history[-1]["train_loss"])
    assert completed.context["steps"] == 24 and "eval_loss" in completed.context["best"]
    assert not of_type(events, EventType.NAN_DETECTED)


def test_a_tiny_bert_classifier_built_from_a_config(manager, receiver, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 99, (32, 12), generator=generator)
    rows = [{"input_ids": row, "labels": int(row[0] % 2)} for row in ids]
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=TrainingArguments(
            output_dir=str(tmp_path / "bert"),
            num_train_epochs=2,
            per_device_train_batch_size=8,
            logging_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=rows,
        eval_dataset=rows[:8],
        callbacks=[AFSNotify(manager)],
    )
    trainer.train()

    events = delivered(manager, receiver)
    assert events[0].event_type is EventType.TRAINING_STARTED
    assert events[-1].event_type is EventType.TRAINING_COMPLETED
    assert {event.model for event in events} == {"BertForSequenceClassification"}
    # Step-based evaluations are progress, reported at the epoch cadence, with the
    # monitored eval_loss.
    evaluations = of_type(events, EventType.VALIDATION_COMPLETED)
    assert evaluations and all("eval_loss" in event.metrics for event in evaluations)
    assert events[-1].context["steps"] == 8


# NaN ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("nan_filter", [True, False], ids=["hf-nan-filter", "no-filter"])
def test_nan_is_reported_once_at_or_shortly_after_its_step(manager, receiver, tmp_path, nan_filter):
    model = Regressor(bad_steps=(7,))  # one NaN step: it poisons the weights for good
    make_trainer(
        tmp_path, AFSNotify(manager), model, logging_steps=4, logging_nan_inf_filter=nan_filter
    ).train()

    events = delivered(manager, receiver)
    [nan] = of_type(events, EventType.NAN_DETECTED)
    assert 7 <= nan.context["step"] <= 7 + 4
    assert events[-1].event_type is EventType.TRAINING_COMPLETED
    # What the epoch report shows is NaN, never the filter's stand-in 0.0.
    assert math.isnan(of_type(events, EventType.EPOCH_COMPLETED)[-1].metrics["loss"])


def test_fp16_skipped_steps_are_not_nan_but_a_window_of_only_nan_is(manager, receiver):
    """The GradScaler only exists on a GPU (accelerate uses none on CPU), so the Trainer's
    arguments and state are stand-ins here, fed to the real callback hooks: the hooks read
    only ``fp16``, ``device.type``, ``logging_nan_inf_filter``, ``global_step`` and the logs."""
    from types import SimpleNamespace

    callback = AFSNotify(manager)
    args = SimpleNamespace(fp16=True, device=SimpleNamespace(type="cuda"), logging_nan_inf_filter=True)
    state = SimpleNamespace(global_step=0)
    control = SimpleNamespace(should_log=True, should_training_stop=False)

    def logged_step(loss: float, grad_norm: float) -> None:
        state.global_step += 1
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": loss, "grad_norm": grad_norm})

    logged_step(2.5, math.inf)  # overflow: the scaler skipped the step and lowers its scale
    logged_step(2.4, math.nan)
    logged_step(2.3, 1.7)
    assert callback.tracker.manager.flush(5).delivered == 0 and not receiver.requests
    logged_step(0.0, math.inf)  # every step of the window NaN: the filter's 0.0, still no norm
    [nan] = of_type(delivered(manager, receiver), EventType.NAN_DETECTED)
    assert nan.context["step"] == 4


def test_on_cpu_fp16_has_no_loss_scaler_so_an_inf_norm_is_news(manager, receiver, tmp_path):
    trainer = make_trainer(
        tmp_path,
        AFSNotify(manager),
        Regressor(bad_steps=(4,), bad_value=math.inf),
        fp16=True,
        logging_steps=4,
    )
    trainer.train()

    assert trainer.accelerator.scaler is None
    [nan] = of_type(delivered(manager, receiver), EventType.NAN_DETECTED)
    assert nan.context["step"] == 4 and nan.context["metric"] == "grad_norm"


def test_stop_on_nan_stops_training(manager, receiver, tmp_path):
    trainer = make_trainer(
        tmp_path,
        AFSNotify(manager, stop_on_nan=True),
        Regressor(bad_from=3),
        num_train_epochs=5,
        logging_steps=2,
    )
    trainer.train()

    assert trainer.state.global_step <= 3 + 2
    assert len(of_type(delivered(manager, receiver), EventType.NAN_DETECTED)) == 1


# Crashes, through watch() ---------------------------------------------------------------------


def test_out_of_memory_is_reported_with_the_device(manager, receiver, tmp_path):
    def oom() -> BaseException:
        return torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8 GiB total)"
        )

    trainer = make_trainer(tmp_path, AFSNotify(manager), Regressor(raise_at=5, error=oom))
    with pytest.raises(torch.cuda.OutOfMemoryError), watch():
        trainer.train()

    events = delivered(manager, receiver)
    assert events[-1].event_type is EventType.OUT_OF_MEMORY
    assert events[-1].context["device"] == "GPU 0" and events[-1].context["step"] == 4
    assert events[-1].run_id == events[0].run_id
    assert not of_type(events, EventType.TRAINING_FAILED)


def test_keyboard_interrupt_is_an_interruption_not_a_failure(manager, receiver, tmp_path):
    trainer = make_trainer(tmp_path, AFSNotify(manager), Regressor(raise_at=3, error=KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt), watch():
        trainer.train()

    events = delivered(manager, receiver)
    assert events[-1].event_type is EventType.TRAINING_INTERRUPTED
    assert "KeyboardInterrupt" in events[-1].context["reason"]
    assert not of_type(events, EventType.TRAINING_FAILED)


def test_a_crash_is_reported_once_with_a_redacted_traceback_tail(manager, receiver, tmp_path):
    def crash() -> BaseException:  # a message that quotes the (secret) webhook URL
        return ValueError(f"bad batch; config was {receiver.url(f'/hooks/{SECRET_TOKEN}')}")

    trainer = make_trainer(tmp_path, AFSNotify(manager), Regressor(raise_at=2, error=crash))
    with pytest.raises(ValueError, match="bad batch"), watch(), watch():
        trainer.train()

    [failed] = of_type(delivered(manager, receiver), EventType.TRAINING_FAILED)
    assert "ValueError" in failed.message and "forward" in failed.message
    assert SECRET_TOKEN not in failed.to_json()

    trainer.evaluate()  # after the crash, an evaluation is a standalone one again
    assert of_type(delivered(manager, receiver), EventType.EVALUATION_COMPLETED)


def test_auto_find_batch_size_restarts_the_loop_without_a_second_announcement(manager, receiver, tmp_path):
    def oom() -> BaseException:
        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    class BigBatchesFail(Regressor):
        def forward(self, x: Any, labels: Any = None) -> Any:
            if self.training and x.shape[0] > 4:
                raise oom()
            return super().forward(x, labels)

    trainer = make_trainer(
        tmp_path, AFSNotify(manager), BigBatchesFail(), auto_find_batch_size=True, num_train_epochs=1
    )
    trainer.train()

    kinds = [event.event_type for event in delivered(manager, receiver)]
    assert kinds.count(EventType.TRAINING_STARTED) == 1 and kinds[-1] is EventType.TRAINING_COMPLETED
    assert EventType.OUT_OF_MEMORY not in kinds  # swallowed and recovered from by the Trainer
    assert trainer._train_batch_size == 4


# Resume, evaluation, the monitored metric ------------------------------------------------------


def test_resume_from_a_checkpoint_reports_resumed_and_keeps_the_run(manager, receiver, tmp_path):
    first = make_trainer(tmp_path, AFSNotify(manager), eval_strategy="epoch", save_strategy="epoch")
    first.train()
    before = delivered(manager, receiver)
    saved = json.loads((tmp_path / "out" / "checkpoint-16" / STATE_FILE).read_text())
    assert saved["run_id"] == before[0].run_id and saved["best"] is not None

    resumed = AFSNotify(manager)
    second = make_trainer(tmp_path, resumed, num_train_epochs=4, eval_strategy="epoch", save_strategy="epoch")
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-16"))

    seen = {event.id for event in before}
    after = [event for event in delivered(manager, receiver) if event.id not in seen]
    assert [e.event_type for e in after[:2]] == [EventType.CHECKPOINT_LOADING, EventType.TRAINING_RESUMED]
    assert after[0].context["checkpoint"] == str(tmp_path / "out" / "checkpoint-16")
    assert {event.run_id for event in after} == {before[0].run_id}
    assert [e.context["epoch"] for e in of_type(after, EventType.EPOCH_COMPLETED)] == [3, 4]
    assert resumed.tracker.state_dict()["best"] <= saved["best"]


def test_a_standalone_evaluation_is_reported(manager, receiver, tmp_path):
    trainer = make_trainer(tmp_path, AFSNotify(manager))
    metrics = trainer.evaluate()

    events = delivered(manager, receiver)
    assert [e.event_type for e in events] == [EventType.EVALUATION_STARTED, EventType.EVALUATION_COMPLETED]
    assert events[1].metrics == {"eval_loss": pytest.approx(metrics["eval_loss"])}


def test_the_trainers_best_model_metric_is_the_monitored_one(manager, receiver, tmp_path):
    def score(prediction: Any) -> dict[str, float]:
        predictions, labels = prediction
        return {"score": -float(((predictions - labels) ** 2).mean())}

    callback = AFSNotify(manager, epoch_every=1)
    trainer = make_trainer(
        tmp_path,
        callback,
        num_train_epochs=3,
        eval_strategy="epoch",
        metric_for_best_model="score",
        greater_is_better=True,
    )
    trainer.compute_metrics = score
    trainer.train()

    assert callback.tracker.config.monitor == "eval_score" and callback.tracker.config.mode == "max"
    improved = of_type(delivered(manager, receiver), EventType.LOSS_IMPROVED)
    assert improved and all("eval_score" in event.metrics for event in improved)


# The rules: shared logs untouched, no exception into the Trainer, no secret anywhere ---------


def test_the_shared_logs_dict_is_left_as_it_was(manager, tmp_path):
    class Recorder(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            self.seen.append(dict(logs))

    recorder = Recorder()
    trainer = make_trainer(tmp_path, [AFSNotify(manager), recorder], Regressor(bad_from=5))
    trainer.train()
    history = [{k: v for k, v in entry.items() if k != "step"} for entry in trainer.state.log_history]
    assert json.dumps(recorder.seen) == json.dumps(history)  # NaN/0.0 exactly as the Trainer logged them


def test_a_failing_tracker_never_breaks_training(manager, tmp_path, caplog):
    class BrokenTracker(RunTracker):
        def on_step(self, step: int, loss: Any = None, grad_norm: Any = None) -> bool:
            raise RuntimeError("tracker bug")

        def epoch_end(self, epoch: int, metrics: Any = None) -> None:
            raise RuntimeError("tracker bug")

    broken = BrokenTracker(manager)
    trainer = make_trainer(tmp_path, AFSNotify(tracker=broken), num_train_epochs=2)
    with caplog.at_level(logging.ERROR, logger="afs_callbacks"):
        trainer.train()

    assert trainer.state.global_step == 16  # training ran to the end
    failures = [r for r in caplog.records if "AFSNotify.on_step_end failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per step
    assert broken.finished  # the run still ended: its end was reported, not left to a watcher


def test_a_second_train_call_is_a_new_run(manager, receiver, tmp_path):
    callback = AFSNotify(manager)
    make_trainer(tmp_path, callback, num_train_epochs=1).train()
    make_trainer(tmp_path, callback, num_train_epochs=1).train()

    events = delivered(manager, receiver)
    started = of_type(events, EventType.TRAINING_STARTED)
    assert len(started) == 2 and len(of_type(events, EventType.TRAINING_COMPLETED)) == 2
    assert started[0].run_id != started[1].run_id


def test_bad_arguments_are_quoted_in_the_error():
    with pytest.raises(ValueError, match=r"AFSNotify\(mode='best'\)"):
        AFSNotify(mode="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"AFSNotify\(patience=-1\)"):
        AFSNotify(patience=-1)
    with pytest.raises(ValueError, match=r"AFSNotify\(nan_check_every=0\)"):
        AFSNotify(nan_check_every=0)


def test_no_secret_in_repr_state_file_history_or_log(manager, receiver, tmp_path, caplog):
    callback = AFSNotify(manager)
    with caplog.at_level(logging.DEBUG):
        make_trainer(tmp_path, callback, save_strategy="epoch").train()
    delivered(manager, receiver)

    state_files = [path.read_text() for path in (tmp_path / "out").glob(f"*/{STATE_FILE}")]
    history = repr(manager.outbox.history(limit=100))
    assert state_files
    for text in (repr(callback), *state_files, history, caplog.text):
        assert SECRET_TOKEN not in text


def test_channels_come_from_the_environment_without_arguments(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("WEBHOOK_URL", receiver.url("/from-env"))
    callback = AFSNotify()
    make_trainer(tmp_path, callback, num_train_epochs=1).train()

    receiver.wait_for(predicate=lambda r: r.json()["event_type"] == "training_completed")
    assert {request.path for request in receiver.requests} == {"/from-env"}
    callback.tracker.manager.close()
