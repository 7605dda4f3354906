"""A run's end is stored the moment it ends, whatever happens to the process next.

Launchers end the process right after the training function returns: Ray Tune's trial
workers, a multiprocessing worker, ``os._exit``. Real processes here: a child trains a tiny
loop with :class:`RunNotifier` (chart on) and calls ``os._exit(0)`` at once; the end must
reach a real webhook channel on a loopback receiver (sent by the death watcher the child
started, since the child is gone), once, with no "killed without a word". With Ray Tune
(``ray[tune]``, a local cluster on loopback, no dashboard) 8 trials each report their end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.delivery import deathwatch
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.outcome import Outcome
from afs_callbacks.testing import LoopbackReceiver

pytestmark = pytest.mark.slow

EXITING_CHILD = """
import os, sys
from afs_callbacks.integrations.loop import RunNotifier
with RunNotifier(model_name="exit-net", run_id=sys.argv[1], total_steps=30, monitors=False,
                 stall_timeout=None, nan_check_every=5) as run:
    for step in range(30):
        run.step(loss=1.0 / (step + 1))
    run.epoch({"val_loss": 0.25})
os._exit(0)  # what a launcher does right after the training function returns
"""


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def bodies(receiver: LoopbackReceiver) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in receiver.requests]


def of_type(receiver: LoopbackReceiver, kind: str) -> list[dict[str, Any]]:
    return [body for body in bodies(receiver) if body.get("event_type") == kind]


def once_each(receiver: LoopbackReceiver, kind: str) -> list[dict[str, Any]]:
    """The bodies of ``kind``, one per ``webhook-id``, as a receiver that deduplicates keeps
    them. Delivery is at-least-once (docs/delivery.md): a launcher that ends a trial's
    process between a POST and its record gets the message sent again, under the same id.
    Two events of one kind for one run would still show: they have two ids."""
    kept: dict[str, dict[str, Any]] = {}
    for request in receiver.requests:
        body = json.loads(request.body)
        if body.get("event_type") == kind:
            headers = {name.lower(): value for name, value in request.headers.items()}
            kept.setdefault(headers["webhook-id"], body)
    return list(kept.values())


def killed(receiver: LoopbackReceiver) -> list[dict[str, Any]]:
    return [body for body in bodies(receiver) if "killed without a word" in json.dumps(body)]


@pytest.fixture
def child_env(isolated_env: Path, receiver: LoopbackReceiver) -> Iterator[dict[str, str]]:
    """What the children (and so their death watcher) get; the watcher is killed afterwards."""
    env = dict(os.environ)
    env.update(
        WEBHOOK_URL=receiver.url("/hook"),
        AFS_STATE_DIR=str(isolated_env),
        AFS_DEATHWATCH_INTERVAL="0.2",
        AFS_DEATHWATCH_GRACE="20",  # outlives the end's wait for its chart
        AFS_BURST="0",
        PYTHONPATH=os.pathsep.join(p for p in (str(Path(__file__).parents[2]), env.get("PYTHONPATH")) if p),
    )
    isolated_env.mkdir(parents=True, exist_ok=True)
    yield env
    pid = deathwatch.watcher_pid()
    if pid is not None and pid > 0:
        os.kill(pid, signal.SIGKILL)


def test_os_exit_right_after_training_keeps_the_end(
    child_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    pytest.importorskip("matplotlib")
    child = subprocess.run(
        [sys.executable, "-c", EXITING_CHILD, "exit-run"], env=child_env, timeout=120, capture_output=True
    )
    assert child.returncode == 0, child.stderr.decode()
    # Stored before the process went: in the history at once, whatever was sent.
    with Outbox(isolated_env / "outbox.sqlite3") as outbox:
        ends = outbox.history(run_id="exit-run", event_type=["training_completed"])
    assert len(ends) == 1
    wait_until(lambda: len(of_type(receiver, "training_completed")) >= 1)
    (end,) = of_type(receiver, "training_completed")
    assert end["context"]["run_id"] == "exit-run"
    assert end["attachments"] == []  # the process died before its chart was drawn
    assert killed(receiver) == []
    assert len(of_type(receiver, "training_started")) == 1


RAY_DRIVER = """
import sys
import ray
from ray import tune

def trainable(config):
    from afs_callbacks.integrations.loop import RunNotifier
    with RunNotifier(model_name="ray-net", total_steps=20, monitors=False, stall_timeout=None,
                     nan_check_every=5) as run:
        for step in range(20):
            run.step(loss=config["lr"] / (step + 1))
        run.epoch({"val_loss": config["lr"]})
    tune.report({"val_loss": config["lr"]})

from afs_callbacks import Sweep
with Sweep("ray-sweep"):  # before ray.init: the workers inherit AFS_SWEEP
    ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False)
    tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([0.1 * i for i in range(1, 9)])},
                       run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0))
    results = tuner.fit()
print("trials", len(results), "errors", len(results.errors), flush=True)
ray.shutdown()
"""

#: Ray without its dashboard, usage reports or log forwarding: a local cluster on loopback.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "RAY_DEDUP_LOGS": "0"}


def test_ray_tune_trials_all_report_their_end_with_the_chart_on(
    child_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path, tmp_path: Path
) -> None:
    """Ray ends a trial's process right after the trainable returns: 8 trials, 8 ends at
    the channel, none taken for a death (before: 0 of 8 ends stored, 1 false death notice).
    ``AFS_VERBOSITY=verbose`` keeps the trials' pushes; each names its trial and ``lr``; the
    sweep's summary counts the 8."""
    pytest.importorskip("ray.tune")
    pytest.importorskip("matplotlib")
    driver = subprocess.run(
        [sys.executable, "-c", RAY_DRIVER, str(tmp_path / "ray")],
        env={**child_env, **RAY_ENV, "AFS_VERBOSITY": "verbose"},
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert "trials 8 errors 0" in driver.stdout, driver.stderr[-3000:]
    with Outbox(isolated_env / "outbox.sqlite3") as outbox:
        ends = outbox.history(event_type=["training_completed"], limit=100)
    assert len({entry.event.run_id for entry in ends if entry.event.context.get("trial")}) == 8
    wait_until(lambda: len(of_type(receiver, "training_completed")) >= 8, timeout=60)
    received = [body for body in once_each(receiver, "training_completed") if body["context"].get("trial")]
    assert len({body["context"]["run_id"] for body in received}) == 8
    assert len(received) == 8  # no end twice
    assert killed(receiver) == []
    starts = [body for body in once_each(receiver, "training_started") if body["context"].get("trial")]
    assert len(starts) == 8
    for body in starts + received:
        assert body["context"]["sweep"] == "ray-sweep" and "lr" in body["context"]["trial_params"]
        assert "of sweep ray-sweep: lr=" in body["message"]
    wait_until(lambda: any(b["title"] == "Sweep finished: ray-sweep" for b in bodies(receiver)))
    (summary,) = [b for b in bodies(receiver) if b["title"] == "Sweep finished: ray-sweep"]
    assert summary["context"]["trials"] == 8 and summary["context"]["failed"] == 0


RAY_ASHA_DRIVER = """
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
            tune.report({"loss": config["lr"]})
            time.sleep(0.1)

ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False)
scheduler = ASHAScheduler(metric="loss", mode="min", max_t=10, grace_period=1, reduction_factor=2)
tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])},
                   tune_config=tune.TuneConfig(scheduler=scheduler),
                   run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0))
results = tuner.fit()
print(json.dumps({r.metrics["trial_id"]: r.metrics["training_iteration"] for r in results}), flush=True)
ray.shutdown()
"""


def test_ray_tune_scheduler_stops_are_pruned_not_failed_nor_killed(
    child_env: dict[str, str], receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    """ASHA stops the worse trials early; Ray then ends their processes at once. Each of
    those is reported pruned (stored before the process went), the others completed; no
    "failed", no "killed without a word"."""
    pytest.importorskip("ray.tune")
    driver = subprocess.run(
        [sys.executable, "-c", RAY_ASHA_DRIVER, str(tmp_path / "ray")],
        env={**child_env, **RAY_ENV, "AFS_VERBOSITY": "verbose"},
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    iterations = json.loads(driver.stdout.strip().splitlines()[-1])
    stopped = {trial for trial, count in iterations.items() if count < 10}
    assert len(iterations) == 6 and stopped, iterations  # ASHA stopped some early
    wait_until(lambda: len(of_type(receiver, "training_completed")) >= 6, timeout=60)
    ends = {body["context"]["trial"]: body for body in of_type(receiver, "training_completed")}
    assert set(ends) == set(iterations)
    for trial, body in ends.items():
        expected = (Outcome.PRUNED if trial in stopped else Outcome.COMPLETED).value
        assert body["context"].get("outcome") == expected, (trial, iterations[trial], body["title"])
    assert of_type(receiver, "training_failed") == []
    assert killed(receiver) == []
