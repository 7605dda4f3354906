"""Scenario: LightningCLI, with AFSNotify added on the command line and channels in the env.

What a user types (the training script is this file)::

    export WEBHOOK_URL=https://hooks.example.org/...   # secrets stay in the environment
    python integrations/scenario_lightning_cli.py fit \\
        --trainer.callbacks+=afs_callbacks.integrations.lightning.AFSNotify \\
        --trainer.callbacks.init_args.model_name=cli-regressor \\
        --trainer.callbacks.init_args.monitor=val_loss \\
        --trainer.max_epochs=2

and what they get: "Training started", the epochs, "Training completed" with ``val_loss``;
the ``config.yaml`` LightningCLI saves lists the callback and the arguments a YAML file can
give (not ``manager`` or ``tracker``), and no secret. A bad value ends the command with one
line (``error: AFSNotify(patience=-1) must be >= 0``, exit 2); the short form
``--trainer.callbacks+=AFSNotify`` works once the script imports the adapter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SECRET = "cli-s3cr3t-path-token"


def main() -> None:
    """The training script: a tiny regression model and LightningCLI, nothing else."""
    import torch
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import LightningCLI
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Regressor(LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.lr = lr
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

        def _loader(self) -> Any:
            x = torch.rand(64, 1)
            return DataLoader(TensorDataset(x, 3 * x + 1), batch_size=16)

        def train_dataloader(self) -> Any:
            return self._loader()

        def val_dataloader(self) -> Any:
            return self._loader()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    if os.environ.get("SCENARIO_IMPORTS_ADAPTER"):
        # What makes the short form --trainer.callbacks+=AFSNotify resolve (docs/integrations.md).
        import afs_callbacks.integrations.lightning  # noqa: F401

    LightningCLI(Regressor, save_config_kwargs={"overwrite": True})


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """This script under LightningCLI, as a user runs it."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    command = [
        sys.executable,
        __file__,
        "fit",
        *args,
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=180)


def cli_ready() -> None:
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("lightning.pytorch")
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures]")


@pytest.mark.slow
def test_a_bad_argument_ends_the_command_with_one_line(tmp_path):
    cli_ready()
    result = run_cli(
        tmp_path,
        "--trainer.callbacks+=afs_callbacks.integrations.lightning.AFSNotify",
        "--trainer.callbacks.init_args.patience=-1",
    )
    assert result.returncode == 2, result.stderr[-4000:]
    assert result.stderr.splitlines()[-1] == "error: AFSNotify(patience=-1) must be >= 0"
    assert "Traceback" not in result.stderr and "Union" not in result.stderr
    assert not (tmp_path / "config.yaml").exists()  # it stopped before training


@pytest.mark.slow
def test_the_short_form_works_once_the_script_imports_the_adapter(receiver, tmp_path):
    cli_ready()
    short = "--trainer.callbacks+=AFSNotify"
    imported = run_cli(tmp_path, short, SCENARIO_IMPORTS_ADAPTER="1", WEBHOOK_URL=receiver.url("/hook"))
    assert imported.returncode == 0, imported.stderr[-4000:]
    assert (
        "class_path: afs_callbacks.integrations.lightning.AFSNotify" in (tmp_path / "config.yaml").read_text()
    )
    assert "training_completed" in [request.json()["event_type"] for request in receiver.requests]
    # Without the import jsonargparse cannot resolve the short name: docs/integrations.md
    # says so and gives the full path.
    refused = run_cli(tmp_path, short)
    assert refused.returncode != 0
    assert "Expected a dot import path string: AFSNotify" in refused.stderr


@pytest.mark.slow
def test_lightning_cli_with_the_callback_from_the_command_line(receiver, tmp_path):
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("lightning.pytorch")
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures]")
    from afs_callbacks import EventType, NotificationEvent

    env = {
        **os.environ,
        "WEBHOOK_URL": receiver.url(f"/hook/{SECRET}"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        __file__,
        "fit",
        "--trainer.callbacks+=afs_callbacks.integrations.lightning.AFSNotify",
        "--trainer.callbacks.init_args.model_name=cli-regressor",
        "--trainer.callbacks.init_args.monitor=val_loss",
        "--trainer.max_epochs=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]

    # The process has exited: everything below was delivered before it did.
    events = [NotificationEvent.from_dict(request.json()) for request in receiver.requests]
    kinds = [event.event_type for event in events]
    assert kinds[0] is EventType.TRAINING_STARTED and kinds[-1] is EventType.TRAINING_COMPLETED
    # The quiet default pushes no epoch messages: the completion's summary counts them.
    assert kinds.count(EventType.EPOCH_COMPLETED) == 0 and events[-1].context["epochs_run"] == 2
    assert {event.model for event in events} == {"cli-regressor"}
    assert "val_loss" in events[-1].metrics
    config = (tmp_path / "config.yaml").read_text()
    assert "class_path: afs_callbacks.integrations.lightning.AFSNotify" in config
    assert "monitor: val_loss" in config
    assert SECRET not in config and SECRET not in result.stdout + result.stderr
    # Python objects are not options of a config file.
    assert "manager:" not in config and "tracker:" not in config and "name_or_manager" not in config


if __name__ == "__main__":
    main()
