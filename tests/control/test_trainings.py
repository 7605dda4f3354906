"""Real tiny trainings in each framework, checkpointed then stopped from outside with the
real ``afs-notify checkpoint`` and ``afs-notify stop --yes`` (subprocesses, as a person's
shell), while the test's main thread trains. Each step sleeps a little so that the run
lasts while the commands travel: store → the run's sender looks (≤ 1 s) → the tracker's
flag → the adapter at its next step.

What must hold: the checkpoint command answers with a path that exists; the stop ends the
run early, after saving where the run has a checkpointer; the end says "stopped by
user@host via cli" with the outcome ``stopped_by_command``; both commands are in the
history as done.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import EventType, NotificationManager, Settings
from afs_callbacks.testing import CapturingHandler
from tests.control.support import Commander, commands

pytestmark = [
    pytest.mark.slow,
    # Keras' torch backend converts tensors with a NumPy 1 idiom; not this project's concern.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
torch = pytest.importorskip("torch")

STEP_SECONDS = 0.02
MAX_STEPS = 3000  # a minute at most; a stop ends it long before
COMMANDS = (["checkpoint", "{run}"], ["stop", "{run}", "--yes", "--timeout", "60"])


@pytest.fixture(autouse=True)
def restore_process_hooks() -> Iterator[None]:
    handler, excepthook = signal.getsignal(signal.SIGTERM), sys.excepthook
    yield
    signal.signal(signal.SIGTERM, handler)
    sys.excepthook = excepthook


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotificationManager]:
    settings = Settings(state_dir=tmp_path / "state", control=("cli",), verbosity="verbose")
    with NotificationManager({"capture": CapturingHandler()}, settings=settings) as built:
        yield built


def check_outcome(manager: NotificationManager, commander: Commander, state_dir: Path) -> tuple[str, str]:
    """The checkpoint's and the stop's CLI answers checked; returns the two saved paths."""
    checkpoint, stop = commander.finish()
    assert checkpoint.returncode == 0, checkpoint.stderr
    saved = re.search(r"checkpoint saved at step [\d,]+: (\S+)\)", checkpoint.stdout)
    assert saved, checkpoint.stdout
    assert os.path.exists(saved.group(1))
    assert stop.returncode == 0, stop.stderr
    assert re.search(r"stop of run \S+: done \(stopped by \S+@\S+ via cli; ended at step", stop.stdout), (
        stop.stdout
    )
    manager.flush(10)
    handler = manager.handlers["capture"]
    assert isinstance(handler, CapturingHandler)
    [end] = [e for e in handler.events if e.event_type is EventType.TRAINING_COMPLETED]
    assert end.context["outcome"] == "stopped_by_command"
    assert re.fullmatch(r"stopped by \S+@\S+ via cli", end.context["end_reason"])
    assert end.context["step"] < MAX_STEPS // 2
    states = [(c.action, c.state) for c in commands(state_dir, commander.run_id)]
    assert states == [("checkpoint", "done"), ("stop", "done")]
    stopped_with = next(c for c in commands(state_dir) if c.action == "stop")
    return saved.group(1), stopped_with.detail


def test_lightning_is_checkpointed_then_stopped_from_the_cli(
    manager: NotificationManager, tmp_path: Path
) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from afs_callbacks.integrations.lightning import AFSNotify

    class Slow(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            time.sleep(STEP_SECONDS)
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x = torch.rand(64, 4)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8
    )
    folder = tmp_path / "ckpt"
    trainer = pl.Trainer(
        max_steps=MAX_STEPS,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AFSNotify(manager, monitors=False, chart=False), ModelCheckpoint(dirpath=folder)],
        default_root_dir=tmp_path,
    )
    commander = Commander(tmp_path / "state", COMMANDS)
    commander.start()
    trainer.fit(Slow(), loader)
    path, _ = check_outcome(manager, commander, tmp_path / "state")
    assert Path(path).parent == folder and Path(path).name.startswith("afs-checkpoint-step=")
    assert list(folder.glob("afs-stop-step=*.ckpt")), "a stop saves where the run has a checkpointer"
    assert trainer.global_step < MAX_STEPS // 2


def test_transformers_is_checkpointed_then_stopped_from_the_cli(
    manager: NotificationManager, tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    from afs_callbacks.integrations.transformers import AFSNotify
    from tests.integrations.test_transformers import make_trainer

    class Slow(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            time.sleep(STEP_SECONDS)

    callback = AFSNotify(manager, monitors=False, chart=False)
    trainer = make_trainer(tmp_path, [callback, Slow()], max_steps=MAX_STEPS, num_train_epochs=1)
    commander = Commander(tmp_path / "state", COMMANDS)
    commander.start()
    trainer.train()
    path, _ = check_outcome(manager, commander, tmp_path / "state")
    assert re.fullmatch(r"checkpoint-\d+", Path(path).name) and Path(path).parent == tmp_path / "out"
    assert len(list((tmp_path / "out").glob("checkpoint-*"))) == 2  # the asked one and the stop's
    assert trainer.state.global_step < MAX_STEPS // 2


def test_keras_is_checkpointed_then_stopped_from_the_cli(
    manager: NotificationManager, tmp_path: Path
) -> None:
    keras = pytest.importorskip("keras")
    import numpy as np

    from afs_callbacks.integrations.keras import AFSNotify

    class Slow(keras.callbacks.Callback):  # type: ignore[misc]
        async_safe = True

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            time.sleep(STEP_SECONDS)

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).random((64, 1)).astype("float32")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    saver = keras.callbacks.ModelCheckpoint(str(folder / "epoch{epoch}.keras"))
    commander = Commander(tmp_path / "state", COMMANDS)
    commander.start()
    history = model.fit(
        x,
        3 * x + 1,
        epochs=MAX_STEPS // 8,
        batch_size=8,
        verbose=0,
        callbacks=[AFSNotify(manager, monitors=False, chart=False), saver, Slow()],
    )
    path, _ = check_outcome(manager, commander, tmp_path / "state")
    assert Path(path).parent == folder and Path(path).name.startswith("afs-checkpoint-step")
    assert keras.models.load_model(path) is not None
    assert list(folder.glob("afs-stop-step*.keras"))
    assert len(history.epoch) < MAX_STEPS // 16


def test_a_custom_loop_is_checkpointed_then_stopped_from_the_cli(
    manager: NotificationManager, tmp_path: Path
) -> None:
    from afs_callbacks.integrations.loop import RunNotifier

    model = torch.nn.Linear(4, 1)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    commander = Commander(tmp_path / "state", COMMANDS)
    commander.start()
    steps = 0
    with RunNotifier(manager, model_name="loop", total_steps=MAX_STEPS, monitors=False, chart=False) as run:
        for steps in range(1, MAX_STEPS + 1):
            time.sleep(STEP_SECONDS)
            loss = model(torch.rand(8, 4)).pow(2).mean()
            stop = run.step(loss=loss)
            if run.checkpoint_requested:  # the documented pattern: save, then say where
                path = folder / f"step{steps}.pt"
                torch.save(model.state_dict(), path)
                run.checkpoint(path)
            if stop:
                assert run.should_stop
                break
    path, _stop_detail = check_outcome(manager, commander, tmp_path / "state")
    assert Path(path).parent == folder
    assert len(list(folder.glob("step*.pt"))) == 2  # the asked one, and the one before the stop
    assert steps < MAX_STEPS // 2
