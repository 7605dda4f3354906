"""Monitors: GPU (NVML), system resources (psutil) and training cost, polled on daemon threads.

The framework integrations start all three for a run (``AFS_MONITORS`` opts out) with
:func:`start_monitors`; each also runs on its own::

    from afs_callbacks.monitors import GPUMonitor

    with GPUMonitor(manager, memory_warning=0.9) as gpu:
        train()
    print(gpu.peaks)

No monitor raises into training or waits on a network: alerts go through the manager.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from afs_callbacks._log import get_logger
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import format_duration
from afs_callbacks.monitors._poller import Hysteresis, MonitorStatus, Poller
from afs_callbacks.monitors.cost import CostMonitor
from afs_callbacks.monitors.gpu import GPUMonitor, GpuReading, MemoryPeak
from afs_callbacks.monitors.system import SystemMonitor

if TYPE_CHECKING:
    from afs_callbacks.manager import NotificationManager

log = get_logger(__name__)

#: Monitor names ``AFS_MONITORS`` accepts.
MONITOR_NAMES = ("gpu", "system", "cost")


@dataclass(frozen=True)
class MonitorSummary:
    """What the monitors saw during a run, for the training-completed message.

    Attributes:
        peak_gpu_memory: highest memory use per GPU label (``GPU0``, ...).
        cost: the run's cost, when a price is configured.
        hourly_rate: the price per hour used.
        elapsed: seconds the cost accrued over.
        gpu_status: why there are no GPU figures, when there are none.
    """

    peak_gpu_memory: Mapping[str, MemoryPeak] = field(default_factory=dict)
    cost: float | None = None
    hourly_rate: float | None = None
    elapsed: float | None = None
    gpu_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe values to put in an event's context (absent figures left out)."""
        data: dict[str, Any] = {}
        if self.peak_gpu_memory:
            data["peak_gpu_memory"] = {label: peak.to_dict() for label, peak in self.peak_gpu_memory.items()}
        if self.cost is not None:
            data.update(cost=round(self.cost, 4), hourly_rate=self.hourly_rate, cost_elapsed_s=self.elapsed)
        return data

    def lines(self) -> list[str]:
        """Lines for people: ``Peak GPU memory: GPU0 61.2 GiB of 80.0 GiB (77%)``, ``Cost: ...``."""
        lines = []
        if self.peak_gpu_memory:
            peaks = "; ".join(f"{label} {peak.describe()}" for label, peak in self.peak_gpu_memory.items())
            lines.append(f"Peak GPU memory: {peaks}")
        if self.cost is not None:
            rate = self.hourly_rate or 0.0
            lines.append(f"Cost: ${self.cost:,.2f} ({format_duration(self.elapsed)} at ${rate:,.2f}/h)")
        return lines


class Monitors:
    """The monitors started for one run; :meth:`stop` them at its end, then :meth:`summary`.

    Args:
        gpu, system, cost: the monitors (any may be None).
        errors: configuration problems that kept a monitor from being built, by name.
    """

    def __init__(
        self,
        gpu: GPUMonitor | None = None,
        system: SystemMonitor | None = None,
        cost: CostMonitor | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> None:
        self.gpu = gpu
        self.system = system
        self.cost = cost
        self.errors = dict(errors or {})

    def __iter__(self) -> Iterator[Poller]:
        return iter([m for m in (self.gpu, self.system, self.cost) if m is not None])

    def start(self) -> Monitors:
        """Start every monitor's thread; returns self. Never raises."""
        for monitor in self:
            try:
                monitor.start()
            except Exception:
                log.exception("afs-callbacks: could not start the %s monitor", monitor.name)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every monitor (idempotent, never raises); the summary stays available."""
        for monitor in self:
            monitor.stop(timeout)

    def summary(self) -> MonitorSummary:
        """Peak GPU memory per device and the cost so far."""
        gpu = self.gpu
        cost = self.cost
        return MonitorSummary(
            peak_gpu_memory={} if gpu is None else gpu.peaks,
            cost=None if cost is None else cost.current_cost(),
            hourly_rate=None if cost is None else cost.hourly_rate,
            elapsed=None if cost is None else cost.elapsed(),
            gpu_status=None if gpu is None or gpu.unavailable is None else f"no GPU stats: {gpu.unavailable}",
        )

    def figures(self) -> dict[str, float]:
        """The latest figures, for rules (``afs_callbacks.rules``): ``gpu_util`` (mean
        percent over the watched GPUs that report it), ``gpu_memory`` (the highest percent
        in use), ``gpu_temp`` (the hottest, °C) and ``cost``; absent when unknown."""
        figures: dict[str, float] = {}
        readings = list(self.gpu.readings.values()) if self.gpu is not None else []
        utilization = [r.utilization for r in readings if r.utilization is not None]
        if utilization:
            figures["gpu_util"] = sum(utilization) / len(utilization)
        if readings:
            figures["gpu_memory"] = 100.0 * max(r.memory_fraction for r in readings)
        temperatures = [r.temperature for r in readings if r.temperature is not None]
        if temperatures:
            figures["gpu_temp"] = max(temperatures)
        if self.cost is not None:
            figures["cost"] = self.cost.current_cost()
        return figures

    def status(self) -> list[MonitorStatus]:
        """Each monitor's status, plus one inactive entry per configuration error."""
        statuses = [monitor.status() for monitor in self]
        return statuses + [MonitorStatus(name, False, reason) for name, reason in self.errors.items()]

    def __enter__(self) -> Monitors:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Monitors({', '.join(m.name for m in self) or 'none'})"


def monitors_from_env(
    manager: NotificationManager,
    env: Env | Mapping[str, str] | None = None,
    *,
    paths: Iterable[str | os.PathLike[str]] = (),
    run_id: str | None = None,
    model: str | None = None,
    gpu_count: int | None = None,
    only: Iterable[str] | None = None,
    context: Mapping[str, Any] | None = None,
) -> Monitors:
    """Build (not start) the monitors the environment asks for; see :func:`start_monitors`."""
    if not manager.settings.enabled:
        return Monitors()  # AFS_ENABLED=false: no monitor, no thread
    if env is None:
        env = manager.env  # the settings the manager was built from, not os.environ again
    if not isinstance(env, Env):
        env = Env(env)
    strict = manager.settings.strict
    errors: dict[str, str] = {}
    try:
        wanted = _wanted(env) if only is None else set(only)
    except ConfigurationError as error:
        if strict:
            raise
        log.error("afs-callbacks: %s (starting no monitor)", error)
        return Monitors(errors={"monitors": str(error)})
    common: dict[str, Any] = {"run_id": run_id, "model": model, "context": context}
    built: dict[str, Any] = {}
    for name in MONITOR_NAMES:
        if name not in wanted:
            continue
        try:
            if name == "gpu":
                built[name] = GPUMonitor.from_env(manager, env, **common)
            elif name == "system":
                built[name] = SystemMonitor.from_env(manager, env, paths=paths, **common)
            else:
                count: Any = gpu_count
                if count is None and env.text("AFS_GPU_COUNT") is None:
                    count = _gpu_counter(built.get("gpu"))
                built[name] = CostMonitor.from_env(manager, env, gpu_count=count, **common)
        except ConfigurationError as error:
            if strict:
                raise
            errors[name] = str(error)
            log.error("afs-callbacks: %s monitor not started: %s", name, error)
    return Monitors(built.get("gpu"), built.get("system"), built.get("cost"), errors)


def start_monitors(
    manager: NotificationManager,
    env: Env | Mapping[str, str] | None = None,
    *,
    paths: Iterable[str | os.PathLike[str]] = (),
    run_id: str | None = None,
    model: str | None = None,
    gpu_count: int | None = None,
    only: Iterable[str] | None = None,
    context: Mapping[str, Any] | None = None,
) -> Monitors:
    """Start the GPU, system and cost monitors for a run, as the environment configures them.

    Call it once per run on the process that speaks for the run (global rank zero); it
    never raises (in ``AFS_STRICT`` mode a bad setting raises ``ConfigurationError``) and
    never blocks: NVML is loaded on the GPU monitor's own thread.

    Args:
        manager: where alerts go.
        env: settings (default: the manager's own ``env``, else the environment over
            ``./.env``).
        paths: the run's output/checkpoint folders for the disk check (added to
            ``AFS_MONITOR_PATHS``; default the current directory).
        run_id, model: added to every alert.
        gpu_count: GPUs the run pays for, for a per-GPU price (under DDP: the world size);
            default the GPUs the GPU monitor finds on this machine.
        only: monitor names to consider (default ``AFS_MONITORS``, else all).
        context: more fields for every alert.

    Returns:
        :class:`Monitors`: call ``.stop()`` at the end of the run, then ``.summary()``.

    Example::

        monitors = start_monitors(manager, paths=[trainer.default_root_dir], run_id="r1")
        try:
            trainer.fit(model)
        finally:
            monitors.stop()
        print("\\n".join(monitors.summary().lines()))
    """
    monitors = monitors_from_env(
        manager, env, paths=paths, run_id=run_id, model=model, gpu_count=gpu_count, only=only, context=context
    )
    return monitors.start()


def _gpu_counter(gpu: GPUMonitor | None) -> Callable[[], int | None] | None:
    # The GPU monitor learns the count on its first reading, after the cost clock started.
    return None if gpu is None else (lambda: gpu.device_count)


def _wanted(env: Env) -> set[str]:
    """``AFS_MONITORS``: a comma list of monitor names, or none/off/0/false for none."""
    names = [name.lower() for name in env.items_list("AFS_MONITORS")]
    if env.text("AFS_MONITORS") is None:
        return set(MONITOR_NAMES)
    if names in (["none"], ["off"], ["0"], ["false"], ["no"]):
        return set()
    unknown = sorted(set(names) - set(MONITOR_NAMES))
    if unknown:
        raise ConfigurationError(
            "AFS_MONITORS", f"unknown monitor(s) {', '.join(unknown)}; use {', '.join(MONITOR_NAMES)} or none"
        )
    return set(names)


__all__ = [
    "MONITOR_NAMES",
    "CostMonitor",
    "GPUMonitor",
    "GpuReading",
    "Hysteresis",
    "MemoryPeak",
    "MonitorStatus",
    "MonitorSummary",
    "Monitors",
    "SystemMonitor",
    "monitors_from_env",
    "start_monitors",
]
