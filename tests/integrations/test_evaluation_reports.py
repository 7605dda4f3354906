"""Evaluations as a researcher reads them, counted at a real loopback webhook (issue #22).

* A second evaluation with other numbers is a second message, not a "repeat" of the first:
  Keras ``evaluate()`` on the validation set then on the test set, Lightning ``validate()``
  then ``test()``, Hugging Face ``evaluate()`` on two datasets. Each arrives on its own,
  before the run's manager closes, under its own numbers.
* Evaluations inside training are progress: HF's ``eval_strategy="steps"`` (20 epochs, an
  evaluation every 4 steps), Lightning's validation during ``fit()`` and Keras's
  ``validation_data`` keep a clean run within the README's five pushes; the evaluations
  are in the history.

Real tiny trainings on CPU, the default verbosity and dedup window, one webhook channel on
a ``LoopbackReceiver``: what is counted is what the service received.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationManager, Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.testing import LoopbackReceiver
from tests.integrations.conftest import history, of_type

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

#: The README's promise for a clean run at the default verbosity.
MOST_PUSHES = 5


@pytest.fixture
def manager(receiver: LoopbackReceiver, tmp_path: Path) -> Iterator[NotificationManager]:
    """The default verbosity and repeat window; one webhook at the loopback receiver."""
    channel = WebhookNotifier(receiver.url("/hook"))
    with NotificationManager({"webhook": channel}, settings=Settings(state_dir=tmp_path / "state")) as built:
        yield built


def pushed(manager: NotificationManager, receiver: LoopbackReceiver) -> list[NotificationEvent]:
    """What the webhook received once nothing is pending, in the order it was sent."""
    report = manager.flush(30)
    assert report.pending == 0 and report.dead == 0, report
    return [NotificationEvent.from_dict(request.json()) for request in receiver.requests]


def evaluations(events: list[NotificationEvent]) -> list[NotificationEvent]:
    return of_type(events, EventType.EVALUATION_COMPLETED)


def assert_two_results(first: NotificationEvent, second: NotificationEvent, metric: str) -> None:
    """Two evaluations, each with its own numbers, neither a repeat digest."""
    assert first.metrics[metric] != second.metrics[metric]
    for event in (first, second):
        assert event.digest_count == 0 and "repeated" not in event.title


# Keras --------------------------------------------------------------------------------------


def test_keras_evaluate_on_validation_then_test_is_two_messages(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    np = pytest.importorskip("numpy")
    keras = pytest.importorskip("keras")
    from afs_callbacks.integrations.keras import AFSNotify

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)], name="tiny_keras")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.linspace(0, 1, 32, dtype="float32").reshape(-1, 1)
    x_test = np.linspace(2, 3, 16, dtype="float32").reshape(-1, 1)  # far outside: another loss
    callback = AFSNotify(manager)
    model.fit(x, 3 * x + 1, epochs=3, batch_size=8, verbose=0, validation_data=(x[:8], 3 * x[:8] + 1))
    model.evaluate(x[:8], 3 * x[:8] + 1, verbose=0, callbacks=[callback])
    model.evaluate(x_test, 3 * x_test + 1, verbose=0, callbacks=[callback])
    first, second = evaluations(pushed(manager, receiver))
    assert_two_results(first, second, "loss")


def test_keras_validation_data_inside_fit_is_progress(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    np = pytest.importorskip("numpy")
    keras = pytest.importorskip("keras")
    from afs_callbacks.integrations.keras import AFSNotify

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)], name="tiny_keras")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.linspace(0, 1, 32, dtype="float32").reshape(-1, 1)
    model.fit(
        x,
        3 * x + 1,
        epochs=20,
        batch_size=8,
        verbose=0,
        validation_data=(x[:8], 3 * x[:8] + 1),
        callbacks=[AFSNotify(manager)],
    )
    events = pushed(manager, receiver)
    assert len(events) <= MOST_PUSHES, [event.title for event in events]
    assert evaluations(events) == []
    # The validation numbers are in the run's report, not lost.
    epochs = of_type(history(manager), EventType.EPOCH_COMPLETED)
    assert epochs and all("val_loss" in event.metrics for event in epochs)


# Lightning ----------------------------------------------------------------------------------


def _lightning() -> tuple[Any, Any, Any]:
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Regressor(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("test_loss", nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    def loader(low: float, count: int) -> Any:
        x = torch.linspace(low, low + 1, count).unsqueeze(1)
        return DataLoader(TensorDataset(x, 3 * x + 1), batch_size=4)

    return pl, Regressor, loader


def _trainer(pl: Any, root: Path, callback: Any, epochs: int) -> Any:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )


def test_lightning_validate_then_test_is_two_messages(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    pl, regressor, loader = _lightning()
    from afs_callbacks.integrations.lightning import AFSNotify

    model = regressor()
    trainer = _trainer(pl, tmp_path, AFSNotify(manager), epochs=2)
    trainer.fit(model, loader(0.0, 16), loader(0.0, 8))
    trainer.validate(model, loader(0.0, 8), verbose=False)
    trainer.test(model, loader(2.0, 8), verbose=False)
    first, second = evaluations(pushed(manager, receiver))
    assert "val_loss" in first.metrics and "test_loss" in second.metrics
    assert "test_loss" in second.message and second.title == first.title
    assert first.digest_count == second.digest_count == 0


def test_lightning_validation_during_fit_is_progress(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    pl, regressor, loader = _lightning()
    from afs_callbacks.integrations.lightning import AFSNotify

    trainer = _trainer(pl, tmp_path, AFSNotify(manager), epochs=20)
    trainer.fit(regressor(), loader(0.0, 16), loader(0.0, 8))
    events = pushed(manager, receiver)
    assert len(events) <= MOST_PUSHES, [event.title for event in events]
    assert evaluations(events) == []
    epochs = of_type(history(manager), EventType.EPOCH_COMPLETED)
    assert epochs and all("val_loss" in event.metrics for event in epochs)


# Hugging Face -------------------------------------------------------------------------------


def _hf_trainer(root: Path, callback: Any, **overrides: Any) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from torch import nn

    class Regressor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def forward(self, x: Any, labels: Any = None) -> Any:
            prediction = self.layer(x)
            return (nn.functional.mse_loss(prediction, labels), prediction)

    class Points(torch.utils.data.Dataset):  # type: ignore[misc]
        def __init__(self, low: float, count: int) -> None:
            self.x = torch.linspace(low, low + 1, count).unsqueeze(1)
            self.y = 3 * self.x + 1

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return {"x": self.x[index], "labels": self.y[index]}

    options: dict[str, Any] = dict(
        output_dir=str(root / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    options.update(overrides)
    trainer = transformers.Trainer(
        model=Regressor(),
        args=transformers.TrainingArguments(**options),
        train_dataset=Points(0.0, 32),  # 8 steps an epoch
        eval_dataset=Points(0.0, 8),
        callbacks=[callback],
    )
    trainer.other_points = Points(2.0, 8)
    return trainer


def test_hf_evaluate_twice_with_other_numbers_is_two_messages(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    from afs_callbacks.integrations.transformers import AFSNotify

    trainer = _hf_trainer(tmp_path, AFSNotify(manager))
    trainer.train()
    trainer.evaluate()
    trainer.evaluate(trainer.other_points)
    first, second = evaluations(pushed(manager, receiver))
    assert_two_results(first, second, "eval_loss")


def test_hf_step_evaluations_inside_training_are_progress(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    """The issue's case: 20 epochs, an evaluation every 4 steps (40 evaluations), which
    pushed 23 messages (21 of them evaluation_completed)."""
    pytest.importorskip("transformers")
    from afs_callbacks.integrations.transformers import AFSNotify

    steps = {"eval_strategy": "steps", "eval_steps": 4, "logging_steps": 4}
    trainer = _hf_trainer(tmp_path, AFSNotify(manager), num_train_epochs=20, **steps)
    trainer.train()
    events = pushed(manager, receiver)
    assert len(events) <= MOST_PUSHES, [event.title for event in events]
    assert evaluations(events) == []
    kept = of_type(history(manager), EventType.VALIDATION_COMPLETED)
    assert kept and all("eval_loss" in event.metrics for event in kept)  # in the history
    # A standalone evaluation after training is still a result, and pushed.
    trainer.evaluate()
    [result] = evaluations(pushed(manager, receiver))
    assert "eval_loss" in result.metrics
