"""The series of a run state and of the outbox's channels, read back with
prometheus_client's own parser (what Prometheus reads)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from afs_callbacks.delivery.outbox import ChannelHealth
from afs_callbacks.outcome import Outcome
from afs_callbacks.prometheus.families import (
    Fixed,
    RunSample,
    outbox_families,
    run_families,
    slurm_job,
    status_labels,
)
from afs_callbacks.runstate import RunState


def samples(families: list) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(Fixed(families)).decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


LIVE = RunState(
    run_id="r/1 x",
    model="bert",
    host="gpu-7",
    status="running",
    started_at=100.0,
    updated_at=190.0,
    last_step_at=180.0,
    epoch=1,
    total_epochs=4,
    step=250,
    total_steps=1000,
    steps_per_second=12.5,
    samples_per_second=400.0,
    eta_seconds=60.0,
    metrics={"loss": 0.5, "val_loss": float("nan"), "flag": True},
    monitor="val_loss",
    best=0.4,
    peak_gpu_memory=2.0**33,
    extra={"slurm_array_job_id": "900", "slurm_array_task_id": "3", "slurm_job_id": "903"},
)


def test_a_live_run_has_every_gauge_under_its_stable_labels() -> None:
    found = samples(run_families([RunSample(LIVE, heartbeat=195.0)]))
    labels = {"run_id": "r/1 x", "model": "bert", "host": "gpu-7"}
    ((info, value),) = found["afs_run_info"]
    assert value == 1 and info == {**labels, "status": "running", "outcome": "", "slurm_job": "900_3"}
    expected = {
        "afs_run_step": 250,
        "afs_run_planned_steps": 1000,
        "afs_run_epoch": 1,
        "afs_run_planned_epochs": 4,
        "afs_run_progress_ratio": 0.25,
        "afs_run_steps_per_second": 12.5,
        "afs_run_samples_per_second": 400,
        "afs_run_eta_seconds": 60,
        "afs_run_started_timestamp_seconds": 100,
        "afs_run_last_step_timestamp_seconds": 180,
        "afs_run_heartbeat_timestamp_seconds": 195,
        "afs_run_gpu_memory_peak_bytes": 2.0**33,
    }
    for name, number in expected.items():
        assert found[name] == [(labels, number)], name
    assert "afs_run_ended_timestamp_seconds" not in found
    metrics = {sample["metric"]: value for sample, value in found["afs_run_metric"]}
    assert metrics["loss"] == 0.5 and math.isnan(metrics["val_loss"]) and "flag" not in metrics
    ((monitor, value),) = found["afs_run_monitor_value"]
    assert monitor["metric"] == "val_loss" and math.isnan(value)
    assert found["afs_run_monitor_best"] == [({**labels, "metric": "val_loss"}, 0.4)]


@pytest.mark.parametrize("outcome", list(Outcome))
def test_an_ended_run_says_its_outcome_and_has_no_heartbeat(outcome: Outcome) -> None:
    state = RunState(run_id="r", model="m", host="h", status=outcome.value, ended_at=300.0, updated_at=300.0)
    found = samples(run_families([RunSample(state, heartbeat=301.0)]))
    ((info, _),) = found["afs_run_info"]
    assert (info["status"], info["outcome"]) == ("ended", outcome.value)
    assert "afs_run_heartbeat_timestamp_seconds" not in found
    assert found["afs_run_ended_timestamp_seconds"][0][1] == 300


def test_status_labels_and_slurm_job() -> None:
    assert status_labels("stalled") == ("stalled", "")
    assert status_labels("COMPLETED") == ("ended", "completed")
    assert status_labels("vanished_somehow") == ("ended", "vanished_somehow")
    assert slurm_job({"slurm_job_id": 42}) == "42"
    assert slurm_job({}) == ""


def test_a_state_stored_before_last_step_at_falls_back_to_its_snapshot_time() -> None:
    old = RunState(run_id="r", model="m", status="running", updated_at=50.0)
    assert samples(run_families([RunSample(old)]))["afs_run_last_step_timestamp_seconds"][0][1] == 50


def test_channels_have_every_state_and_their_times() -> None:
    health = [
        ChannelHealth("slack", {"delivered": 7, "dead": 1}, retrying=0, last_delivered=10.0, last_dead=9.0),
        ChannelHealth("webhook", {"pending": 3}, retrying=2, failing_since=5.0),
    ]
    found = samples(outbox_families("/state", health))
    assert found["afs_outbox_up"] == [({"store": "/state"}, 1)]
    counts = {(labels["channel"], labels["state"]): value for labels, value in found["afs_outbox_deliveries"]}
    assert counts[("slack", "delivered")] == 7 and counts[("slack", "pending")] == 0
    assert counts[("webhook", "pending")] == 3 and len(counts) == 12
    retrying = {labels["channel"]: value for labels, value in found["afs_outbox_retrying"]}
    assert retrying == {"slack": 0, "webhook": 2}
    assert found["afs_outbox_failing_since_timestamp_seconds"] == [
        ({"store": "/state", "channel": "webhook"}, 5)
    ]
    assert [v for _, v in found["afs_outbox_last_dead_timestamp_seconds"]] == [9]


def test_an_unreadable_outbox_says_so() -> None:
    found = samples(outbox_families("/state", None))
    assert found["afs_outbox_up"] == [({"store": "/state"}, 0)]
    assert "afs_outbox_deliveries" not in found
