"""Lightning runs whose messages a researcher can trust: a quiet default, right numbers,
the reason a run ended, the best checkpoint and smoke runs said as such.

Each test is a real tiny training on CPU; what reached the channel goes through the real
manager, outbox and sender (see ``conftest.make_manager``), and what did *not* reach it is
checked too. The SLURM requeue, which needs a process to signal, is in
``integrations/scenario_slurm_requeue.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from afs_callbacks import EventType  # noqa: E402
from afs_callbacks.integrations.lightning import AFSNotify  # noqa: E402
from tests.integrations.conftest import assert_ended_as, history, kinds, make_manager, of_type, only, settle  # noqa: E402

BATCH = 4


class Regressor(pl.LightningModule):
    """Learns y = 3x + 1 and logs ``val_loss``.

    Args:
        loss_offset: added to every training loss (a known value the reports must show).
        val_rising: log ``val_loss`` = epoch index instead (it never improves after epoch 0).
        nan_from: from this global step on, the training loss is NaN.
        step_sleep: seconds each training step takes.
    """

    def __init__(
        self,
        loss_offset: float = 0.0,
        val_rising: bool = False,
        nan_from: int | None = None,
        step_sleep: float = 0.0,
    ) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.loss_offset, self.val_rising, self.nan_from, self.step_sleep = (
            loss_offset,
            val_rising,
            nan_from,
            step_sleep,
        )

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.step_sleep:
            time.sleep(self.step_sleep)
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        if self.loss_offset:
            loss = loss * 0 + self.loss_offset  # exactly the offset, gradients of zero
        if self.nan_from is not None and self.global_step >= self.nan_from:
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        value = torch.tensor(float(self.current_epoch)) if self.val_rising else loss
        self.log("val_loss", value)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(count: int = 16) -> DataLoader[Any]:
    x = torch.linspace(0, 1, count).unsqueeze(1)
    return DataLoader(TensorDataset(x, 3 * x + 1), batch_size=BATCH)


def fit(root: Path, callbacks: list[Any], model: Regressor | None = None, **options: Any) -> Any:
    settings: dict[str, Any] = dict(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )
    settings.update(options)
    trainer = pl.Trainer(callbacks=callbacks, **settings)
    trainer.fit(model or Regressor(), loader(), loader(8))
    return trainer


# 1. A quiet default, the end first -----------------------------------------------------------


@pytest.mark.parametrize("paced", [False, True], ids=["webhook-like", "slack-paced"])
def test_a_clean_40_epoch_run_sends_at_most_five_messages_ending_with_the_summary(
    tmp_path: Path, paced: bool
) -> None:
    manager, channel = make_manager(tmp_path, paced=paced)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)
    with manager:
        fit(tmp_path, [AFSNotify(manager), checkpoints], max_epochs=40, enable_checkpointing=True)
        # Delivered while the process goes on: not held behind progress, not left to exit.
        [completed] = channel.wait_for(lambda e: e.event_type is EventType.TRAINING_COMPLETED, timeout=5)
        settle(manager)
        pushed = list(channel.events)
        kept = history(manager)
    assert len(pushed) <= 5
    assert kinds(pushed) == [EventType.TRAINING_STARTED, EventType.TRAINING_COMPLETED]
    # What was not pushed is in the history (and in the summary).
    assert len(of_type(kept, EventType.EPOCH_COMPLETED)) >= 4
    assert of_type(kept, EventType.CHECKPOINT_SAVED)
    best_path = checkpoints.best_model_path
    assert best_path and not best_path.endswith("last.ckpt")
    context = completed.context
    assert context["epochs_run"] == 40 and context["end_reason"] == "max_epochs"
    assert context["best_checkpoint"] == best_path  # save_last=True: the best one is named
    assert context["best"]["val_loss"] == pytest.approx(float(checkpoints.best_model_score))
    assert completed.message.startswith("Finished (max_epochs) after 40 of 40 epochs.")
    assert completed.context["outcome"] == "completed" and completed.title.startswith("✅ Training completed")
    assert f"Best checkpoint: {best_path}" in completed.message
    assert "Best val_loss" in completed.message


def test_verbose_progress_on_a_paced_channel_does_not_hold_back_the_completion(tmp_path: Path) -> None:
    manager, channel = make_manager(tmp_path, paced=True, verbosity="verbose")
    with manager:
        fit(tmp_path, [AFSNotify(manager, epoch_every=1)], max_epochs=30)
        started = time.monotonic()
        channel.wait_for(lambda e: e.event_type is EventType.TRAINING_COMPLETED, timeout=8)
        waited = time.monotonic() - started
        queued_progress = 30 - len(of_type(channel.events, EventType.EPOCH_COMPLETED))
    # 30 epoch messages at one a second would take 30 s; the completion went first.
    assert waited < 8 and queued_progress > 5


# 2. Right numbers ---------------------------------------------------------------------------


def test_accumulated_gradients_report_the_real_loss_optimizer_steps_and_true_throughput(
    tmp_path: Path,
) -> None:
    manager, channel = make_manager(tmp_path, verbosity="verbose")
    callback = AFSNotify(manager, batch_every=1, nan_check_every=1)
    with manager:
        trainer = fit(
            tmp_path, [callback], Regressor(loss_offset=2.0), max_epochs=2, accumulate_grad_batches=4
        )
        settle(manager)
        pushed, kept = list(channel.events), history(manager)
        points = manager.outbox.points(callback.tracker.run_id)
    # 4 batches an epoch, 4 accumulated per optimizer step: 1 step an epoch.
    assert trainer.global_step == 2
    # Every step message the run made (the channel may get only the latest: progress
    # superseded by newer progress is kept in the history, not sent late).
    steps = of_type(kept, EventType.BATCH_PROCESSED)
    assert [event.context["step"] for event in steps] == [1, 2]  # optimizer steps, no duplicates
    assert all(event.context["metrics"]["loss"] == pytest.approx(2.0) for event in steps)
    assert [value for _, value in points["loss"]] == pytest.approx([2.0, 2.0])  # the chart's curve
    completed = only(pushed, EventType.TRAINING_COMPLETED)
    assert completed.context["steps"] == 2
    rate = completed.context["steps_per_second"]
    assert completed.context["samples_per_second"] == pytest.approx(rate * BATCH * 4, rel=0.01)
    assert completed.context["duration"] == pytest.approx(2 / rate, rel=0.05)


def test_epoch_messages_number_epochs_from_one(tmp_path: Path) -> None:
    manager, _ = make_manager(tmp_path, verbosity="verbose")
    with manager:
        fit(tmp_path, [AFSNotify(manager, epoch_every=1)], max_epochs=1)
        settle(manager)
        # From the history: an epoch still queued when the run's end is stored (here at
        # once) is superseded rather than pushed late, at any verbosity.
        epoch = only(history(manager), EventType.EPOCH_COMPLETED)
    assert epoch.title.startswith("Epoch 1/1 completed") and epoch.context["epoch"] == 1


# 3. Why the run ended -----------------------------------------------------------------------


class StopAtEpoch(Callback):
    """The user's own reason to stop: ``trainer.should_stop`` after epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("max_epochs", "max_epochs"),
        ("max_steps", "max_steps"),
        ("max_time", "max_time"),
        ("early_stopping", "early_stopping (val_loss, patience 2, best 0)"),
        ("stop_on_nan", "stop_on_nan"),
        ("should_stop", "should_stop"),
    ],
)
def test_the_completion_says_why_the_run_ended(tmp_path: Path, case: str, expected: str) -> None:
    manager, channel = make_manager(tmp_path)
    options: dict[str, Any] = {"max_epochs": 3}
    model, callbacks = Regressor(), [AFSNotify(manager, stop_on_nan=case == "stop_on_nan")]
    if case == "max_steps":
        options = {"max_epochs": 10, "max_steps": 5}
    elif case == "max_time":
        options = {"max_epochs": 1000, "max_time": {"seconds": 1}}
        model = Regressor(step_sleep=0.02)
    elif case == "early_stopping":
        options = {"max_epochs": 50}
        model = Regressor(val_rising=True)
        callbacks.append(EarlyStopping(monitor="val_loss", patience=2))
    elif case == "stop_on_nan":
        options = {"max_epochs": 50}
        model = Regressor(nan_from=6)
    elif case == "should_stop":
        options = {"max_epochs": 50}
        callbacks.append(StopAtEpoch(1))
    with manager:
        fit(tmp_path, callbacks, model, **options)
        settle(manager)
    completed = only(channel.events, EventType.TRAINING_COMPLETED)
    assert completed.context["end_reason"] == expected
    assert_ended_as(completed, case, expected)


# 7. Smoke runs ------------------------------------------------------------------------------


def test_fast_dev_run_says_it_is_a_smoke_run(tmp_path: Path) -> None:
    manager, channel = make_manager(tmp_path)
    with manager:
        fit(tmp_path, [AFSNotify(manager)], fast_dev_run=True)
        settle(manager)
    started = only(channel.events, EventType.TRAINING_STARTED)
    completed = only(channel.events, EventType.TRAINING_COMPLETED)
    assert "smoke run" in started.title.lower() and started.context["smoke_run"] is True
    assert "smoke run" in completed.title.lower()
    assert completed.context["end_reason"] == "fast_dev_run"


# 8. SLURM context (the requeue itself: integrations/scenario_slurm_requeue.py) ------------------


def test_slurm_job_array_task_and_nodes_go_in_the_run_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    manager, channel = make_manager(tmp_path)
    with manager:
        callback = AFSNotify(manager)
        fit(tmp_path, [callback], max_epochs=1)
        settle(manager)
        state = manager.outbox.run(callback.tracker.run_id)
        history_of = history(manager)
    # An array task is a sweep's trial: its start is kept in the history, not pushed; the
    # one start pushed is the sweep's, said by its first trial.
    pushed = of_type(channel.events, EventType.TRAINING_STARTED)
    assert [event.title for event in pushed] == ["Sweep started: slurm-4240"]
    (started,) = [e for e in of_type(history_of, EventType.TRAINING_STARTED) if e.context.get("trial")]
    assert started.context["sweep"] == "slurm-4240" and started.context["trial"] == "2"
    expected = {"slurm_job_id": "4242", "slurm_array_task_id": "2", "slurm_nodelist": "gpu[01-02]"}
    assert {key: started.context.get(key) for key in expected} == expected
    assert state is not None and {key: state.extra.get(key) for key in expected} == expected
