"""AFSNotify for Lightning: real trainings of a tiny model on CPU, whose events travel
through the real outbox and a real webhook channel to a loopback HTTP receiver.

Subprocess cases (SIGTERM, DDP, LightningCLI from a shell) are in
``integrations/scenario_lightning_*.py``.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.demos.boring_classes import BoringModel  # noqa: E402

import afs_callbacks  # noqa: E402
from afs_callbacks import EventType, NotificationEvent  # noqa: E402
from afs_callbacks.integrations.lightning import AFSNotify  # noqa: E402
from afs_callbacks.tracking import RunTracker  # noqa: E402
from tests.integrations.conftest import SECRET_TOKEN, delivered, of_type  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PACKAGE = str(Path(afs_callbacks.__file__).resolve().parent) + os.sep


class TinyModel(BoringModel):
    """BoringModel that logs train/val losses and can misbehave at a chosen step.

    Args:
        nan_from: from this global step on, the loss is NaN.
        raise_at: at this global step, ``training_step`` raises what ``error`` returns.
        epoch_metric: log ``epoch_index`` from the module's own ``on_train_epoch_end``.
    """

    def __init__(
        self,
        nan_from: int | None = None,
        raise_at: int | None = None,
        error: Callable[[], BaseException] | None = None,
        epoch_metric: bool = False,
    ) -> None:
        super().__init__()
        self.nan_from, self.raise_at, self.error, self.epoch_metric = nan_from, raise_at, error, epoch_metric

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.raise_at is not None and self.global_step == self.raise_at and self.error is not None:
            raise self.error()
        loss = self.step(batch)
        if self.nan_from is not None and self.global_step >= self.nan_from:
            loss = loss * float("nan")
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.log("val_loss", loss)
        return {"x": loss}

    def on_train_epoch_end(self) -> None:
        if self.epoch_metric:
            self.log("epoch_index", float(self.current_epoch))


def make_trainer(root: Path, callback: Any, **overrides: Any) -> Any:
    options: dict[str, Any] = dict(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
    )
    options.update(overrides)
    return pl.Trainer(callbacks=[callback], **options)


@pytest.fixture
def restore_sigint() -> Iterator[None]:
    """Lightning ignores SIGINT after a KeyboardInterrupt; give pytest its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


# A run, end to end ---------------------------------------------------------------------


def test_run_reports_started_epochs_and_completed_with_metrics(manager, receiver, tmp_path):
    trainer = make_trainer(tmp_path, AFSNotify(manager), max_epochs=3)
    trainer.fit(TinyModel())

    events = delivered(manager, receiver)
    kinds = [event.event_type for event in events]
    assert kinds[0] is EventType.TRAINING_STARTED and kinds[-1] is EventType.TRAINING_COMPLETED
    started, completed = events[0], events[-1]
    assert started.model == "TinyModel"
    assert started.context["epochs"] == 3 and started.context["world_size"] == 1
    assert started.context["device"] == "cpu" and started.context["batch_size"] == 1
    assert {event.run_id for event in events} == {started.run_id}

    epochs = of_type(events, EventType.EPOCH_COMPLETED)
    assert [event.context["epoch"] for event in epochs] == [1, 2, 3]  # 1-based, as the titles
    assert all({"train_loss", "val_loss"} <= set(event.metrics) for event in epochs)
    assert completed.metrics["val_loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert completed.context["steps"] == 12 and completed.context["duration"] > 0
    assert "val_loss" in completed.context["best"]


def test_each_fit_with_the_same_callback_is_a_run_of_its_own(manager, receiver, tmp_path):
    callback = AFSNotify(manager)
    make_trainer(tmp_path, callback, max_epochs=1).fit(TinyModel())
    make_trainer(tmp_path, callback, max_epochs=1).fit(TinyModel())

    events = delivered(manager, receiver)
    started = of_type(events, EventType.TRAINING_STARTED)
    completed = of_type(events, EventType.TRAINING_COMPLETED)
    assert len(started) == len(completed) == 2
    assert started[0].run_id != started[1].run_id
    assert [e.run_id for e in completed] == [e.run_id for e in started]


def test_metrics_logged_in_the_modules_epoch_end_reach_the_epoch_report(manager, receiver, tmp_path):
    make_trainer(tmp_path, AFSNotify(manager), max_epochs=2).fit(TinyModel(epoch_metric=True))

    epochs = of_type(delivered(manager, receiver), EventType.EPOCH_COMPLETED)
    assert [event.metrics.get("epoch_index") for event in epochs] == [0.0, 1.0]


def test_an_epoch_without_validation_does_not_report_stale_validation_metrics(manager, receiver, tmp_path):
    callback = AFSNotify(manager)
    make_trainer(tmp_path, callback, max_epochs=3, check_val_every_n_epoch=2).fit(TinyModel())

    epochs = of_type(delivered(manager, receiver), EventType.EPOCH_COMPLETED)
    assert ["val_loss" in event.metrics for event in epochs] == [False, True, False]


def test_sanity_check_is_not_an_evaluation_but_validate_is(manager, receiver, tmp_path):
    trainer = make_trainer(tmp_path, AFSNotify(manager), max_epochs=1, num_sanity_val_steps=2)
    model = TinyModel()
    trainer.fit(model)
    during_fit = delivered(manager, receiver)
    assert not [e for e in during_fit if e.event_type.value.startswith("evaluation")]

    trainer.validate(model, verbose=False)
    after = [e for e in delivered(manager, receiver)[len(during_fit) :] if "evaluation" in e.event_type.value]
    assert [event.event_type for event in after] == [
        EventType.EVALUATION_STARTED,
        EventType.EVALUATION_COMPLETED,
    ]
    assert "val_loss" in after[1].metrics


def test_checkpoint_saved_names_the_file_written(manager, receiver, tmp_path):
    trainer = make_trainer(tmp_path, AFSNotify(manager), max_epochs=2, enable_checkpointing=True)
    trainer.fit(TinyModel())

    saved = of_type(delivered(manager, receiver), EventType.CHECKPOINT_SAVED)
    assert len(saved) == 2
    assert [Path(event.context["checkpoint"]).name for event in saved] == [
        "epoch=0-step=4.ckpt",
        "epoch=1-step=8.ckpt",
    ]
    assert Path(saved[-1].context["checkpoint"]).is_file()  # top-1 keeps only the best file
    assert saved[-1].context["checkpoint"] == trainer.checkpoint_callback.best_model_path


# NaN, OOM, crashes, interruptions ---------------------------------------------------------


def test_nan_is_reported_once_at_or_shortly_after_its_step(manager, receiver, tmp_path):
    make_trainer(tmp_path, AFSNotify(manager, nan_check_every=4), max_epochs=2, limit_train_batches=10).fit(
        TinyModel(nan_from=5)
    )

    nans = of_type(delivered(manager, receiver), EventType.NAN_DETECTED)
    assert len(nans) == 1
    assert 5 <= nans[0].context["step"] <= 5 + 4 + 1  # the step after which it was read


def test_stop_on_nan_stops_training(manager, receiver, tmp_path):
    trainer = make_trainer(
        tmp_path,
        AFSNotify(manager, nan_check_every=2, stop_on_nan=True),
        max_epochs=5,
        limit_train_batches=10,
    )
    trainer.fit(TinyModel(nan_from=3))

    assert trainer.global_step <= 3 + 2 + 1
    assert len(of_type(delivered(manager, receiver), EventType.NAN_DETECTED)) == 1


def test_out_of_memory_is_reported_and_the_error_still_raised(manager, receiver, tmp_path):
    def oom() -> BaseException:
        return torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8 GiB total)"
        )

    with pytest.raises(torch.cuda.OutOfMemoryError):
        make_trainer(tmp_path, AFSNotify(manager)).fit(TinyModel(raise_at=2, error=oom))

    events = delivered(manager, receiver)
    assert events[-1].event_type is EventType.OUT_OF_MEMORY
    assert events[-1].context["device"] == "GPU 0" and events[-1].context["step"] == 2
    assert not of_type(events, EventType.TRAINING_FAILED)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA_VISIBLE_DEVICES set)")
def test_a_real_cuda_out_of_memory_is_reported_with_memory_figures(manager, receiver, tmp_path):
    class Greedy(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 1:
                torch.empty(1 << 50, dtype=torch.uint8, device=self.device)  # 1 PiB: never fits
            return super().training_step(batch, batch_idx)

    with pytest.raises(torch.cuda.OutOfMemoryError):
        make_trainer(tmp_path, AFSNotify(manager), accelerator="cuda", devices=1).fit(Greedy())

    [oom] = of_type(delivered(manager, receiver), EventType.OUT_OF_MEMORY)
    assert oom.context["memory_total_mb"] > 0 and oom.context["step"] == 1


def test_a_crash_is_reported_with_a_redacted_traceback_tail(manager, receiver, tmp_path):
    def crash() -> BaseException:  # a message that quotes the (secret) webhook URL
        return ValueError(f"bad batch; config was {receiver.url(f'/hooks/{SECRET_TOKEN}')}")

    with pytest.raises(ValueError, match="bad batch"):
        make_trainer(tmp_path, AFSNotify(manager)).fit(TinyModel(raise_at=1, error=crash))

    failed = of_type(delivered(manager, receiver), EventType.TRAINING_FAILED)
    assert len(failed) == 1
    assert "ValueError" in failed[0].message and "training_step" in failed[0].message
    assert SECRET_TOKEN not in failed[0].to_json()


def test_keyboard_interrupt_is_an_interruption_not_a_failure(manager, receiver, tmp_path, restore_sigint):
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into sys.exit(1)
        make_trainer(tmp_path, AFSNotify(manager)).fit(TinyModel(raise_at=3, error=KeyboardInterrupt))

    events = delivered(manager, receiver)
    assert events[-1].event_type is EventType.TRAINING_INTERRUPTED
    assert "KeyboardInterrupt" in events[-1].context["reason"]
    assert not of_type(events, EventType.TRAINING_FAILED)


def test_a_crash_in_the_sanity_check_is_reported(manager, receiver, tmp_path):
    class BrokenValidation(TinyModel):
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            raise RuntimeError("shape mismatch in validation_step")

    with pytest.raises(RuntimeError):
        make_trainer(tmp_path, AFSNotify(manager), num_sanity_val_steps=1).fit(BrokenValidation())

    assert [e.event_type for e in delivered(manager, receiver)] == [EventType.TRAINING_FAILED]


# Resume ---------------------------------------------------------------------------------


def test_resume_from_a_checkpoint_reports_resumed_and_keeps_the_run(manager, receiver, tmp_path):
    first = make_trainer(tmp_path, AFSNotify(manager), max_epochs=2, enable_checkpointing=True)
    first.fit(TinyModel())
    checkpoint = first.checkpoint_callback.best_model_path
    before = delivered(manager, receiver)
    run_id = before[0].run_id
    saved_state = torch.load(checkpoint, weights_only=False)["callbacks"]["AFSNotify"]
    assert saved_state["run_id"] == run_id and saved_state["best"] is not None

    resumed_callback = AFSNotify(manager)
    second = make_trainer(tmp_path, resumed_callback, max_epochs=4, enable_checkpointing=True)
    second.fit(TinyModel(), ckpt_path=checkpoint)

    seen = {event.id for event in before}
    after = [event for event in delivered(manager, receiver) if event.id not in seen]
    assert [e.event_type for e in after[:2]] == [EventType.CHECKPOINT_LOADING, EventType.TRAINING_RESUMED]
    assert after[0].context["checkpoint"] == checkpoint
    assert {event.run_id for event in after} == {run_id}
    assert [e.context["epoch"] for e in of_type(after, EventType.EPOCH_COMPLETED)] == [3, 4]
    # The best value from before the resume is the bar the resumed run is measured against.
    assert resumed_callback.tracker.state_dict()["best"] <= saved_state["best"]


# The rules: cheap steps, no exception into Lightning, picklable, validated arguments ------


class SyncProbe(torch.Tensor):
    """A tensor that counts host reads (``.item()``, ``float()``...) made by afs_callbacks."""

    reads: ClassVar[collections.Counter[str]] = collections.Counter()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        host_read = name in {"item", "__float__", "__bool__", "__int__", "tolist", "cpu", "numpy"}
        if host_read and any(f.filename.startswith(PACKAGE) for f in traceback.extract_stack(limit=12)):
            cls.reads[name] += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def test_the_step_hook_reads_the_loss_only_every_nan_check_every_steps(manager, tmp_path):
    class Probed(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"loss": self.step(batch).as_subclass(SyncProbe)}

    SyncProbe.reads.clear()
    make_trainer(tmp_path, AFSNotify(manager, nan_check_every=10), max_epochs=1, limit_train_batches=40).fit(
        Probed()
    )
    assert sum(SyncProbe.reads.values()) == 40 // 10


def test_lightning_dispatches_only_the_per_batch_hooks_the_callback_uses(manager, tmp_path):
    """Lightning's own profiler names every callback hook it enters. Of the per-batch ones,
    only the batch ends are entered for AFSNotify; a subclass's own hook still runs."""
    from lightning.pytorch.profilers import SimpleProfiler

    called: list[int] = []

    class Subclassed(AFSNotify):
        def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
            called.append(trainer.global_step)

    profiler = SimpleProfiler()
    trainer = make_trainer(tmp_path, AFSNotify(manager), max_epochs=1, profiler=profiler)
    trainer.fit(TinyModel())
    entered = {
        name.split(".")[-1] for name in profiler.recorded_durations if name.startswith("[Callback]AFSNotify")
    }
    assert {"on_train_batch_end", "on_validation_batch_end"} <= entered
    per_batch = {
        "on_train_batch_start",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
    }
    assert not entered & (per_batch | {"on_before_zero_grad", "on_validation_batch_start"})
    make_trainer(tmp_path, Subclassed(manager), max_epochs=1).fit(TinyModel())
    assert len(called) == 4  # limit_train_batches


def test_default_nan_cadence_follows_the_trainers_logging_cadence(manager, tmp_path):
    callback = AFSNotify(manager)
    make_trainer(tmp_path, callback, max_epochs=1, log_every_n_steps=7).fit(TinyModel())
    assert callback.tracker.config.nan_check_every == 7


def test_a_failing_tracker_never_breaks_training(manager, tmp_path, caplog):
    class BrokenTracker(RunTracker):
        def on_step(self, step: int, loss: Any = None, grad_norm: Any = None) -> bool:
            raise RuntimeError("tracker bug")

        def epoch_end(self, epoch: int, metrics: Any = None) -> None:
            raise RuntimeError("tracker bug")

    broken = BrokenTracker(manager)
    trainer = make_trainer(tmp_path, AFSNotify(tracker=broken), max_epochs=2)
    with caplog.at_level(logging.ERROR, logger="afs_callbacks"):
        trainer.fit(TinyModel())

    assert trainer.global_step == 8  # training ran to the end
    failures = [r for r in caplog.records if "AFSNotify.on_train_batch_end failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per step
    assert broken.finished  # the run still ended: its end was reported, not left to a watcher


def test_the_callback_pickles_for_ddp_spawn_without_its_manager(manager):
    callback = AFSNotify(manager, monitor="val_acc", mode="max")
    clone = pickle.loads(pickle.dumps(callback))
    assert clone._manager is None and clone._manager_dropped
    assert clone.tracker.config.monitor == "val_acc"
    assert SECRET_TOKEN not in repr(pickle.dumps(callback))


def test_bad_arguments_are_quoted_in_the_error():
    with pytest.raises(ValueError, match=r"AFSNotify\(mode='best'\)"):
        AFSNotify(mode="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"AFSNotify\(patience=-1\)"):
        AFSNotify(patience=-1)


def test_no_secret_in_repr_state_checkpoint_or_history(manager, receiver, tmp_path, caplog):
    callback = AFSNotify(manager)
    trainer = make_trainer(tmp_path, callback, max_epochs=1, enable_checkpointing=True)
    with caplog.at_level(logging.DEBUG):
        trainer.fit(TinyModel())
    delivered(manager, receiver)

    checkpoint = Path(trainer.checkpoint_callback.best_model_path).read_bytes()
    history = repr(manager.outbox.history(limit=100))
    for text in (repr(callback), repr(callback.state_dict()), history, caplog.text):
        assert SECRET_TOKEN not in text
    assert SECRET_TOKEN.encode() not in checkpoint


def test_channels_come_from_the_environment_without_arguments(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("WEBHOOK_URL", receiver.url("/from-env"))
    callback = AFSNotify()
    make_trainer(tmp_path, callback, max_epochs=1).fit(TinyModel())

    receiver.wait_for(predicate=lambda r: r.json()["event_type"] == "training_completed")
    assert {request.path for request in receiver.requests} == {"/from-env"}
    callback.tracker.manager.close()


# Both namespaces, LightningCLI, the example -------------------------------------------------


def test_the_pytorch_lightning_namespace_has_its_own_callback(manager, receiver, tmp_path):
    ptl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.demos.boring_classes import BoringModel as PTLBoringModel

    from afs_callbacks.integrations import pytorch_lightning as adapter

    assert issubclass(adapter.AFSNotify, ptl.Callback) and not issubclass(adapter.AFSNotify, pl.Callback)
    trainer = ptl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[adapter.AFSNotify(manager)],
    )
    trainer.fit(PTLBoringModel())
    kinds = [event.event_type for event in delivered(manager, receiver)]
    assert kinds[0] is EventType.TRAINING_STARTED and kinds[-1] is EventType.TRAINING_COMPLETED


def test_lightning_cli_adds_the_callback_from_the_command_line(receiver, tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures]")
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setenv("WEBHOOK_URL", receiver.url(f"/cli/{SECRET_TOKEN}"))
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's
    cli = LightningCLI(
        TinyModel,
        args=[
            "fit",
            "--trainer.callbacks+=afs_callbacks.integrations.lightning.AFSNotify",
            "--trainer.callbacks.init_args.model_name=cli-model",
            "--trainer.callbacks.init_args.patience=5",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        save_config_kwargs={"overwrite": True},
    )
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, AFSNotify))
    assert callback.tracker.config.patience == 5
    receiver.wait_for(predicate=lambda r: r.json()["event_type"] == "training_completed")
    assert {NotificationEvent.from_dict(r.json()).model for r in receiver.requests} == {"cli-model"}
    config = (tmp_path / "config.yaml").read_text()
    assert "afs_callbacks.integrations.lightning.AFSNotify" in config and SECRET_TOKEN not in config
    callback.tracker.manager.close()


@pytest.mark.slow
def test_the_example_runs_and_shows_what_it_sent(tmp_path):
    env = {**os.environ, "AFS_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "lightning_example.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The quiet default pushes the start, the end and what needs a human; epochs stay in the history.
    for kind in ("training_started", "training_completed", "nan_detected"):
        assert kind in result.stdout
