"""A sweep whose trials run in processes of their own, without a ``Sweep`` block: one start
(its first trial's), one summary (the death watcher's, once the sweep is quiet), nothing per
trial but what needs a human. With a block in the driver, the watcher says nothing.

Real processes on one state dir: SLURM array tasks (``SLURM_ARRAY_*`` in their environment)
each train a tiny loop with :class:`RunNotifier`, all started at once; the real death
watcher the first one starts; a real webhook channel to a loopback receiver, where exactly
what arrived is counted. The quiet time is 2 s here (``AFS_SWEEP_QUIET``; 60 s by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.delivery import deathwatch, sweep_claims
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox
from afs_callbacks.testing import LoopbackReceiver
from tests.helpers.hook import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

TRIAL = textwrap.dedent(
    """
    import sys
    from afs_callbacks.integrations.loop import RunNotifier

    class TrialPruned(Exception):  # what Optuna's pruners raise, by name
        pass

    kind, value = sys.argv[1], float(sys.argv[2])
    try:
        with RunNotifier(model_name="array-net", total_steps=5, monitors=False, chart=False,
                         stall_timeout=None) as run:
            for step in range(5):
                run.step(loss=value + 1.0 / (step + 1))
            run.epoch({"val_loss": value})
            if kind == "crash":
                raise RuntimeError("the data loader broke")
            if kind == "prune":
                raise TrialPruned("val_loss over the threshold")
    except (RuntimeError, TrialPruned):
        pass
    """
)

#: (kind, val_loss) of each array task: task 1 is the best; one pruned, one crashed.
TASKS = [("done", 0.3), ("done", 0.1), ("prune", 0.5), ("crash", 0.9)]


@pytest.fixture
def trial_env(watch_env: dict[str, str]) -> dict[str, str]:
    """What the trials (and so their death watcher) get: a watched run's environment
    with a short quiet, and this checkout importable."""
    return {
        **watch_env,
        "AFS_SWEEP_QUIET": "2",
        "AFS_BURST": "0",
        "DESKTOP_NOTIFICATIONS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), watch_env.get("PYTHONPATH")) if p),
    }


def bodies(receiver: LoopbackReceiver) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in receiver.requests]


def titles(receiver: LoopbackReceiver) -> list[str]:
    return sorted(body["title"] for body in bodies(receiver))


def start_trials(env: dict[str, str], job: str, **extra: str) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", TRIAL, kind, str(value)],
            env={**env, "SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": str(task), **extra},
            stderr=subprocess.PIPE,
            text=True,
        )
        for task, (kind, value) in enumerate(TASKS)
    ]


def finish(trials: list[subprocess.Popen[str]]) -> None:
    for trial in trials:
        _, err = trial.communicate(timeout=120)
        assert trial.returncode == 0, err[-3000:]


def test_array_tasks_make_one_start_and_one_summary_from_the_watcher(
    trial_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    finish(start_trials(trial_env, "777"))
    summary_title = "Sweep finished with failures: slurm-777"
    wait_until(lambda: summary_title in titles(receiver), 60, "the watcher's summary of the quiet sweep")
    # The watcher lingers till the summary, then leaves; whatever else it would send is sent.
    wait_until(lambda: not deathwatch.watcher_alive(), 30, "the watcher to leave")
    pushed = bodies(receiver)
    assert titles(receiver) == sorted(
        ["Sweep started: slurm-777", "❌ Training failed: array-net", summary_title]
    ), [body["title"] for body in pushed]
    (start,) = [body for body in pushed if body["title"].startswith("Sweep started")]
    assert "SLURM array job slurm-777, seen from its first trial" in start["message"]
    (crash,) = [body for body in pushed if "failed: array-net" in body["title"]]
    assert "Trial 3 of sweep slurm-777" in crash["message"]  # the pushed trial message names it
    (summary,) = [body for body in pushed if body["title"] == summary_title]
    context = summary["context"]
    assert (context["trials"], context["pruned"], context["failed"]) == (4, 1, 1)
    assert context["best"] == {"val_loss": 0.1, "trial": "1"}
    assert "4 trials in" in summary["message"] and "Best val_loss: 0.1 (trial 1)" in summary["message"]
    assert sweep_claims.open_claims(str(isolated_env)) == []


def test_the_watcher_leaves_a_sweep_whose_state_dir_was_deleted(
    trial_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    """The watcher keeps the sweep's live card while it waits for the summary. Once the
    state dir is gone (a test's temp folder, a run folder cleaned up), nothing is left to
    report into and the watcher leaves instead of staying for ever. (It stayed when the
    card registered the watcher with itself; whether that registration had landed before
    the folder went is a matter of milliseconds here, so the rule itself has a test of its
    own: test_watcher_per_user's ``only_a_run_of_this_process_registers``.)"""
    finish(start_trials({**trial_env, "AFS_SWEEP_QUIET": "600"}, "555"))

    def card_shown() -> bool:
        states = Outbox(str(isolated_env / OUTBOX_FILE)).runs(limit=None)
        return any(state.run_id == "slurm-555" for state in states)

    wait_until(card_shown, 30, "the sweep's card, stored by the watcher")
    assert deathwatch.watcher_alive()  # waiting for the summary, 600 s of quiet away
    shutil.rmtree(isolated_env)
    wait_until(lambda: not deathwatch.watcher_alive(), 30, "the watcher to leave")
    assert titles(receiver) == sorted(["Sweep started: slurm-555", "❌ Training failed: array-net"])


def test_a_later_trial_after_the_summary_opens_a_new_sweep_of_that_name(
    trial_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    """Quiet for longer than the quiet time means over: a trial after that is a new sweep
    (a W&B agent started the next morning), announced and summarised again."""
    first = subprocess.run(
        [sys.executable, "-c", TRIAL, "done", "0.4"],
        env={**trial_env, "AFS_SWEEP": "agent-sweep"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    wait_until(lambda: "Sweep finished: agent-sweep" in titles(receiver), 60, "the first summary")
    second = subprocess.run(
        [sys.executable, "-c", TRIAL, "done", "0.2"],
        env={**trial_env, "AFS_SWEEP": "agent-sweep"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    wait_until(lambda: titles(receiver).count("Sweep finished: agent-sweep") == 2, 60, "the second summary")
    wait_until(lambda: not deathwatch.watcher_alive(), 30, "the watcher to leave")
    assert titles(receiver) == ["Sweep finished: agent-sweep"] * 2 + ["Sweep started: agent-sweep"] * 2
    summaries = [body for body in bodies(receiver) if body["title"].startswith("Sweep finished")]
    assert [body["context"]["trials"] for body in summaries] == [1, 1]
    assert [body["context"]["best"]["val_loss"] for body in summaries] == [0.4, 0.2]


DRIVER = textwrap.dedent(
    """
    import subprocess, sys
    from afs_callbacks import Sweep

    with Sweep("blk-sweep"):  # its trials inherit AFS_SWEEP=blk-sweep
        trials = [subprocess.Popen([sys.executable, "-c", sys.argv[1], "done", str(v)])
                  for v in (0.3, 0.2, 0.4)]
        assert all(trial.wait() == 0 for trial in trials)
    """
)


def test_with_a_block_in_the_driver_the_watcher_says_nothing(
    trial_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, TRIAL], env=trial_env, capture_output=True, text=True, timeout=180
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert titles(receiver) == ["Sweep finished: blk-sweep", "Sweep started: blk-sweep"]  # sent before exit
    # The trials' watcher had its quiet seconds and more before leaving: it said nothing.
    wait_until(lambda: not deathwatch.watcher_alive(), 30, "the watcher to leave")
    assert titles(receiver) == ["Sweep finished: blk-sweep", "Sweep started: blk-sweep"]
    (summary,) = [body for body in bodies(receiver) if body["title"].startswith("Sweep finished")]
    assert summary["context"]["trials"] == 3 and summary["context"]["best"]["val_loss"] == 0.2


RAY_SWEEP = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    def trainable(config):
        from afs_callbacks.integrations.loop import RunNotifier
        with RunNotifier(model_name="asha-net", total_steps=10, monitors=False, chart=False,
                         stall_timeout=None, nan_check_every=1) as run:
            for step in range(10):
                run.step(loss=config["lr"])
                run.epoch({"val_loss": config["lr"]})
                tune.report({"loss": config["lr"]})
                time.sleep(0.1)

    ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False)
    scheduler = ASHAScheduler(metric="loss", mode="min", max_t=10, grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])},
                       tune_config=tune.TuneConfig(scheduler=scheduler),
                       run_config=tune.RunConfig(name="asha-study", storage_path=sys.argv[1], verbose=0))
    results = tuner.fit()
    print(json.dumps({r.metrics["trial_id"]: r.metrics["training_iteration"] for r in results}), flush=True)
    ray.shutdown()
    """
)


def test_a_ray_tune_sweep_without_a_block_makes_one_start_and_one_summary(
    trial_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path, tmp_path: Path
) -> None:
    """Six Ray Tune trials, ASHA stopping the worse ones early, no ``Sweep`` in the driver:
    at the channel one start and one summary (pruned counted, the best trial's ``lr``), and
    no trial's start or end."""
    pytest.importorskip("ray.tune")
    from tests.integrations.test_end_survives_exit import RAY_ENV

    driver = subprocess.run(
        [sys.executable, "-c", RAY_SWEEP, str(tmp_path / "ray")],
        # Ray starts the next trials' processes a few seconds after the first ones end on
        # a busy machine: a quiet time shorter than that would end the sweep in between.
        env={**trial_env, **RAY_ENV, "AFS_SWEEP_QUIET": "10"},
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    iterations = json.loads(driver.stdout.strip().splitlines()[-1])
    stopped = {trial for trial, count in iterations.items() if count < 10}
    assert len(iterations) == 6 and stopped, iterations
    wait_until(lambda: "Sweep finished: asha-study" in titles(receiver), 90, "the watcher's summary")
    wait_until(lambda: not deathwatch.watcher_alive(), 30, "the watcher to leave")
    assert titles(receiver) == ["Sweep finished: asha-study", "Sweep started: asha-study"]
    (summary,) = [body for body in bodies(receiver) if body["title"].startswith("Sweep finished")]
    context = summary["context"]
    assert (context["trials"], context["pruned"], context["failed"]) == (6, len(stopped), 0)
    assert context["best"]["val_loss"] == 0.1 and context["best_params"] == {"lr": 0.1}


def test_the_sweep_has_one_live_card_updated_as_trials_end_and_finished_with_the_summary(
    trial_env: dict[str, str], isolated_env: Path
) -> None:
    """Telegram keeps live cards: besides each trial's own card, the watcher posts one card
    for the sweep, edits it as trials end, and finishes it with the summary's counts and
    the best trial."""
    from tests.cards.conftest import TELEGRAM_TOKEN
    from tests.cards.services import FakeTelegram

    with FakeTelegram(TELEGRAM_TOKEN) as bot_api:
        env = {
            **{k: v for k, v in trial_env.items() if k != "WEBHOOK_URL"},
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "TELEGRAM_CHAT_ID": "-1001234567890",
            "TELEGRAM_API_URL": bot_api.url(""),
            "AFS_CARD_INTERVAL": "0",
        }
        finish(start_trials(env, "888"))

        def sweep_cards() -> list[dict[str, Any]]:
            return [m for m in list(bot_api.messages.values()) if "Sweep slurm-888 ·" in m["text"]]

        wait_until(lambda: any("completed" in m["text"] for m in sweep_cards()), 60, "the finished card")
        wait_until(lambda: not deathwatch.watcher_alive(), 30, "the watcher to leave")
        (card,) = sweep_cards()  # one card for the sweep, edited in place
        text = card["text"]
        assert "Sweep slurm-888 · completed with warnings" in text, text
        assert "4 ended (1 pruned, 1 failed)" in text and "4 trials in" in text, text
        assert "val_loss 0.1, trial 1" in text, text
        posted = [call.json()["text"] for call in bot_api.calls("sendMessage")]
        assert sum("Sweep slurm-888 ·" in posted_text for posted_text in posted) == 1
        assert sum("Sweep started: slurm-888" in posted_text for posted_text in posted) == 1
        assert sum("Sweep finished with failures: slurm-888" in posted_text for posted_text in posted) == 1
