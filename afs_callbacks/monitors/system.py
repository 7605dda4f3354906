"""System monitor: free disk space where the run writes, host memory and the process's RSS.

Checkpoints filling a disk kill long runs hours in; a host (or a job's cgroup) running out
of memory gets the trainer killed without a traceback. This monitor warns before either,
once per crossing (see :class:`~afs_callbacks.monitors._poller.Hysteresis`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import psutil

from afs_callbacks._log import get_logger
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import format_bytes
from afs_callbacks.monitors._poller import Hysteresis, MonitorStatus, Poller, as_fraction

if TYPE_CHECKING:
    from afs_callbacks.config import Env
    from afs_callbacks.manager import NotificationManager

log = get_logger(__name__)

GIB = 2**30


class SystemMonitor(Poller):
    """Warns when disk space runs low where the run writes, or memory runs short.

    Alerts: DISK_SPACE per filesystem when its free space falls below
    ``disk_free_threshold``; HOST_MEMORY when the host's (or the job's cgroup's) memory in
    use reaches ``host_memory_threshold``, and when this process's resident memory reaches
    ``rss_threshold``. Each fires once and re-arms only after the value recovers by
    ``margin`` (a fraction of the threshold for byte values).

    Args:
        manager: where alerts go.
        paths: the run's output and checkpoint folders (they may not exist yet: the nearest
            existing parent is measured). Default: the current directory.
        disk_free_threshold: bytes (``>= 1``) or a fraction of the filesystem (``< 1``).
        host_memory_threshold: fraction of memory in use; None turns it off.
        rss_threshold: this process's resident memory, in bytes (``>= 1``) or as a fraction
            of the host's memory (``< 1``); None (default) turns it off.
        margin: hysteresis margin as a fraction (0.05: re-arm 5% below/above).
        interval: seconds between readings (disks do not fill in a second).
        cgroup_root: where the cgroup filesystem is mounted (tests point it elsewhere).
        run_id, model, context: fields added to every alert.

    Raises:
        ConfigurationError: a threshold is out of range.

    Example::

        with SystemMonitor(manager, paths=["checkpoints/"], disk_free_threshold=20 * GIB):
            train()
    """

    name: ClassVar[str] = "system"

    def __init__(
        self,
        manager: NotificationManager,
        *,
        paths: Iterable[str | os.PathLike[str]] = (),
        disk_free_threshold: float = 10 * GIB,
        host_memory_threshold: float | None = 0.9,
        rss_threshold: float | None = None,
        margin: float = 0.05,
        interval: float = 30.0,
        cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
        run_id: str | None = None,
        model: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(manager, interval=interval, run_id=run_id, model=model, context=context)
        if not isinstance(disk_free_threshold, (int, float)) or not disk_free_threshold > 0:
            raise ConfigurationError(
                f"SystemMonitor(disk_free_threshold={disk_free_threshold!r})",
                "must be bytes (>= 1) or a fraction of the disk (< 1)",
            )
        self.paths = [Path(p) for p in paths] or [Path.cwd()]
        self.disk_free_threshold = float(disk_free_threshold)
        self.host_memory_threshold = (
            None
            if host_memory_threshold is None
            else as_fraction(
                host_memory_threshold, f"SystemMonitor(host_memory_threshold={host_memory_threshold!r})"
            )
        )
        if rss_threshold is not None and not rss_threshold > 0:
            raise ConfigurationError(f"SystemMonitor(rss_threshold={rss_threshold!r})", "must be > 0")
        self.rss_threshold = rss_threshold
        self.margin = as_fraction(margin, f"SystemMonitor(margin={margin!r})")
        self.cgroup_root = Path(cgroup_root)
        self._disks: dict[str, Hysteresis] = {}
        self._memory: Hysteresis | None = None
        self._rss: Hysteresis | None = None
        self._last: dict[str, Any] = {}

    @classmethod
    def from_env(cls, manager: NotificationManager, env: Env, **kwargs: Any) -> SystemMonitor:
        """A monitor configured from ``AFS_DISK_*``/``AFS_*MEMORY*`` variables; ``kwargs`` win.

        Raises:
            ConfigurationError: a variable has a bad value, or both disk thresholds are set.
        """
        gib = env.number("AFS_DISK_FREE_MIN_GB", None, minimum=0.001)
        fraction = env.number("AFS_DISK_FREE_MIN_FRACTION", None, minimum=0.0001, maximum=0.9999)
        if gib is not None and fraction is not None:
            raise ConfigurationError("AFS_DISK_FREE_MIN_FRACTION", "set it or AFS_DISK_FREE_MIN_GB, not both")
        rss = env.number("AFS_RSS_MAX_GB", None, minimum=0.001)
        options: dict[str, Any] = {
            "interval": env.number("AFS_SYSTEM_MONITOR_INTERVAL", 30.0, minimum=1.0),
            "disk_free_threshold": fraction if fraction is not None else (gib or 10.0) * GIB,
            "host_memory_threshold": env.number("AFS_HOST_MEMORY_THRESHOLD", 0.9, minimum=0.0, maximum=1.0)
            or None,
            "rss_threshold": None if rss is None else rss * GIB,
            "paths": env.items_list("AFS_MONITOR_PATHS"),
        }
        options["paths"] = [*options["paths"], *kwargs.pop("paths", ())]
        options.update(kwargs)
        return cls(manager, **options)

    def status(self) -> MonitorStatus:
        """The filesystems and memory watched."""
        what = [f"disk free under {', '.join(str(p) for p in self.paths)}"]
        if self.host_memory_threshold is not None:
            what.append("host memory")
        if self.rss_threshold is not None:
            what.append("process RSS")
        return MonitorStatus(self.name, self.running, "watching " + ", ".join(what))

    @property
    def last_readings(self) -> dict[str, Any]:
        """The latest figures: free bytes per mount point, memory fraction, RSS bytes."""
        with self._lock:
            return dict(self._last)

    # Polling --------------------------------------------------------------------------

    def _poll(self) -> None:
        for mount, path in self._filesystems().items():
            self._check_disk(mount, path)
        if self.host_memory_threshold is not None:
            self._check_memory(self.host_memory_threshold)
        if self.rss_threshold is not None:
            self._check_rss(self.rss_threshold)

    def _filesystems(self) -> dict[str, Path]:
        # Several paths on one filesystem are one alert, keyed by its mount point.
        found: dict[str, Path] = {}
        for path in self.paths:
            existing = _existing(path)
            found.setdefault(_mount_point(existing), existing)
        return found

    def _check_disk(self, mount: str, path: Path) -> None:
        usage = psutil.disk_usage(str(path))
        limit = (
            self.disk_free_threshold
            if self.disk_free_threshold >= 1
            else self.disk_free_threshold * usage.total
        )
        self._last[f"disk_free:{mount}"] = usage.free
        guard = self._disks.get(mount)
        if guard is None:
            guard = self._disks[mount] = Hysteresis(limit, limit, above=False)
        # The threshold may have been changed on a running monitor: keep the arming state.
        guard.trigger, guard.rearm = limit, limit * (1 + self.margin)
        if guard.update(usage.free):
            self._alert(
                EventType.DISK_SPACE,
                NotificationLevel.WARNING,
                f"Low disk space: {format_bytes(usage.free)} free on {mount}",
                f"The filesystem holding {path} ({mount}) has {format_bytes(usage.free)} free of "
                f"{format_bytes(usage.total)}, below the {format_bytes(limit)} threshold. Checkpoints "
                "that cannot be written end the run.",
                key=f"disk:{mount}",
                path=str(path),
                limit=limit,
                metrics={"free_gib": round(usage.free / GIB, 2), "total_gib": round(usage.total / GIB, 2)},
            )

    def _check_memory(self, threshold: float) -> None:
        guard = self._memory = self._rising(threshold, self._memory)
        memory = psutil.virtual_memory()
        used, total, scope = memory.total - memory.available, memory.total, "host"
        limited = cgroup_memory(self.cgroup_root)
        if limited is not None and limited[0] / limited[1] > used / total:
            used, total, scope = limited[0], limited[1], "job (cgroup limit)"
        self._last["memory_fraction"] = used / total
        if guard.update(used / total):
            self._alert(
                EventType.HOST_MEMORY,
                NotificationLevel.WARNING,
                f"Memory at {used / total:.0%} on the {scope.split()[0]}",
                f"The {scope} uses {format_bytes(used)} of {format_bytes(total)}, past the "
                f"{guard.trigger:.0%} threshold. Out of memory, the trainer is killed without a "
                "traceback.",
                key="memory",
                limit=guard.trigger,
                metrics={"used_gib": round(used / GIB, 2), "total_gib": round(total / GIB, 2)},
            )

    def _check_rss(self, threshold: float) -> None:
        rss = psutil.Process().memory_info().rss
        limit = threshold if threshold >= 1 else threshold * psutil.virtual_memory().total
        self._last["rss"] = rss
        self._rss = self._rising(limit, self._rss)
        if self._rss.update(rss):
            self._alert(
                EventType.HOST_MEMORY,
                NotificationLevel.WARNING,
                f"Training process uses {format_bytes(rss)} of memory",
                f"This process (pid {os.getpid()}) holds {format_bytes(rss)} resident, past the "
                f"{format_bytes(limit)} threshold: a leak, or a dataset held in memory?",
                key="rss",
                limit=limit,
                metrics={"rss_gib": round(rss / GIB, 2)},
            )

    def _rising(self, trigger: float, guard: Hysteresis | None) -> Hysteresis:
        # The threshold may have been changed on a running monitor: keep the arming state.
        guard = guard or Hysteresis(trigger, trigger)
        guard.trigger, guard.rearm = trigger, trigger * (1 - self.margin)
        return guard


def cgroup_memory(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> tuple[int, int] | None:
    """``(working set, limit)`` in bytes of this process's memory cgroup, or None if unlimited.

    A batch job (SLURM, Kubernetes) is killed at its cgroup's limit, long before the host is
    full. The working set leaves out inactive page cache, which the kernel reclaims first
    (as ``kubectl top`` and ``docker stats`` count it). cgroup v2 and v1 are both read.
    """
    base, host_total = Path(root), psutil.virtual_memory().total
    found: list[tuple[int, int]] = []
    for limit_name, usage_name, inactive_name, sub in (
        ("memory.max", "memory.current", "inactive_file", ""),
        ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file", "memory"),
    ):
        folder = base / sub if sub else base
        for candidate in _cgroup_dirs(folder, sub or None):
            limit = _read_int(candidate / limit_name)
            usage = _read_int(candidate / usage_name)
            # "max" (v2) or a huge number (v1) means no limit; so does one above the host's RAM.
            if limit is None or usage is None or limit >= host_total:
                continue
            inactive = _stat_value(candidate / "memory.stat", inactive_name)
            found.append((max(usage - inactive, 0), limit))
    # Several limited levels (task, job): the one closest to its limit kills first.
    return max(found, key=lambda pair: pair[0] / pair[1], default=None)


def _cgroup_dirs(folder: Path, controller: str | None) -> list[Path]:
    # The process's own cgroup and its ancestors: a job's limit often sits above the task.
    relative = ""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (controller is None and controllers == "") or (
                controller and controller in controllers.split(",")
            ):
                relative = path.lstrip("/")
    except (OSError, ValueError):
        pass
    dirs, current = [], folder / relative if relative else folder
    while True:
        if current.is_dir():
            dirs.append(current)
        if current == folder or folder not in current.parents:
            break
        current = current.parent
    return dirs


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _existing(path: Path) -> Path:
    # A checkpoint folder may not exist yet; its filesystem is that of its nearest parent.
    current = path.expanduser().absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _mount_point(path: Path) -> str:
    current = path.resolve()
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return str(current)
