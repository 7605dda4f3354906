"""GPU monitor: thresholds, hysteresis, device mapping and every NVML failure mode.

NVML needs an NVIDIA driver and GPU, which this machine lacks: the monitor is driven through
``fake_nvml.FakeNVML``, a stand-in implementing the pynvml calls it uses with pynvml's own
error classes. One test runs the real pynvml to check the "no driver" path for real.
Readings are taken with ``poll_once()``; one test runs the real thread.
"""

from __future__ import annotations

import logging
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.monitors import GPUMonitor
from afs_callbacks.monitors.gpu import parse_visible_devices
from afs_callbacks.testing import CapturingHandler, capturing_manager
from tests.monitors.fake_nvml import (
    CODES,
    ERROR_CLASSES,
    GIB,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNKNOWN,
    FakeGPU,
    FakeNVML,
    NVMLError,
)

UUID_A = "GPU-aaaa1111-0000-0000-0000-000000000000"
UUID_B = "GPU-bbbb2222-0000-0000-0000-000000000000"
UUID_C = "GPU-bbbb3333-0000-0000-0000-000000000000"
MIG = "MIG-cccc4444-0000-0000-0000-000000000000"


class Clock:
    """A hand-moved monotonic clock for the utilisation window."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[tuple[NotificationManager, CapturingHandler]]:
    """A manager without storm collapsing, so every alert the monitor raises arrives."""
    manager, handler = capturing_manager(tmp_path / "outbox", dedup_window=0)
    yield manager, handler
    manager.close(timeout=1)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[NotificationManager, CapturingHandler]]:
    """A manager with the default storm guard (repeats of a key within 60 s collapse)."""
    manager, handler = capturing_manager(tmp_path / "guarded")
    yield manager, handler
    manager.close(timeout=1)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNVML:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # standalone: every GPU
    return FakeNVML([FakeGPU(UUID_A), FakeGPU(UUID_B)])


def sent(captured: tuple[NotificationManager, CapturingHandler], kind: EventType) -> list[NotificationEvent]:
    """Events of ``kind`` delivered so far (after delivering everything pending)."""
    manager, handler = captured
    assert manager.flush(5).pending == 0
    return [event for event in handler.events if event.event_type == kind]


def monitor_for(captured, nvml, **options) -> GPUMonitor:  # type: ignore[no-untyped-def]
    return GPUMonitor(captured[0], nvml=nvml, util_floor=None, run_id="run-7", model="bert", **options)


# The stand-in itself ------------------------------------------------------------------


def test_fake_matches_pynvml() -> None:
    """The stand-in's error classes and codes are the installed pynvml's."""
    pynvml = pytest.importorskip("pynvml")
    for constant, code in CODES.items():
        assert getattr(pynvml, constant) == code, constant
    for name in ERROR_CLASSES:
        real = getattr(pynvml, name)
        assert issubclass(real, pynvml.NVMLError)
        assert pynvml.NVMLError(real().value).__class__ is real
    assert type(NVMLError(NVML_ERROR_NOT_SUPPORTED)).__name__ == "NVMLError_NotSupported"
    for function in ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature", "nvmlDeviceGetHandleByUUID"):
        assert callable(getattr(pynvml, function))


# Thresholds and hysteresis --------------------------------------------------------------


def test_memory_hovering_at_the_threshold_is_one_warning_until_it_falls_back(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml)
    gpu = nvml.devices[0]
    for fraction in (0.50, 0.86, 0.84, 0.87, 0.85, 0.86):  # hovering: never below 0.80
        gpu.use(fraction)
        monitor.poll_once()
    assert len(sent(captured, EventType.GPU_MEMORY)) == 1
    for fraction in (0.79, 0.88):  # fell back past the margin, then crossed again
        gpu.use(fraction)
        monitor.poll_once()
    alerts = sent(captured, EventType.GPU_MEMORY)
    assert [a.level for a in alerts] == [NotificationLevel.WARNING] * 2
    first = alerts[0]
    assert first.context["device"] == "GPU0"
    assert first.context["gpu_uuid"] == UUID_A
    assert first.context["run_id"] == "run-7" and first.context["model"] == "bert"
    assert first.context["limit"] == 0.85
    assert first.metrics["memory_percent"] == 86.0
    assert first.metrics["memory_total_gib"] == 80.0
    assert first.title == "GPU0 memory at 86%"


def test_critical_is_not_swallowed_by_the_warning_before_it(guarded, nvml) -> None:
    monitor = monitor_for(guarded, nvml)
    for fraction in (0.90, 0.98, 0.99):
        nvml.devices[0].use(fraction)
        monitor.poll_once()
    levels = [a.level for a in sent(guarded, EventType.GPU_MEMORY)]
    assert levels == [NotificationLevel.WARNING, NotificationLevel.CRITICAL]


def test_a_jump_straight_past_critical_is_one_critical_alert(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml)
    for fraction in (0.2, 0.985, 0.90, 0.98):  # 0.90 is below 0.97 - 0.05: critical re-arms
        nvml.devices[1].use(fraction)
        monitor.poll_once()
    alerts = sent(captured, EventType.GPU_MEMORY)
    assert [a.level for a in alerts] == [NotificationLevel.CRITICAL] * 2
    assert {a.context["device"] for a in alerts} == {"GPU1"}
    assert "out-of-memory error is close" in alerts[0].message


def test_devices_alert_independently(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml)
    for gpu in nvml.devices:
        gpu.use(0.9)
    monitor.poll_once()
    alerts = sent(captured, EventType.GPU_MEMORY)
    assert sorted(a.context["device"] for a in alerts) == ["GPU0", "GPU1"]
    assert len({a.key for a in alerts}) == 2


def test_peak_memory_is_kept_per_device_after_stop(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml)
    for fraction in (0.25, 0.5, 0.3):
        nvml.devices[0].use(fraction)
        monitor.poll_once()
    monitor.stop()
    peak = monitor.peaks["GPU0"]
    assert peak.used == 40 * GIB and peak.total == 80 * GIB
    assert peak.describe() == "40.0 GiB of 80.0 GiB (50%)"
    assert monitor.summary()["GPU0"] == {
        "peak_bytes": 40 * GIB,
        "total_bytes": 80 * GIB,
        "peak_fraction": 0.5,
    }
    assert monitor.peaks["GPU1"].used == 1 * GIB
    assert monitor.readings["GPU0"].power == 250.0


def test_sustained_low_utilisation_alerts_once_per_starved_stretch(captured, nvml) -> None:
    clock = Clock()
    monitor = GPUMonitor(captured[0], nvml=nvml, util_floor=10, util_window=300, clock=clock)
    gpu = nvml.devices[0]

    def at(seconds: float, utilization: int) -> None:
        clock.now = 1000.0 + seconds
        gpu.utilization = utilization
        monitor.poll_once()

    at(0, 3)
    at(200, 2)
    at(250, 60)  # a busy reading resets the stretch
    at(300, 4)
    at(550, 4)  # 250 s low: not yet
    assert sent(captured, EventType.GPU_UTILIZATION) == []
    at(600, 5)  # 300 s low
    at(900, 1)  # still the same stretch: no repeat
    at(950, 12)  # above the floor but within the margin: not re-armed
    at(1300, 2)
    at(1700, 2)
    assert len(sent(captured, EventType.GPU_UTILIZATION)) == 1
    at(1800, 50)  # busy again: re-armed
    at(1900, 0)
    at(2200, 0)
    alerts = sent(captured, EventType.GPU_UTILIZATION)
    assert len(alerts) == 2
    assert alerts[0].context["device"] == "GPU0" and alerts[0].context["limit"] == 10
    assert "below 10% utilisation for 5m 00s (average 4%)" in alerts[0].message


def test_utilisation_check_can_be_turned_off(captured, nvml) -> None:
    clock = Clock()
    monitor = GPUMonitor(captured[0], nvml=nvml, util_floor=None, clock=clock)
    nvml.devices[0].utilization = 0
    for seconds in (0, 1000, 5000):
        clock.now = seconds
        monitor.poll_once()
    assert sent(captured, EventType.GPU_UTILIZATION) == []


def test_temperature_alert_with_hysteresis(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml, temperature=85)
    for degrees in (70, 86, 83, 88, 79, 90):  # re-arms below 80
        nvml.devices[0].temperature = degrees
        monitor.poll_once()
    alerts = sent(captured, EventType.GPU_TEMPERATURE)
    assert [a.title for a in alerts] == ["GPU0 at 86 °C", "GPU0 at 90 °C"]
    assert alerts[0].metrics["temperature_c"] == 86


@pytest.mark.parametrize(
    "nvml_options, errors",
    [
        ({"without": ("nvmlDeviceGetTemperatureV",)}, {}),  # bindings older than the V call
        ({}, {"temperature_v": NVML_ERROR_FUNCTION_NOT_FOUND}),  # a driver older than it
    ],
)
def test_temperature_falls_back_to_the_deprecated_call(captured, monkeypatch, nvml_options, errors) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML([FakeGPU(UUID_A, temperature=91, errors=errors)], **nvml_options)
    monitor = monitor_for(captured, nvml, temperature=85)
    monitor.poll_once()
    assert monitor.readings["GPU0"].temperature == 91
    assert "nvmlDeviceGetTemperature" in nvml.calls
    assert len(sent(captured, EventType.GPU_TEMPERATURE)) == 1


def test_temperature_is_off_by_default(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml)
    nvml.devices[0].temperature = 99
    monitor.poll_once()
    assert monitor.readings["GPU0"].temperature == 99
    assert sent(captured, EventType.GPU_TEMPERATURE) == []


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"interval": 0.5}, "GPUMonitor(interval=0.5): must be at least 1 second"),
        ({"memory_warning": 1.5}, "GPUMonitor(memory_warning=1.5): must be a fraction"),
        ({"memory_warning": 0.9, "memory_critical": 0.8}, "must be above memory_warning"),
        ({"util_floor": 0}, "GPUMonitor(util_floor=0)"),
        ({"temperature": -3}, "GPUMonitor(temperature=-3)"),
    ],
)
def test_bad_arguments_are_refused_with_the_call_quoted(captured, options, problem) -> None:
    with pytest.raises(ConfigurationError) as error:
        GPUMonitor(captured[0], **options)
    assert problem in str(error.value)


# Device mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0,2", [0, 2]),
        (" 1 , 0", [1, 0]),
        ("1,-1,0", [1]),  # a negative entry ends the list
        ("1gpu,2", [1, 2]),  # like strtoul
        ("0,0", []),  # a repeat hides every GPU
        ("", []),
        ("-1", []),
        (f"{UUID_B},{UUID_A}", [UUID_B, UUID_A]),
        (f"{UUID_B},1", [UUID_B]),  # a list of UUIDs ends at the first non-UUID
        (f"{MIG}", [MIG]),
    ],
)
def test_cuda_visible_devices_parsing(value, expected) -> None:
    assert parse_visible_devices(value) == expected


@pytest.mark.parametrize(
    "visible, labels",
    [
        (None, ["GPU0", "GPU1", "GPU2"]),  # standalone: every GPU
        ("2", ["GPU2"]),
        ("2,0", ["GPU2", "GPU0"]),
        (UUID_B, ["GPU1"]),
        ("GPU-bbbb3", ["GPU2"]),  # a unique prefix
        ("GPU-BBBB3333", ["GPU2"]),  # case does not matter
        (f"GPU-aaaa,{UUID_C}", ["GPU0", "GPU2"]),
        ("GPU-bbbb,GPU-aaaa", []),  # an ambiguous prefix ends the list at once
        ("0,7,1", ["GPU0"]),  # an index that does not exist ends the list
    ],
)
def test_devices_follow_cuda_visible_devices(captured, monkeypatch, visible, labels) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml = FakeNVML([FakeGPU(UUID_A), FakeGPU(UUID_B), FakeGPU(UUID_C)])
    monitor = monitor_for(captured, nvml)
    monitor.poll_once()
    assert list(monitor.readings) == labels
    assert monitor.device_count == len(labels)


def test_no_visible_gpu_means_no_gpu_stats_and_says_why(captured, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    nvml = FakeNVML([FakeGPU(UUID_A)])
    monitor = monitor_for(captured, nvml)
    monitor.poll_once()
    status = monitor.status()
    assert not status.active
    assert status.reason == "no GPU stats: no GPU is visible to this process (CUDA_VISIBLE_DEVICES='')"
    assert nvml.shutdown_calls == nvml.init_calls == 1  # nothing to watch: NVML released at once


def test_explicit_devices_win_over_the_environment(captured, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    nvml = FakeNVML([FakeGPU(UUID_A), FakeGPU(UUID_B)])
    monitor = monitor_for(captured, nvml, devices=[UUID_B])
    monitor.poll_once()
    assert list(monitor.readings) == ["GPU1"]


def test_a_mig_slice_is_found_by_its_uuid(captured, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG)
    slice_ = FakeGPU(MIG, name="NVIDIA A100 MIG 1g.10gb", total=10 * GIB)
    slice_.errors["utilization"] = NVML_ERROR_NOT_SUPPORTED
    nvml = FakeNVML([FakeGPU(UUID_A)], mig={MIG: slice_})
    monitor = monitor_for(captured, nvml)
    slice_.use(0.9)
    monitor.poll_once()
    alerts = sent(captured, EventType.GPU_MEMORY)
    assert [a.context["gpu_uuid"] for a in alerts] == [MIG]
    assert alerts[0].context["device"] == MIG[:12]


def test_indices_on_mixed_gpus_warn_that_cuda_order_may_differ(captured, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    nvml = FakeNVML([FakeGPU(UUID_A, name="NVIDIA A100"), FakeGPU(UUID_B, name="NVIDIA T4")])
    with caplog.at_level(logging.WARNING, logger="afs_callbacks.monitors.gpu"):
        monitor_for(captured, nvml).poll_once()
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    with caplog.at_level(logging.WARNING, logger="afs_callbacks.monitors.gpu"):
        monitor_for(captured, nvml).poll_once()
    assert "CUDA_DEVICE_ORDER" not in caplog.text


def test_uuids_from_an_initialised_torch_cuda_map_cuda_order_to_nvml(captured, monkeypatch) -> None:
    """torch.cuda cannot initialise without a GPU here, so a stand-in ``torch`` reports CUDA's
    device order (fastest first: the reverse of NVML's PCI order) the way torch does."""
    cuda = SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 2,
        get_device_properties=lambda i: SimpleNamespace(uuid=[UUID_C[4:], UUID_A[4:]][i]),
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # would mean GPU0, GPU1 in NVML order
    nvml = FakeNVML([FakeGPU(UUID_A), FakeGPU(UUID_B), FakeGPU(UUID_C)])
    monitor = monitor_for(captured, nvml)
    monitor.poll_once()
    assert list(monitor.readings) == ["GPU2", "GPU0"]


# Failure modes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, reason",
    [
        (NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver library (libnvidia-ml) on this machine"),
        (NVML_ERROR_DRIVER_NOT_LOADED, "the NVIDIA driver is not loaded"),
        (NVML_ERROR_UNKNOWN, "NVML error: UNKNOWN"),
    ],
)
def test_nvml_init_failure_is_one_log_line_and_a_status(captured, nvml, caplog, code, reason) -> None:
    nvml.init_error = code
    monitor = monitor_for(captured, nvml)
    with caplog.at_level(logging.INFO, logger="afs_callbacks"):
        for _ in range(3):
            monitor.poll_once()
    assert monitor.status().reason == f"no GPU stats: {reason}"
    assert not monitor.status().active
    assert monitor.device_count == 0
    assert nvml.calls.count("nvmlInit") == 1  # not retried every interval
    lines = [r for r in caplog.records if "GPU" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0].getMessage()
    monitor.stop()
    assert nvml.shutdown_calls == 0  # never initialised, nothing to shut down


def test_missing_nvidia_ml_py_names_the_extra(captured, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    monitor = GPUMonitor(captured[0])
    monitor.poll_once()
    # Run from this checkout: the hint is the checkout's (the wheel's: test_install_hints.py).
    repo = Path(__file__).resolve().parents[2]
    assert monitor.status().reason == (
        f"no GPU stats: nvidia-ml-py is not installed: pip install -e '{repo}[gpu]'"
    )


def test_the_real_pynvml_without_a_driver_reports_no_gpu_stats(captured, monkeypatch) -> None:
    """Runs the installed nvidia-ml-py; on this machine there is no NVIDIA driver."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monitor = GPUMonitor(captured[0])
    monitor.poll_once()
    assert monitor.status().reason.startswith("no GPU stats: ")
    assert monitor.status().reason != "no GPU stats: "
    monitor.stop()


def test_a_mig_slice_without_utilisation_still_watches_memory(captured, nvml) -> None:
    clock = Clock()
    nvml.devices[0].errors["utilization"] = NVML_ERROR_NOT_SUPPORTED
    monitor = GPUMonitor(captured[0], nvml=nvml, util_window=0, clock=clock)
    nvml.devices[0].use(0.9)
    nvml.devices[1].utilization = 1
    monitor.poll_once()
    monitor.poll_once()
    assert monitor.readings["GPU0"].utilization is None
    assert [a.context["device"] for a in sent(captured, EventType.GPU_MEMORY)] == ["GPU0"]
    assert [a.context["device"] for a in sent(captured, EventType.GPU_UTILIZATION)] == ["GPU1"]
    status = monitor.status()
    assert status.active and "GPU0 does not report utilization" in status.reason
    assert nvml.calls.count("nvmlDeviceGetUtilizationRates") == 3  # not asked again for GPU0


def test_no_device_answering_memory_means_no_gpu_stats(captured, nvml) -> None:
    for gpu in nvml.devices:
        gpu.errors["memory"] = NVML_ERROR_NOT_SUPPORTED
    monitor = monitor_for(captured, nvml)
    monitor.poll_once()
    assert monitor.status().reason.startswith("no GPU stats: no watched GPU answers memory queries")
    assert nvml.shutdown_calls == 1
    assert not monitor.running


def test_a_lost_gpu_is_dropped_and_the_others_still_watched(captured, nvml, caplog) -> None:
    monitor = monitor_for(captured, nvml)
    monitor.poll_once()
    nvml.devices[0].errors["memory"] = NVML_ERROR_GPU_IS_LOST
    with caplog.at_level(logging.WARNING, logger="afs_callbacks"):
        for _ in range(3):
            monitor.poll_once()
    assert len([r for r in caplog.records if "GPU0 is lost" in r.getMessage()]) == 1
    assert monitor.status().reason == "watching GPU1; GPU0 is lost"
    nvml.devices[1].use(0.9)
    monitor.poll_once()
    assert [a.context["device"] for a in sent(captured, EventType.GPU_MEMORY)] == ["GPU1"]
    nvml.devices[1].errors["memory"] = NVML_ERROR_GPU_IS_LOST
    monitor.poll_once()
    assert monitor.status().reason.startswith("no GPU stats:")


def test_a_transient_error_skips_one_reading_and_logs_once(captured, nvml, caplog) -> None:
    monitor = monitor_for(captured, nvml)
    nvml.devices[0].errors["power"] = NVML_ERROR_UNKNOWN
    with caplog.at_level(logging.WARNING, logger="afs_callbacks"):
        monitor.poll_once()
        monitor.poll_once()
    assert len([r for r in caplog.records if "reading power of GPU0 failed" in r.getMessage()]) == 1
    assert monitor.readings["GPU0"].power is None
    del nvml.devices[0].errors["power"]
    monitor.poll_once()
    assert monitor.readings["GPU0"].power == 250.0


def test_an_unexpected_exception_never_escapes(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml)
    monitor.poll_once()
    nvml.nvmlDeviceGetMemoryInfo = None  # type: ignore[assignment]  # calling it: TypeError
    monitor.poll_once()  # must not raise
    assert monitor.readings["GPU0"].memory_used == 1 * GIB


def test_a_broken_poll_is_logged_once_and_never_raises(captured, nvml, caplog) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock broke")

    monitor = GPUMonitor(captured[0], nvml=nvml, clock=broken_clock)
    with caplog.at_level(logging.ERROR, logger="afs_callbacks"):
        for _ in range(3):
            monitor.poll_once()
    assert len([r for r in caplog.records if "failed to take a reading" in r.getMessage()]) == 1


def test_device_discovery_failing_is_no_gpu_stats(captured, nvml) -> None:
    def count() -> int:
        raise RuntimeError("driver hiccup")

    nvml.nvmlDeviceGetCount = count  # type: ignore[method-assign]
    monitor = monitor_for(captured, nvml)
    monitor.poll_once()
    assert monitor.status().reason == "no GPU stats: NVML failed: RuntimeError: driver hiccup"
    assert nvml.shutdown_calls == 1


# Lifecycle ----------------------------------------------------------------------------


def test_nvml_is_initialised_lazily_once_and_shut_down_at_stop(captured, nvml) -> None:
    monitor = monitor_for(captured, nvml)
    assert nvml.calls == []  # construction touches no driver
    assert monitor.status().reason == "not started"
    for _ in range(3):
        monitor.poll_once()
    assert nvml.init_calls == 1
    monitor.stop()
    assert nvml.shutdown_calls == 1
    monitor.stop()
    assert nvml.shutdown_calls == 1


def test_the_thread_alerts_and_stops_promptly(captured, nvml) -> None:
    nvml.devices[1].use(0.99)
    with GPUMonitor(captured[0], nvml=nvml, interval=1) as monitor:
        alerts = captured[1].wait_for(lambda e: e.event_type == EventType.GPU_MEMORY)
        assert monitor.running
    assert not monitor.running
    assert alerts[0].level == NotificationLevel.CRITICAL
    assert nvml.shutdown_calls == nvml.init_calls == 1


def test_a_pickled_monitor_carries_no_thread_or_handles(nvml) -> None:
    """ddp_spawn pickles callbacks and what they hold (here a picklable stand-in manager)."""
    monitor = GPUMonitor(SimpleNamespace(), nvml=None)  # type: ignore[arg-type]
    monitor._nvml = sys.modules.get("pynvml") or pytest.importorskip("pynvml")
    copy = pickle.loads(pickle.dumps(monitor))
    assert copy._nvml is None and not copy.running and copy._states is None


def test_from_env_reads_the_gpu_variables(captured) -> None:
    from afs_callbacks.config import Env

    env = Env(
        {
            "GPU_MEMORY_WARNING_THRESHOLD": "0.7",
            "GPU_MEMORY_CRITICAL_THRESHOLD": "0.9",
            "GPU_UTILIZATION_FLOOR": "0",
            "GPU_TEMPERATURE_THRESHOLD": "83",
            "GPU_MONITOR_INTERVAL": "2",
        },
        env_file=False,
    )
    monitor = GPUMonitor.from_env(captured[0], env)
    assert (monitor.memory_warning, monitor.memory_critical) == (0.7, 0.9)
    assert monitor.util_floor is None and monitor.temperature == 83 and monitor.interval == 2
    with pytest.raises(ConfigurationError, match="GPU_MEMORY_CRITICAL_THRESHOLD"):
        GPUMonitor.from_env(captured[0], Env({"GPU_MEMORY_WARNING_THRESHOLD": "0.99"}, env_file=False))
    with pytest.raises(ConfigurationError, match="GPU_MONITOR_INTERVAL: must be at least 1"):
        GPUMonitor.from_env(captured[0], Env({"GPU_MONITOR_INTERVAL": "0.1"}, env_file=False))
