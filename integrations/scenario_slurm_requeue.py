"""Scenario: SLURM warns a Lightning job before its time limit, Lightning requeues it, and
the requeued job resumes from its checkpoint.

What a user sees:

1. "Training started", with the SLURM job id, array task id and node list in its context.
2. SLURM sends the requeue signal (``SIGUSR1``, ``#SBATCH --signal=SIGUSR1@90``). Lightning's
   ``SLURMEnvironment(auto_requeue=True)`` saves ``hpc_ckpt_1.ckpt`` and runs
   ``scontrol requeue``; the scheduler stops the job (SIGTERM). One message says so:
   "Training interrupted (preempted, requeued ...)"; no second one for the SIGTERM.
3. The requeued job (same job id) resumes from ``hpc_ckpt_1.ckpt``: "Training resumed"
   under the same run id, then "Training completed".

The test runs the training script (this file) in real subprocesses with the SLURM
variables set and signals it for real. ``scontrol`` is a stand-in for the cluster: a
fake script first on ``PATH`` that records its arguments and, as ``scontrol requeue``
makes the scheduler do, sends SIGTERM to the job (its parent process). Nothing else is
simulated. Run by hand: ``python integrations/scenario_slurm_requeue.py --root DIR
[--resume]`` with the SLURM variables and a channel (``WEBHOOK_URL``) in the environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[1]
READY = "TRAINING-IS-RUNNING"
SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_ARRAY_JOB_ID": "4240",
    "SLURM_ARRAY_TASK_ID": "2",
    "SLURM_JOB_NODELIST": "gpu-node01",
    "SLURM_NODELIST": "gpu-node01",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}
# Records its arguments, then does what the scheduler does on a requeue: stop the job.
FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$FAKE_SCONTROL_LOG"
kill -TERM "$PPID"
"""


def train(root: Path, resume: bool) -> None:
    """The job: a tiny regression that would run for a long time unless stopped."""
    import torch
    from lightning.pytorch import Callback, LightningModule, Trainer
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from afs_callbacks.integrations.lightning import AFSNotify

    class Regressor(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class SayWhenRunning(Callback):
        """Tells the test (on stdout) that steps are being taken, so the signal lands mid-run."""

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 3:
                print(READY, flush=True)

    # The requeued job runs a few more steps and ends; the first one runs until stopped.
    checkpoint = root / "hpc_ckpt_1.ckpt"
    max_steps = torch.load(checkpoint, weights_only=False)["global_step"] + 5 if resume else 10**9
    x = torch.rand(64, 1)
    trainer = Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=[AFSNotify(model_name="requeueable"), SayWhenRunning()],  # channels from the env
        default_root_dir=root,  # Lightning saves and finds hpc_ckpt_N.ckpt here
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DataLoader(TensorDataset(x, 3 * x + 1), batch_size=8)
    trainer.fit(Regressor(), data)  # no ckpt_path: on SLURM, Lightning finds the HPC checkpoint


# The test ------------------------------------------------------------------------------


def _fake_scontrol(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text(FAKE_SCONTROL)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def _child(root: Path, receiver_url: str, fake_bin: Path, log: IO[str], *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **SLURM_ENV,
        "WEBHOOK_URL": receiver_url,
        # An array task is a sweep's trial by default (its start and clean end stay in the
        # history); this job array is not a sweep, and its start and end are what is tested.
        "AFS_SWEEP": "off",
        "PATH": os.pathsep.join([str(fake_bin), os.environ.get("PATH", "")]),
        "FAKE_SCONTROL_LOG": str(root.parent / "scontrol.log"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, __file__, "--root", str(root), *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )


def _received(receiver: Any) -> list[Any]:
    from afs_callbacks import NotificationEvent

    return [NotificationEvent.from_dict(request.json()) for request in receiver.requests]


@pytest.mark.slow
def test_a_requeued_slurm_job_is_reported_once_and_resumes_as_the_same_run(receiver, tmp_path):
    from tests.helpers.children import wait_for_line  # here: the job is this file, run alone

    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("lightning.pytorch")
    from afs_callbacks import EventType

    root, fake_bin = tmp_path / "job", _fake_scontrol(tmp_path / "bin")
    with (tmp_path / "first.log").open("w") as log:
        job = _child(root, receiver.url("/hook"), fake_bin, log)
        try:
            wait_for_line(job, READY, timeout=120)
            job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=SIGUSR1@90` sends
            job.wait(timeout=60)
        finally:
            job.kill()
    first = _received(receiver)
    output = (tmp_path / "first.log").read_text()[-3000:]
    assert [event.event_type for event in first] == [
        EventType.TRAINING_STARTED,
        EventType.TRAINING_INTERRUPTED,
    ], output
    started, interrupted = first
    assert interrupted.context["reason"] == "preempted, requeued (SLURM job 4240_2)"
    assert {
        key: started.context.get(key) for key in ("slurm_job_id", "slurm_array_task_id", "slurm_nodelist")
    } == {
        "slurm_job_id": "4242",
        "slurm_array_task_id": "2",
        "slurm_nodelist": "gpu-node01",
    }
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4240_2"]
    assert (root / "hpc_ckpt_1.ckpt").is_file()

    with (tmp_path / "requeued.log").open("w") as log:
        requeued = _child(root, receiver.url("/hook"), fake_bin, log, "--resume")
        assert requeued.wait(timeout=120) == 0, (tmp_path / "requeued.log").read_text()[-3000:]
    second = _received(receiver)[len(first) :]
    assert [event.event_type for event in second] == [
        EventType.TRAINING_RESUMED,
        EventType.TRAINING_COMPLETED,
    ]
    assert {event.run_id for event in second} == {started.run_id}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    arguments = parser.parse_args()
    train(arguments.root, arguments.resume)
