"""A sweep is one thing to a person: one start, one summary, a push only when a trial needs
a human, and every pushed trial message names the trial and its parameters.

Real Optuna studies of a tiny custom loop (:class:`RunNotifier`) on CPU; events go through
the real manager, outbox and a real webhook channel to a loopback receiver, and exactly
what reached it is counted. The Ray Tune case is in ``test_end_survives_exit.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import NotificationManager, Settings, Sweep
from afs_callbacks import sweeps as sweep_voice
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.integrations.loop import RunNotifier
from afs_callbacks.outcome import Outcome
from afs_callbacks.testing import LoopbackReceiver
from afs_callbacks.tracking import sweep as sweeps
from tests.helpers.hook import wait_until

REPO = Path(__file__).resolve().parents[2]

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_manager(receiver: LoopbackReceiver, tmp_path: Path, **settings: Any) -> NotificationManager:
    channel = WebhookNotifier(receiver.url("/hook"))
    return NotificationManager(
        {"webhook": channel}, settings=Settings(state_dir=tmp_path / "state", **settings)
    )


@pytest.fixture
def manager(receiver: LoopbackReceiver, tmp_path: Path) -> Iterator[NotificationManager]:
    built = make_manager(receiver, tmp_path)
    yield built
    built.close()


def objective_for(manager: NotificationManager, *, crash_at: float | None = None) -> Any:
    """A tiny loop: val_loss is x; the trial whose x is ``crash_at`` raises, and Optuna's
    pruner (a threshold of 0.5 on the reported loss) prunes those over it."""

    def objective(trial: Any) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        with RunNotifier(manager, model_name="tiny", total_steps=10, monitors=False, chart=False) as run:
            for step in range(10):
                run.step(loss=x + 1.0 / (step + 1))
            if crash_at is not None and x == crash_at:
                raise RuntimeError("the data loader broke")
            run.epoch({"val_loss": x})
            trial.report(x, step=0)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_loss {x} over the threshold")
        return x

    return objective


def bodies(receiver: LoopbackReceiver) -> list[dict[str, Any]]:
    return [request.json() for request in receiver.requests]


def test_detects_an_optuna_trial_in_the_stack_and_the_explicit_and_cluster_ones() -> None:
    found: list[sweeps.Trial | None] = []
    study = optuna.create_study(study_name="lr-study")
    study.enqueue_trial({"lr": 0.01})

    def objective(trial: Any) -> float:
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        found.append(sweeps.detect())
        return 0.0

    study.optimize(objective, n_trials=1)
    assert found == [sweeps.Trial("lr-study", "0", {"lr": 0.01}, "optuna")]
    assert sweeps.detect(environ={}) is None
    explicit = sweeps.detect(environ={"AFS_SWEEP": "grid-7", "AFS_TRIAL": "b"})
    assert explicit == sweeps.Trial("grid-7", "b", {}, "explicit")
    slurm = sweeps.detect(environ={"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"})
    assert slurm == sweeps.Trial("slurm-4242", "3", {}, "slurm")
    wandb = sweeps.detect(environ={"WANDB_SWEEP_ID": "abc123", "WANDB_RUN_ID": "run9"})
    assert wandb == sweeps.Trial("abc123", "run9", {}, "wandb")


@pytest.mark.slow
def test_an_optuna_sweep_pushes_one_start_one_summary_and_only_the_crash(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    """6 trials: 3 complete, 2 pruned, 1 crashes. Pushed: the sweep's start, the crash
    (naming the trial and its x) and the summary; the trials' starts and clean ends are
    in the history only."""
    study = optuna.create_study(
        study_name="x-study",
        sampler=optuna.samplers.GridSampler({"x": [0.1, 0.2, 0.3, 0.4, 0.8, 0.9]}),
        pruner=optuna.pruners.ThresholdPruner(upper=0.5),
    )
    with Sweep("x-study", manager=manager):
        study.optimize(objective_for(manager, crash_at=0.4), n_trials=6, catch=(RuntimeError,))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3 + ["FAIL"] + ["PRUNED"] * 2
    manager.flush(10)
    pushed = bodies(receiver)
    titles = [body["title"] for body in pushed]
    assert titles == [
        "Sweep started: x-study",
        "❌ Training failed: tiny",
        "Sweep finished with failures: x-study",
    ], titles
    crash = pushed[1]
    assert crash["context"]["sweep"] == "x-study" and crash["context"]["trial_params"] == {"x": 0.4}
    number = {trial.params["x"]: trial.number for trial in study.trials}  # the grid's order is random
    assert f"Trial {number[0.4]} of sweep x-study: x=0.4" in crash["message"]
    summary = pushed[2]
    assert summary["context"]["trials"] == 6
    assert summary["context"]["pruned"] == 2 and summary["context"]["failed"] == 1
    assert summary["context"]["best_params"] == {"x": 0.1}
    assert (
        "6 trials" in summary["message"]
        and f"Best val_loss: 0.1 (trial {number[0.1]}: x=0.1)" in summary["message"]
    )
    # Everything is in the history: 6 starts, 5 ends that were not pushed.
    history = [e.event for e in manager.outbox.history(limit=500)]
    trial_ends = [
        e
        for e in history
        if e.context.get("trial") is not None and e.event_type.value == "training_completed"
    ]
    outcomes = sorted(e.context["outcome"] for e in trial_ends)
    assert outcomes == [Outcome.COMPLETED.value] * 3 + [Outcome.PRUNED.value] * 2
    assert len(trial_ends) == 5


@pytest.mark.slow
def test_verbose_keeps_every_trial_push(receiver: LoopbackReceiver, tmp_path: Path) -> None:
    manager = make_manager(receiver, tmp_path, verbosity="verbose")
    study = optuna.create_study(
        study_name="v",
        sampler=optuna.samplers.GridSampler({"x": [0.1, 0.9]}),
        pruner=optuna.pruners.ThresholdPruner(upper=0.5),
    )
    study.optimize(objective_for(manager), n_trials=2)
    manager.flush(10)
    pushed = [b for b in bodies(receiver) if b["context"].get("trial") is not None]  # not the sweep's
    starts = [b for b in pushed if b["event_type"] == "training_started"]
    ends = [b for b in pushed if b["event_type"] == "training_completed"]
    assert len(starts) == 2 and len(ends) == 2
    assert all("Trial " in b["message"] and "of sweep v: x=" in b["message"] for b in starts + ends)
    manager.close()


def test_routing_keeps_a_trials_routine_start_and_clean_end_in_the_history() -> None:
    from afs_callbacks.delivery.routing import Route
    from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel

    def event(kind: EventType, level: NotificationLevel, **context: Any) -> NotificationEvent:
        return NotificationEvent(kind, level, "t", "m", {"run_id": "r", **context})

    trial = {"sweep": "s", "trial": "3"}
    route = Route()
    assert not route.accepts(event(EventType.TRAINING_STARTED, NotificationLevel.INFO, **trial), "normal")
    assert not route.accepts(
        event(EventType.TRAINING_COMPLETED, NotificationLevel.SUCCESS, **trial), "normal"
    )
    assert not route.accepts(event(EventType.TRAINING_COMPLETED, NotificationLevel.INFO, **trial), "quiet")
    # What needs a human is pushed; so is a warning end, a run outside a sweep and the
    # sweep's own messages (no trial); verbose keeps everything.
    assert route.accepts(event(EventType.TRAINING_FAILED, NotificationLevel.ERROR, **trial), "normal")
    assert route.accepts(event(EventType.TRAINING_COMPLETED, NotificationLevel.WARNING, **trial), "normal")
    assert route.accepts(event(EventType.TRAINING_STARTED, NotificationLevel.INFO), "normal")
    assert route.accepts(event(EventType.TRAINING_STARTED, NotificationLevel.INFO, sweep="s"), "normal")
    assert route.accepts(event(EventType.TRAINING_STARTED, NotificationLevel.INFO, **trial), "verbose")


def test_hf_trainer_state_names_the_trial() -> None:
    from types import SimpleNamespace

    # The two fields of transformers.TrainerState that hyperparameter_search sets.
    state = SimpleNamespace(
        trial_name="run-7", trial_params={"learning_rate": 0.01, "layers": 2, "x": object()}
    )
    found = sweeps.detect(trial=state, environ={})
    assert found == sweeps.Trial(
        "hyperparameter_search", "run-7", {"learning_rate": 0.01, "layers": 2}, "transformers"
    )
    assert (
        found is not None
        and found.line() == "Trial run-7 of sweep hyperparameter_search: learning_rate=0.01, layers=2"
    )


def test_afs_sweep_off_says_an_array_job_is_not_a_sweep() -> None:
    array = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"}
    assert sweeps.detect(environ={**array, "AFS_SWEEP": "off"}) is None
    assert sweeps.detect(sweep="off", environ=array) is None


@pytest.mark.slow
def test_an_optuna_sweep_without_the_block_is_announced_once_and_summarised_once_quiet(
    manager: NotificationManager, receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``Sweep`` block: the first trial announces the study, and once no trial has run
    for the quiet time (1 s here, 60 s by default) one summary follows, while the manager
    is still open. The trials' routine starts and ends stay in the history."""
    monkeypatch.setattr(sweep_voice, "QUIET_SECONDS", 1.0)
    study = optuna.create_study(
        study_name="quiet-study",
        sampler=optuna.samplers.GridSampler({"x": [0.1, 0.2, 0.9]}),
        pruner=optuna.pruners.ThresholdPruner(upper=0.5),
    )
    study.optimize(objective_for(manager), n_trials=3)
    wait_until(lambda: len(receiver.requests) >= 2, 30, "the sweep's summary after its quiet second")
    manager.flush(10)
    pushed = bodies(receiver)
    assert [b["title"] for b in pushed] == ["Sweep started: quiet-study", "Sweep finished: quiet-study"]
    start, summary = pushed
    assert "Optuna study quiet-study" in start["message"] and "no trial has run for 1.0s" in start["message"]
    assert summary["context"]["trials"] == 3 and summary["context"]["pruned"] == 1
    assert summary["context"]["failed"] == 0 and summary["context"]["best_params"] == {"x": 0.1}
    manager.close()  # the summary was said: closing says nothing more
    assert len(receiver.requests) == 2


@pytest.mark.slow
def test_an_optuna_sweep_without_the_block_is_summarised_when_its_program_ends(
    receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    """A script that ends right after ``study.optimize`` (the quiet minute not over): the
    summary is pushed at exit, before the process is gone."""
    script = textwrap.dedent(
        """
        import optuna
        from afs_callbacks.integrations.loop import RunNotifier

        optuna.logging.set_verbosity(optuna.logging.WARNING)

        def objective(trial):
            x = trial.suggest_float("x", 0.0, 1.0)
            with RunNotifier(model_name="tiny", total_steps=3, monitors=False, chart=False) as run:
                for step in range(3):
                    run.step(loss=x + step)
                run.epoch({"val_loss": x})
            return x

        study = optuna.create_study(study_name="exit-study")
        study.optimize(objective, n_trials=2)
        """
    )
    env = {
        **os.environ,
        "WEBHOOK_URL": receiver.url("/hook"),
        "AFS_STATE_DIR": str(tmp_path / "state"),
        "DESKTOP_NOTIFICATIONS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pushed = bodies(receiver)  # no waiting: delivered before the process exited
    assert [b["title"] for b in pushed] == ["Sweep started: exit-study", "Sweep finished: exit-study"], (
        done.stderr[-3000:]
    )
    assert pushed[1]["context"]["trials"] == 2


def test_callbacks_given_no_manager_share_one_per_process_and_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A sweep's trials each build a callback with no manager: they get the same one (one
    writer, one sender per channel, one store connection), so the library's threads do not
    grow with the trials; other settings get a manager of their own."""
    import threading

    monkeypatch.setenv("DESKTOP_NOTIFICATIONS_ENABLED", "false")
    managers: list[object] = []

    def objective(trial: Any) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        with RunNotifier(model_name="tiny", total_steps=3, monitors=False, chart=False) as run:
            for step in range(3):
                run.step(loss=x + step)
            managers.append(run.tracker.manager)
        return x

    def library_threads() -> Counter[str]:
        # The library's threads that stay, by name. One kind comes and goes on its own and
        # is waited for first: the death watcher's spawner, which lives while a trial's
        # "ended" waits for a watcher that is starting (up to SPAWN_GRACE_SECONDS).
        for thread in threading.enumerate():
            if thread.name == "afs-watch-start":
                thread.join(30)
        return Counter(t.name for t in threading.enumerate() if t.name.startswith("afs-"))

    study = optuna.create_study(study_name="shared")
    study.optimize(objective, n_trials=2)
    after_two = library_threads()
    study.optimize(objective, n_trials=8)
    assert len({id(m) for m in managers}) == 1 and len(managers) == 10
    grown = library_threads() - after_two
    assert not grown, f"threads that came with the trials: {dict(grown)}"
    shared = NotificationManager.shared()
    assert shared is managers[0]
    monkeypatch.setenv("AFS_STATE_DIR", str(tmp_path / "elsewhere"))
    other = NotificationManager.shared()
    assert other is not shared and other.state_dir == str(tmp_path / "elsewhere")
    other.close()
    again = NotificationManager.shared()
    assert again is not other  # a closed one is not handed out
    again.close()
    shared.close()


@pytest.mark.slow
def test_no_chart_is_drawn_for_a_trial_end_that_stays_in_the_history(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    """The loss chart costs about a quarter of a second of CPU: a trial's routine end,
    which no channel takes, goes without one; a run outside a sweep still has its chart."""
    pytest.importorskip("matplotlib")

    def objective(trial: Any) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        with RunNotifier(manager, model_name="trial", total_steps=20, monitors=False) as run:
            for step in range(20):
                run.step(loss=x + 1.0 / (step + 1))
        return x

    optuna.create_study(study_name="charts").optimize(objective, n_trials=2)
    with RunNotifier(manager, model_name="alone", total_steps=20, monitors=False) as run:
        for step in range(20):
            run.step(loss=1.0 / (step + 1))
    manager.flush(15)
    ends = [
        entry.event
        for entry in manager.outbox.history(limit=100)
        if entry.event.event_type.value == "training_completed" and entry.event.model != "sweep"
    ]
    charted = sorted((e.context.get("trial") is not None, bool(e.attachments)) for e in ends)
    assert charted == [(False, True), (True, False), (True, False)], [(e.title, e.attachments) for e in ends]
    alone = [b for b in bodies(receiver) if b["title"].endswith("alone")]
    assert alone and alone[-1].get("attachments"), "the run outside the sweep lost its chart"


def test_a_block_adopts_a_sweep_its_trials_opened_and_adds_only_the_summary(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    """A trial (``sweep=``, its own voice) announced the sweep before the driver entered
    ``Sweep``: the block says no second start, and its summary counts from the sweep's
    start; the claim is closed, so the death watcher has nothing left to say."""
    from afs_callbacks.delivery import sweep_claims

    def trial(value: float) -> None:
        with RunNotifier(
            manager, model_name="tiny", sweep="late-block", total_steps=3, monitors=False
        ) as run:
            for step in range(3):
                run.step(loss=value + step)
            run.epoch({"val_loss": value})

    trial(0.4)
    with Sweep("late-block", manager=manager):
        trial(0.2)
    manager.flush(10)
    assert [body["title"] for body in bodies(receiver)] == [
        "Sweep started: late-block",
        "Sweep finished: late-block",
    ]
    summary = bodies(receiver)[1]
    assert summary["context"]["trials"] == 2 and summary["context"]["best"]["val_loss"] == 0.2
    assert sweep_claims.open_claims(manager.state_dir) == []
