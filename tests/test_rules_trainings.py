"""Rules on real tiny trainings: Lightning, the Hugging Face Trainer, Keras and a custom
loop, each through the real manager, outbox and a webhook channel to a loopback receiver.

What must hold: each rule fires at the reading that makes it true, once; a ``checkpoint``
rule writes a checkpoint where the framework keeps them; a ``stop`` rule ends the run
early with the outcome ``stopped_by_rule`` and an end reason naming the rule as written;
both are in the commands table as done (source ``rule``); the card lists the rules that
fired; and exactly what the default verbosity pushes reached the webhook: the start, one
``rule_fired`` per firing of a ``notify`` rule, and the end.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationManager, Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.control.run import EXIT_WAIT, _recorder
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.testing import LoopbackReceiver

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
torch = pytest.importorskip("torch")

MAX_EPOCHS = 20


@pytest.fixture(autouse=True)
def restore_process_hooks() -> Iterator[None]:
    handler, excepthook = signal.getsignal(signal.SIGTERM), sys.excepthook
    yield
    signal.signal(signal.SIGTERM, handler)
    sys.excepthook = excepthook


@pytest.fixture
def manager(receiver: LoopbackReceiver, tmp_path: Path) -> Iterator[NotificationManager]:
    """The default verbosity: what a person would be pushed."""
    channel = WebhookNotifier(receiver.url("/hook"))
    with NotificationManager({"webhook": channel}, settings=Settings(state_dir=tmp_path / "state")) as built:
        yield built


def received(manager: NotificationManager, receiver: LoopbackReceiver) -> list[NotificationEvent]:
    """What reached the webhook, once nothing is pending, in the order it happened (the
    sender may send a run's end first: delivery order is not what these tests check)."""
    report = manager.flush(15)
    assert report.pending == 0 and report.dead == 0, report
    events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
    return sorted(events, key=lambda event: event.timestamp)


def stored(tmp_path: Path, run_id: str) -> tuple[list[tuple[str, str, str]], Any]:
    """The run's commands (action, source, state), oldest first, and its last state."""
    assert _recorder.drain(EXIT_WAIT * 5)
    with Outbox(tmp_path / "state" / "outbox.sqlite3", read_only=True) as store:
        rows = sorted(store.commands(run_ids=[run_id], limit=None), key=lambda c: c.created)
        return [(c.action, c.source, c.state) for c in rows], store.run(run_id)


def check_stopped_by_rule(events: list[NotificationEvent], rule: str) -> NotificationEvent:
    [end] = [e for e in events if e.event_type is EventType.TRAINING_COMPLETED]
    assert end.context["outcome"] == "stopped_by_rule"
    assert end.context["end_reason"].startswith(f'stopped by rule "{rule}"'), end.context["end_reason"]
    assert end.context["stopped_by"] == {"actor": f'rule "{rule}"', "via": "rule"}
    return end


def test_lightning_rules_notify_checkpoint_and_stop(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from afs_callbacks.integrations.lightning import AFSNotify

    class Counting(pl.LightningModule):  # type: ignore[misc]
        """Logs ``val_epoch``: the epoch index, so each rule's reading is known."""

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_epoch", float(self.current_epoch))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x = torch.rand(32, 4)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # 4 steps an epoch
    folder = tmp_path / "ckpt"
    rules = ["val_epoch >= 0 -> notify info", "val_epoch >= 1 -> checkpoint", "val_epoch >= 2 -> stop"]
    callback = AFSNotify(manager, monitors=False, chart=False, rules=rules)
    trainer = pl.Trainer(
        max_epochs=MAX_EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, ModelCheckpoint(dirpath=folder)],
        default_root_dir=tmp_path,
    )
    trainer.fit(Counting(), loader, loader)

    events = received(manager, receiver)
    assert [e.event_type for e in events] == [
        EventType.TRAINING_STARTED,
        EventType.RULE_FIRED,
        EventType.TRAINING_COMPLETED,
    ]
    notice = events[1]
    # Epoch 1's metrics are reported when epoch 2 begins: after its 4 steps.
    assert (notice.context["rule"], notice.context["epoch"], notice.context["step"]) == (rules[0], 1, 4)
    assert notice.title.startswith(f"Rule “{rules[0]}”")
    check_stopped_by_rule(events, rules[2])
    # The checkpoint rule reads epoch 2's metrics at step 8 and saves at the next step; the
    # stop rule reads epoch 3's at step 12, and the run saves and stops at step 13.
    assert (folder / "afs-checkpoint-step=9.ckpt").is_file()
    assert (folder / "afs-stop-step=13.ckpt").is_file()
    assert trainer.global_step == 13 and trainer.current_epoch < MAX_EPOCHS - 1
    commands, state = stored(tmp_path, notice.context["run_id"])
    assert commands == [("checkpoint", "rule", "done"), ("stop", "rule", "done")]
    assert [entry["rule"] for entry in state.control["rules"]] == rules[::-1]  # the latest first


def test_transformers_stop_rule_saves_and_stops(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    from afs_callbacks.integrations.transformers import AFSNotify
    from tests.integrations.test_transformers import make_trainer

    class Slow(TrainerCallback):  # type: ignore[misc]
        """A few ms a step: the loss windows are read off the training thread meanwhile."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            time.sleep(0.01)

    rule = "loss < 1000 -> stop"
    callback = AFSNotify(manager, monitors=False, chart=False, rules=[rule])
    trainer = make_trainer(tmp_path, [callback, Slow()], max_steps=400, num_train_epochs=1, logging_steps=2)
    trainer.train()

    events = received(manager, receiver)
    assert [e.event_type for e in events] == [EventType.TRAINING_STARTED, EventType.TRAINING_COMPLETED]
    end = check_stopped_by_rule(events, rule)
    assert trainer.state.global_step < 400
    # A stop saves first: the Trainer's own checkpoint folder, at the step it stopped.
    assert (tmp_path / "out" / f"checkpoint-{trainer.state.global_step}").is_dir()
    commands, _ = stored(tmp_path, end.context["run_id"])
    assert commands == [("stop", "rule", "done")]


def test_keras_checkpoint_rule_saves_next_to_model_checkpoint(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    keras = pytest.importorskip("keras")
    import numpy as np

    from afs_callbacks.integrations.keras import AFSNotify

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).random((32, 1)).astype("float32")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    saver = keras.callbacks.ModelCheckpoint(str(folder / "epoch{epoch}.keras"))

    class Marker(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        """Adds ``marker`` (the epoch index) to the epoch's logs, before AFSNotify reads them."""

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs["marker"] = float(epoch)

    rules = ["marker >= 1 -> checkpoint, notify", "marker >= 3 -> stop"]
    model.fit(
        x,
        3 * x + 1,
        epochs=MAX_EPOCHS,
        batch_size=8,
        verbose=0,
        callbacks=[Marker(), AFSNotify(manager, monitors=False, chart=False, rules=rules), saver],
    )
    events = received(manager, receiver)
    assert [e.event_type for e in events] == [
        EventType.TRAINING_STARTED,
        EventType.RULE_FIRED,
        EventType.TRAINING_COMPLETED,
    ]
    assert events[1].context["epoch"] == 2 and "Saving a checkpoint." in events[1].message
    check_stopped_by_rule(events, rules[1])
    # Epoch 2 ends at step 8; step 9's end takes the ask, the next batch's start saves.
    saved = sorted(p.name for p in folder.glob("afs-*.keras"))
    assert saved[0] == "afs-checkpoint-step9.keras" and keras.models.load_model(folder / saved[0]) is not None
    commands, _ = stored(tmp_path, events[1].context["run_id"])
    assert commands == [("checkpoint", "rule", "done"), ("stop", "rule", "done")]


def test_a_custom_loop_diverging_is_checkpointed_and_stopped_by_its_rule(
    manager: NotificationManager, receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    from afs_callbacks.integrations.loop import RunNotifier

    rule = "loss > 3 * best -> notify error, checkpoint, stop"
    saved: list[Path] = []
    last = 0
    with RunNotifier(
        manager, model_name="loop", nan_check_every=10, monitors=False, chart=False, rules=[rule]
    ) as run:
        for step in range(1, 2001):
            time.sleep(0.002)  # the loss windows are read off this thread meanwhile
            loss = 1.0 - step * 0.005 if step <= 60 else 5.0  # best window ~0.73; diverges at 61
            stop = run.step(loss=torch.tensor(loss))
            if run.checkpoint_requested:
                path = tmp_path / f"ckpt-{step}.pt"
                torch.save({"step": step}, path)
                saved.append(path)
                run.checkpoint(path)
            last = step
            if stop:
                break

    events = received(manager, receiver)
    assert [e.event_type for e in events] == [
        EventType.TRAINING_STARTED,
        EventType.RULE_FIRED,
        EventType.TRAINING_COMPLETED,
    ]
    notice = events[1]
    # The first window of diverged losses is steps 61-70; its verdict lands a few steps on.
    assert notice.context["step"] >= 70 and notice.context["step"] < 200, notice.context
    assert "loss 5 > 3 * best" in notice.message
    assert len(saved) == 1 and saved[0].is_file() and last == int(saved[0].stem.split("-")[1])
    assert last < 2000
    check_stopped_by_rule(events, rule)
    commands, state = stored(tmp_path, notice.context["run_id"])
    assert commands == [("checkpoint", "rule", "done"), ("stop", "rule", "done")]
    assert state.control["rules"][0]["rule"] == rule
