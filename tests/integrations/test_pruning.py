"""A pruned trial is its own outcome: never "failed", no traceback, info level.

Real Optuna (``optuna``) and optuna-integration's Lightning pruning callback on a tiny
Lightning model on CPU; the events travel through the real outbox and a real webhook
channel to a loopback receiver, and what reached it is counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import EventType, NotificationManager
from afs_callbacks.outcome import Outcome
from afs_callbacks.testing import LoopbackReceiver
from afs_callbacks.tracking.classify import Failure, classify
from tests.integrations.conftest import delivered
from tests.tracking.support import RecordingSink, tracker

optuna = pytest.importorskip("optuna")


def test_trial_pruned_is_classified_as_a_pruning_even_when_wrapped() -> None:
    try:
        try:
            raise optuna.TrialPruned("Trial was pruned at epoch 1.")
        except optuna.TrialPruned as pruned:
            raise RuntimeError("the framework's wrapper") from pruned
    except RuntimeError as wrapped:
        assert classify(wrapped) is Failure.PRUNED
    assert classify(ValueError("boom")) is Failure.ERROR


def test_a_pruned_trial_ends_at_info_level_with_no_traceback() -> None:
    sink = RecordingSink()
    run = tracker(sink)
    run.start(epochs=3)
    for step in range(1, 11):
        run.on_step(step, loss=1.0 / step)
    run.epoch_end(0, {"val_loss": 0.9})
    try:
        raise optuna.TrialPruned("Trial was pruned at epoch 0.")
    except optuna.TrialPruned as error:
        run.failed(error)
    assert not sink.of(EventType.TRAINING_FAILED)
    (end,) = sink.of(EventType.TRAINING_COMPLETED)
    assert Outcome.parse(end.context["outcome"]) is Outcome.PRUNED
    assert end.level is Outcome.PRUNED.level
    assert end.title == "✂️ Trial pruned (Trial was pruned at epoch 0.): tiny"  # the pruner's words
    assert "Trial was pruned at epoch 0." in end.context["end_reason"]
    assert "Traceback" not in end.message and "File " not in end.message


@pytest.mark.slow
def test_optuna_lightning_sweep_with_the_pruning_callback_reports_pruned_not_failed(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    """4 trials on a grid; the pruner ends the two whose validation loss is over 0.5."""
    pytest.importorskip("optuna_integration")
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from optuna_integration import PyTorchLightningPruningCallback

    from afs_callbacks.integrations.lightning import AFSNotify

    class Tiny(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, x: float) -> None:
            super().__init__()
            self.x = x
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.net(batch[0]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.tensor(self.x))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(16, 4)), batch_size=8)

    def objective(trial: Any) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trainer = pl.Trainer(
            max_epochs=3,
            callbacks=[
                AFSNotify(manager=manager, model_name="tiny", monitors=False, chart=False),
                PyTorchLightningPruningCallback(trial, monitor="val_loss"),
            ],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        )
        trainer.fit(Tiny(x), data, data)
        return x

    study = optuna.create_study(
        sampler=optuna.samplers.GridSampler({"x": [0.1, 0.2, 0.8, 0.9]}),
        pruner=optuna.pruners.ThresholdPruner(upper=0.5),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=4)
    states = sorted(trial.state.name for trial in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]

    events = delivered(manager, receiver)
    ends = [e for e in events if e.event_type is EventType.TRAINING_COMPLETED]
    assert not [e for e in events if e.event_type is EventType.TRAINING_FAILED]
    pruned = [e for e in ends if e.context.get("outcome") == Outcome.PRUNED.value]
    assert len(pruned) == 2 and len(ends) == 4
    for end in pruned:
        assert end.level is Outcome.PRUNED.level and end.title.startswith("✂️ Trial pruned")
        assert "Trial was pruned at epoch 0." in end.context["end_reason"]
    bodies = [json.dumps(request.json()) for request in receiver.requests]
    assert not [body for body in bodies if "Traceback" in body or "evaluation_loop" in body]


@pytest.mark.slow
def test_hf_hyperparameter_search_reports_its_pruned_trials_as_pruned(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    """HF's Optuna backend ends a pruned trial with ``on_train_end`` (which read as a green
    "Training completed" before), then raises TrialPruned: pruned here, tagged with the
    trial's name and parameters."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from afs_callbacks.integrations.transformers import AFSNotify
    from tests.integrations.test_transformers import Points, Regressor

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model_init=lambda: Regressor(),
        args=args,
        train_dataset=Points(),
        eval_dataset=Points(16, seed=1),
        callbacks=[AFSNotify(manager, monitors=False, chart=False)],
    )
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {
            "learning_rate": trial.suggest_categorical("learning_rate", [1e-7, 2e-7, 0.1])
        },
        backend="optuna",
        direction="minimize",
        n_trials=3,
        sampler=optuna.samplers.GridSampler({"learning_rate": [1e-7, 2e-7, 0.1]}),
        pruner=optuna.pruners.ThresholdPruner(upper=3.0),
    )
    assert best.hyperparameters == {"learning_rate": 0.1}
    events = delivered(manager, receiver)
    ends = [e for e in events if e.event_type is EventType.TRAINING_COMPLETED]
    assert len(ends) == 3, [e.title for e in events]
    pruned = [e for e in ends if e.context.get("outcome") == Outcome.PRUNED.value]
    assert sorted(e.context["trial_params"]["learning_rate"] for e in pruned) == [1e-7, 2e-7]
    assert all(e.title.startswith("✂️ Trial pruned") for e in pruned)
    assert not [e for e in events if e.event_type is EventType.TRAINING_FAILED]
