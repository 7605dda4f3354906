"""Cost monitor: accrual from an hourly price on a fake clock, thresholds each alerted once,
configuration from the environment, and the run-level helpers that start every monitor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from afs_callbacks import EventType, NotificationEvent
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.monitors import (
    CostMonitor,
    GPUMonitor,
    Monitors,
    MonitorSummary,
    SystemMonitor,
    monitors_from_env,
    start_monitors,
)
from afs_callbacks.monitors._poller import Hysteresis
from afs_callbacks.monitors.cost import thresholds_from_env
from afs_callbacks.monitors.gpu import MemoryPeak
from afs_callbacks.testing import CapturingHandler, capturing_manager
from tests.monitors.fake_nvml import GIB, FakeGPU, FakeNVML

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, hours: float) -> None:
        self.now += hours * HOUR


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[tuple[NotificationManager, CapturingHandler]]:
    manager, handler = capturing_manager(tmp_path / "outbox")
    yield manager, handler
    manager.close(timeout=1)


def alerts(captured: tuple[NotificationManager, CapturingHandler]) -> list[NotificationEvent]:
    manager, handler = captured
    assert manager.flush(5).pending == 0
    return [event for event in handler.events if event.event_type == EventType.COST_THRESHOLD]


def env_of(**values: str) -> Env:
    return Env(values, env_file=False)


# Accrual and thresholds ----------------------------------------------------------------


def test_each_threshold_alerts_once_as_cost_accrues(captured) -> None:
    clock = Clock()
    cost = CostMonitor(captured[0], hourly_cost=4.0, thresholds=[10, 25], clock=clock, model="gpt-mini")
    cost.poll_once()  # the clock starts
    for hours in (1, 1, 0.6, 0.1, 2, 2.5):  # 4, 8, 10.4, 10.8, 18.8, 28.8
        clock.advance(hours)
        cost.poll_once()
    sent = alerts(captured)
    assert [(a.context["threshold"], round(a.context["cost"], 2)) for a in sent] == [(10, 10.4), (25, 28.8)]
    assert sent[0].title == "Cost alert for gpt-mini: $10.40"
    assert sent[0].context["hourly_rate"] == 4.0
    assert sent[0].context["duration"] == pytest.approx(2.6 * HOUR)
    assert cost.current_cost() == pytest.approx(28.8)
    clock.advance(10)
    cost.poll_once()
    assert len(alerts(captured)) == 2


def test_thresholds_passed_at_once_are_one_alert_for_the_highest(captured) -> None:
    clock = Clock()
    cost = CostMonitor(captured[0], hourly_cost=10.0, thresholds=[5, 50, 20], clock=clock)
    cost.poll_once()
    clock.advance(3)  # a suspended machine wakes up: $30 passes 5 and 20
    cost.poll_once()
    assert [a.context["threshold"] for a in alerts(captured)] == [20]
    assert cost.status().reason == "$30.00 so far at $10.00/h, alerts at 50"


def test_per_gpu_price_times_the_gpu_count(captured) -> None:
    clock = Clock()
    cost = CostMonitor(captured[0], per_gpu_hourly=2.5, gpu_count=8, clock=clock)
    cost.poll_once()
    clock.advance(0.5)
    assert cost.hourly_rate == 20.0
    assert cost.current_cost() == pytest.approx(10.0)


def test_gpu_count_may_be_known_only_later(captured) -> None:
    clock = Clock()
    known: list[int] = []
    cost = CostMonitor(
        captured[0], per_gpu_hourly=3.0, gpu_count=lambda: known[0] if known else None, clock=clock
    )
    cost.poll_once()
    clock.advance(1)
    assert cost.current_cost() == 0.0
    known.append(2)
    assert cost.current_cost() == pytest.approx(6.0)


def test_stop_freezes_the_bill_and_state_carries_it_to_a_resumed_run(captured) -> None:
    clock = Clock()
    cost = CostMonitor(captured[0], hourly_cost=6.0, thresholds=[5], clock=clock)
    cost.start()
    clock.advance(1)
    cost.poll_once()
    cost.stop()
    clock.advance(5)  # time after the run is not billed
    assert cost.current_cost() == pytest.approx(6.0)
    state = cost.state_dict()
    resumed = CostMonitor(captured[0], hourly_cost=6.0, thresholds=[5, 10], clock=clock)
    resumed.load_state_dict(state)
    resumed.poll_once()
    clock.advance(0.5)
    resumed.poll_once()
    assert resumed.current_cost() == pytest.approx(9.0)
    clock.advance(0.25)
    resumed.poll_once()
    assert [a.context["threshold"] for a in alerts(captured)] == [5, 10]  # 5 not repeated


def test_the_thread_wakes_at_the_threshold(captured) -> None:
    """With a real clock a $36,000/h price passes $10 after 1 s; the thread, waiting at most
    its 30 s interval, wakes when the threshold is due."""
    with CostMonitor(captured[0], hourly_cost=36_000.0, thresholds=[10]) as cost:
        captured[1].wait_for(lambda e: e.event_type == EventType.COST_THRESHOLD)
    assert cost.current_cost() >= 10


def test_manual_cost_alert_stays_available(captured) -> None:
    captured[0].notify_cost_alert(12.5, 10.0, model_name="m")
    assert [a.context["cost"] for a in alerts(captured)] == [12.5]


@pytest.mark.parametrize(
    "options, problem",
    [
        ({}, "needs hourly_cost or per_gpu_hourly"),
        ({"hourly_cost": -1.0}, "CostMonitor(hourly_cost=-1.0): must be a price >= 0"),
        ({"hourly_cost": 1.0, "thresholds": [0]}, "every threshold must be > 0"),
        ({"hourly_cost": 1.0, "interval": 0}, "CostMonitor(interval=0)"),
    ],
)
def test_bad_arguments_are_refused(captured, options, problem) -> None:
    with pytest.raises(ConfigurationError) as error:
        CostMonitor(captured[0], **options)
    assert problem in str(error.value)


# Configuration ------------------------------------------------------------------------


def test_any_number_of_numbered_thresholds_and_the_seed_single_one() -> None:
    env = env_of(
        COST_ALERT_THRESHOLD="5",
        COST_ALERT_THRESHOLD_1="100",
        COST_ALERT_THRESHOLD_2="50",
        COST_ALERT_THRESHOLD_12="1000",
        COST_ALERT_THRESHOLD_3="",  # blank: ignored
        COST_ALERT_THRESHOLDS="7",  # not one of the names
    )
    assert thresholds_from_env(env) == [5, 50, 100, 1000]
    with pytest.raises(ConfigurationError, match="COST_ALERT_THRESHOLD_2: must be a number"):
        thresholds_from_env(env_of(COST_ALERT_THRESHOLD_2="ten"))
    with pytest.raises(ConfigurationError, match="COST_ALERT_THRESHOLD: must be > 0"):
        thresholds_from_env(env_of(COST_ALERT_THRESHOLD="0"))


def test_from_env(captured) -> None:
    assert CostMonitor.from_env(captured[0], env_of(COST_ALERT_THRESHOLD_1="5")) is None  # no price
    cost = CostMonitor.from_env(
        captured[0], env_of(AFS_GPU_HOURLY_COST="2", AFS_GPU_COUNT="4", COST_ALERT_THRESHOLD_1="5")
    )
    assert cost is not None and cost.hourly_rate == 8.0 and cost.thresholds == [5.0]
    overridden = CostMonitor.from_env(
        captured[0], env_of(AFS_GPU_HOURLY_COST="2", AFS_GPU_COUNT="4"), gpu_count=16
    )
    assert overridden is not None and overridden.hourly_rate == 32.0
    with pytest.raises(ConfigurationError, match="AFS_HOURLY_COST: must be at least 0"):
        CostMonitor.from_env(captured[0], env_of(AFS_HOURLY_COST="-3"))


# The run-level helpers -----------------------------------------------------------------


def test_start_monitors_builds_all_three_from_the_environment(captured, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # no NVML: the GPU says why
    env = env_of(AFS_HOURLY_COST="3.5", COST_ALERT_THRESHOLD_1="100", AFS_SYSTEM_MONITOR_INTERVAL="60")
    monitors = start_monitors(captured[0], env, paths=[tmp_path], run_id="r1", model="m")
    try:
        assert isinstance(monitors.gpu, GPUMonitor)
        assert isinstance(monitors.system, SystemMonitor) and monitors.system.paths == [tmp_path]
        assert isinstance(monitors.cost, CostMonitor)
        assert monitors.cost.context == {"run_id": "r1", "model": "m"}
        assert monitors.system.running
    finally:
        monitors.stop()
    assert not any(m.running for m in monitors)
    summary = monitors.summary()
    assert summary.cost is not None and summary.hourly_rate == 3.5
    repo = Path(__file__).resolve().parents[2]
    assert summary.gpu_status == f"no GPU stats: nvidia-ml-py is not installed: pip install -e '{repo}[gpu]'"
    assert set(summary.to_dict()) == {"cost", "hourly_rate", "cost_elapsed_s"}
    assert [s.name for s in monitors.status()] == ["gpu", "system", "cost"]


@pytest.mark.parametrize(
    "value, names",
    [("none", []), ("off", []), ("gpu", ["gpu"]), ("system, cost", ["system"])],  # cost: no price
)
def test_afs_monitors_opts_out(captured, value, names) -> None:
    monitors = monitors_from_env(captured[0], env_of(AFS_MONITORS=value))
    assert [m.name for m in monitors] == names
    assert not any(m.running for m in monitors)  # built, not started


def test_a_bad_setting_skips_that_monitor_unless_strict(captured, tmp_path) -> None:
    env = env_of(AFS_MONITORS="gpu,system", GPU_MEMORY_WARNING_THRESHOLD="high")
    monitors = monitors_from_env(captured[0], env)
    assert monitors.gpu is None and monitors.system is not None
    assert "GPU_MEMORY_WARNING_THRESHOLD" in monitors.errors["gpu"]
    assert (
        monitors_from_env(captured[0], env_of(AFS_MONITORS="gpus"))
        .errors["monitors"]
        .startswith("AFS_MONITORS: unknown monitor(s) gpus")
    )
    strict, _ = capturing_manager(tmp_path / "strict", strict=True)
    with pytest.raises(ConfigurationError, match="GPU_MEMORY_WARNING_THRESHOLD"):
        monitors_from_env(strict, env)
    strict.close(timeout=0)


def test_per_gpu_cost_counts_the_gpus_the_gpu_monitor_found(captured, monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock = Clock()
    env = env_of(AFS_MONITORS="gpu,cost", AFS_GPU_HOURLY_COST="1.5")
    monitors = monitors_from_env(captured[0], env)
    assert monitors.gpu is not None and monitors.cost is not None
    monitors.gpu._nvml = FakeNVML([FakeGPU("GPU-1"), FakeGPU("GPU-2", used=60 * GIB)])
    monitors.cost._clock = clock
    monitors.cost.poll_once()
    monitors.gpu.poll_once()
    clock.advance(2)
    monitors.stop()
    summary = monitors.summary()
    assert summary.cost == pytest.approx(6.0)
    assert summary.peak_gpu_memory["GPU1"] == MemoryPeak(60 * GIB, 80 * GIB)
    assert summary.lines() == [
        "Peak GPU memory: GPU0 1.0 GiB of 80.0 GiB (1%); GPU1 60.0 GiB of 80.0 GiB (75%)",
        "Cost: $6.00 (2h 00m 00s at $3.00/h)",
    ]
    assert summary.to_dict()["peak_gpu_memory"]["GPU1"]["peak_fraction"] == 0.75


def test_afs_gpu_count_wins_over_the_local_gpu_count(captured) -> None:
    """Under multi-node DDP the run pays for more GPUs than this machine has."""
    env = env_of(AFS_MONITORS="gpu,cost", AFS_GPU_HOURLY_COST="1", AFS_GPU_COUNT="16")
    monitors = monitors_from_env(captured[0], env)
    assert monitors.cost is not None and monitors.cost.hourly_rate == 16.0
    assert monitors_from_env(captured[0], env, gpu_count=32).cost.hourly_rate == 32.0  # type: ignore[union-attr]


def test_an_empty_summary_and_an_empty_set() -> None:
    assert MonitorSummary().lines() == [] and MonitorSummary().to_dict() == {}
    empty = Monitors()
    with empty:
        pass
    assert empty.summary() == MonitorSummary()


@pytest.mark.parametrize(
    "readings, expected",
    [
        ([0.5, 0.9, 0.86, 0.9], [False, True, False, False]),
        ([0.9, 0.79, 0.9], [True, False, True]),
    ],
)
def test_hysteresis(readings, expected) -> None:
    guard = Hysteresis(0.85, 0.80)
    assert [guard.update(v) for v in readings] == expected
    falling = Hysteresis(10, 12, above=False)
    assert [falling.update(v) for v in (20, 9, 11, 5, 13, 10)] == [False, True, False, False, False, True]
    with pytest.raises(ValueError):
        Hysteresis(10, 12)
