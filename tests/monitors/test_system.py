"""System monitor against real figures: this machine's free disk space, memory and RSS.

Thresholds are set on either side of the real values (free space of the filesystem holding
``tmp_path``, the host's memory in use, this process's RSS) so each test knows the answer.
The cgroup tests read a cgroup-shaped folder tree, the kernel's own file interface.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from afs_callbacks import EventType, NotificationEvent
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.monitors import SystemMonitor
from afs_callbacks.monitors.system import GIB, cgroup_memory
from afs_callbacks.testing import CapturingHandler, capturing_manager

MIB = 2**20


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[tuple[NotificationManager, CapturingHandler]]:
    manager, handler = capturing_manager(tmp_path / "outbox", dedup_window=0)
    yield manager, handler
    manager.close(timeout=1)


@pytest.fixture
def no_cgroup(tmp_path: Path) -> Path:
    """A cgroup root with no memory limit, so only the host's figures count."""
    root = tmp_path / "cgroup-none"
    root.mkdir()
    return root


def sent(captured: tuple[NotificationManager, CapturingHandler], kind: EventType) -> list[NotificationEvent]:
    manager, handler = captured
    assert manager.flush(5).pending == 0
    return [event for event in handler.events if event.event_type == kind]


def monitor(captured, tmp_path: Path, **options) -> SystemMonitor:  # type: ignore[no-untyped-def]
    options.setdefault("host_memory_threshold", None)
    options.setdefault("cgroup_root", tmp_path / "cgroup-none")
    return SystemMonitor(captured[0], paths=[tmp_path], run_id="run-3", **options)


# Disk space ---------------------------------------------------------------------------


def test_disk_alert_when_real_free_space_is_below_the_threshold(captured, tmp_path) -> None:
    free = psutil.disk_usage(str(tmp_path)).free
    watcher = monitor(captured, tmp_path, disk_free_threshold=free + 10 * GIB)
    for _ in range(3):
        watcher.poll_once()
    alerts = sent(captured, EventType.DISK_SPACE)
    assert len(alerts) == 1  # once per crossing, not once per reading
    alert = alerts[0]
    assert alert.title.startswith("Low disk space: ")
    assert str(tmp_path) in alert.message
    assert alert.context["run_id"] == "run-3"
    assert alert.key.startswith("disk:")
    assert abs(alert.metrics["free_gib"] - free / GIB) < 1  # the real figure (it moves a bit)


def test_no_disk_alert_when_free_space_is_above_the_threshold(captured, tmp_path) -> None:
    free = psutil.disk_usage(str(tmp_path)).free
    watcher = monitor(captured, tmp_path, disk_free_threshold=free / 2)
    watcher.poll_once()
    assert sent(captured, EventType.DISK_SPACE) == []
    assert watcher.last_readings  # it did measure


def test_disk_alert_rearms_only_after_free_space_recovers(captured, tmp_path) -> None:
    free = psutil.disk_usage(str(tmp_path)).free
    watcher = monitor(captured, tmp_path, disk_free_threshold=free * 2)
    watcher.poll_once()
    watcher.disk_free_threshold = free * 0.99  # still within 5% of the threshold: stays quiet
    watcher.poll_once()
    watcher.disk_free_threshold = free * 2
    watcher.poll_once()
    assert len(sent(captured, EventType.DISK_SPACE)) == 1
    watcher.disk_free_threshold = free / 2  # recovered well past the margin: re-armed
    watcher.poll_once()
    watcher.disk_free_threshold = free * 2
    watcher.poll_once()
    assert len(sent(captured, EventType.DISK_SPACE)) == 2


def test_fraction_threshold_uses_the_filesystem_size(captured, tmp_path) -> None:
    usage = psutil.disk_usage(str(tmp_path))
    above = min(0.9999, usage.free / usage.total + 0.01)
    monitor(captured, tmp_path, disk_free_threshold=usage.free / usage.total / 2).poll_once()
    assert sent(captured, EventType.DISK_SPACE) == []
    monitor(captured, tmp_path, disk_free_threshold=above).poll_once()
    [alert] = sent(captured, EventType.DISK_SPACE)
    assert abs(alert.context["limit"] - above * usage.total) < 1


def test_paths_on_one_filesystem_are_one_alert_and_missing_folders_use_their_parent(
    captured, tmp_path
) -> None:
    free = psutil.disk_usage(str(tmp_path)).free
    later = tmp_path / "checkpoints" / "not" / "yet"
    watcher = SystemMonitor(
        captured[0],
        paths=[tmp_path, later, tmp_path / "logs"],
        disk_free_threshold=free + 10 * GIB,
        host_memory_threshold=None,
    )
    watcher.poll_once()
    alerts = sent(captured, EventType.DISK_SPACE)
    assert len(alerts) == 1
    assert alerts[0].context["path"] == str(tmp_path)


def test_default_path_is_the_working_directory(captured, tmp_path) -> None:
    watcher = SystemMonitor(captured[0])
    assert watcher.paths == [Path.cwd()]
    assert "disk free under" in watcher.status().reason


# Memory -------------------------------------------------------------------------------


def test_host_memory_alert_against_real_usage(captured, tmp_path, no_cgroup) -> None:
    memory = psutil.virtual_memory()
    used = (memory.total - memory.available) / memory.total
    monitor(captured, tmp_path, host_memory_threshold=min(1.0, used + 0.5)).poll_once()
    assert sent(captured, EventType.HOST_MEMORY) == []
    watcher = monitor(captured, tmp_path, host_memory_threshold=used / 4)
    watcher.poll_once()
    watcher.poll_once()
    [alert] = sent(captured, EventType.HOST_MEMORY)
    assert alert.title.startswith("Memory at ") and alert.title.endswith(" on the host")
    assert alert.key == "memory"


def test_rss_alert_in_bytes_and_as_a_fraction(captured, tmp_path) -> None:
    rss = psutil.Process().memory_info().rss
    monitor(captured, tmp_path, rss_threshold=rss * 100).poll_once()
    assert sent(captured, EventType.HOST_MEMORY) == []
    monitor(captured, tmp_path, rss_threshold=rss / 10).poll_once()
    monitor(captured, tmp_path, rss_threshold=rss / 10 / psutil.virtual_memory().total).poll_once()
    alerts = sent(captured, EventType.HOST_MEMORY)
    assert len(alerts) == 2
    assert all(a.key == "rss" and f"pid {os.getpid()}" in a.message for a in alerts)


def write_cgroup_v2(root: Path, *, limit: str, current: int, inactive: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(f"{limit}\n")
    (root / "memory.current").write_text(f"{current}\n")
    (root / "memory.stat").write_text(f"anon 1234\ninactive_file {inactive}\nactive_file 0\n")


def test_cgroup_v2_limit_counts_working_set_without_inactive_cache(tmp_path) -> None:
    root = tmp_path / "cg"
    write_cgroup_v2(root, limit=str(1 * GIB), current=900 * MIB, inactive=100 * MIB)
    assert cgroup_memory(root) == (800 * MIB, 1 * GIB)
    write_cgroup_v2(root, limit="max", current=900 * MIB, inactive=0)
    assert cgroup_memory(root) is None


def test_cgroup_v1_limit_is_read_too(tmp_path) -> None:
    folder = tmp_path / "cg" / "memory"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    (folder / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {GIB // 2}\n")
    assert cgroup_memory(tmp_path / "cg") == (GIB // 2, 2 * GIB)
    (folder / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_memory(tmp_path / "cg") is None


def test_this_machines_cgroup_reads_without_error() -> None:
    figures = cgroup_memory()
    assert figures is None or (figures[0] >= 0 and figures[1] > 0)


def test_a_job_near_its_cgroup_limit_alerts_even_with_a_free_host(captured, tmp_path) -> None:
    root = tmp_path / "cg"
    write_cgroup_v2(root, limit=str(GIB), current=980 * MIB, inactive=0)
    monitor(captured, tmp_path, host_memory_threshold=0.9, cgroup_root=root).poll_once()
    [alert] = sent(captured, EventType.HOST_MEMORY)
    assert alert.title == "Memory at 96% on the job"
    assert "job (cgroup limit) uses 980.0 MiB of 1.0 GiB" in alert.message


# Configuration ------------------------------------------------------------------------


def test_from_env(captured, tmp_path) -> None:
    env = Env(
        {
            "AFS_DISK_FREE_MIN_GB": "25",
            "AFS_HOST_MEMORY_THRESHOLD": "0.8",
            "AFS_RSS_MAX_GB": "2",
            "AFS_SYSTEM_MONITOR_INTERVAL": "60",
            "AFS_MONITOR_PATHS": f"{tmp_path}/a, {tmp_path}/b",
        },
        env_file=False,
    )
    watcher = SystemMonitor.from_env(captured[0], env, paths=[tmp_path / "c"])
    assert watcher.disk_free_threshold == 25 * GIB
    assert watcher.host_memory_threshold == 0.8
    assert watcher.rss_threshold == 2 * GIB
    assert watcher.interval == 60
    assert [p.name for p in watcher.paths] == ["a", "b", "c"]
    default = SystemMonitor.from_env(captured[0], Env({}, env_file=False))
    assert default.disk_free_threshold == 10 * GIB and default.rss_threshold is None
    fraction = SystemMonitor.from_env(
        captured[0], Env({"AFS_DISK_FREE_MIN_FRACTION": "0.05"}, env_file=False)
    )
    assert fraction.disk_free_threshold == 0.05


@pytest.mark.parametrize(
    "variables, problem",
    [
        ({"AFS_DISK_FREE_MIN_GB": "5", "AFS_DISK_FREE_MIN_FRACTION": "0.1"}, "not both"),
        ({"AFS_DISK_FREE_MIN_FRACTION": "5"}, "AFS_DISK_FREE_MIN_FRACTION: must be at most"),
        ({"AFS_HOST_MEMORY_THRESHOLD": "lots"}, "AFS_HOST_MEMORY_THRESHOLD: must be a number"),
        ({"AFS_SYSTEM_MONITOR_INTERVAL": "0"}, "AFS_SYSTEM_MONITOR_INTERVAL: must be at least 1"),
    ],
)
def test_from_env_refuses_bad_values(captured, variables, problem) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        SystemMonitor.from_env(captured[0], Env(variables, env_file=False))


def test_bad_arguments_quote_the_call(captured) -> None:
    with pytest.raises(ConfigurationError, match=r"SystemMonitor\(disk_free_threshold=-1\)"):
        SystemMonitor(captured[0], disk_free_threshold=-1)
    with pytest.raises(ConfigurationError, match=r"SystemMonitor\(host_memory_threshold=2\)"):
        SystemMonitor(captured[0], host_memory_threshold=2)


def test_the_thread_reports_and_stops(captured, tmp_path) -> None:
    free = psutil.disk_usage(str(tmp_path)).free
    with monitor(captured, tmp_path, interval=1, disk_free_threshold=free + 10 * GIB) as watcher:
        captured[1].wait_for(lambda e: e.event_type == EventType.DISK_SPACE)
    assert not watcher.running
