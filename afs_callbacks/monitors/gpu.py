"""GPU monitor: NVML readings of memory, utilisation, temperature and power, with alerts.

NVML (``nvidia-ml-py``, the ``gpu`` extra) is imported and initialised on the polling
thread's first reading, never at import or construction: callbacks are pickled by
``ddp_spawn`` and a parent that forks DDP workers must not hold a driver handle. Without a
driver, a library or a supported query the monitor logs one line, reports "no GPU stats"
in :meth:`GPUMonitor.status` and goes on; nothing here raises into training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from afs_callbacks._log import get_logger
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.monitors._devices import (
    GpuReading,
    MemoryPeak,
    describe_error,
    is_nvml_error,
    read_temperature,
    resolve_devices,
)
from afs_callbacks.monitors._gpu_alerts import DeviceState, GpuAlerts
from afs_callbacks.monitors._poller import Hysteresis, MonitorStatus, as_fraction

if TYPE_CHECKING:
    from afs_callbacks.config import Env
    from afs_callbacks.manager import NotificationManager

log = get_logger(__name__)

__all__ = ["GPUMonitor", "GpuReading", "MemoryPeak"]


class GPUMonitor(GpuAlerts):
    """Watches the GPUs this process uses and alerts on memory, starvation and heat.

    Alerts (each once per crossing, re-armed only after the value falls back by ``margin``):

    - GPU_MEMORY, WARNING at ``memory_warning`` and CRITICAL at ``memory_critical``;
    - GPU_UTILIZATION when utilisation stays below ``util_floor`` percent for ``util_window``
      seconds (a starved GPU is money burning);
    - GPU_TEMPERATURE at ``temperature`` degrees Celsius, when set.

    Each alert's context ``key`` is ``<device UUID>:<what>`` (``memory``, ``memory-critical``,
    ``utilization``, ``temperature``), so the manager's storm guard groups per device and a
    critical alert is never swallowed by the warning just before it. Peak memory per device
    is kept in :attr:`peaks` for the training summary.

    Args:
        manager: where alerts go.
        interval: seconds between readings (at least 1; each query takes a driver lock).
        memory_warning: fraction of device memory for the warning.
        memory_critical: fraction for the critical alert.
        util_floor: utilisation percent below which the GPU counts as starved; None: off.
        util_window: seconds the utilisation must stay below the floor.
        temperature: degrees Celsius for GPU_TEMPERATURE; None (default): off.
        margin: how far memory must fall (as a fraction; 100x in utilisation points, and
            ``100 * margin`` degrees) before an alert re-arms.
        devices: NVML indices (as ``nvidia-smi`` numbers them) or UUIDs (prefixes allowed).
            Default: the GPUs this process can use (``CUDA_VISIBLE_DEVICES``, by index or
            UUID, mapped by UUID), all of them when that is unset.
        nvml: the NVML module (default: ``import pynvml`` on first reading).
        clock: monotonic time source for the utilisation window.
        run_id, model, context: fields added to every alert.

    Raises:
        ConfigurationError: a threshold or the interval is out of range.

    Example::

        with GPUMonitor(manager, memory_warning=0.9) as gpu:
            train()
        print(gpu.peaks)
    """

    name: ClassVar[str] = "gpu"

    def __init__(
        self,
        manager: NotificationManager,
        *,
        interval: float = 5.0,
        memory_warning: float = 0.85,
        memory_critical: float = 0.97,
        util_floor: float | None = 10.0,
        util_window: float = 300.0,
        temperature: float | None = None,
        margin: float = 0.05,
        devices: Sequence[int | str] | None = None,
        nvml: Any = None,
        clock: Callable[[], float] = time.monotonic,
        run_id: str | None = None,
        model: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(manager, interval=interval, run_id=run_id, model=model, context=context)
        self.memory_warning = as_fraction(memory_warning, f"GPUMonitor(memory_warning={memory_warning!r})")
        self.memory_critical = as_fraction(
            memory_critical, f"GPUMonitor(memory_critical={memory_critical!r})"
        )
        if self.memory_critical <= self.memory_warning:
            raise ConfigurationError(
                f"GPUMonitor(memory_critical={memory_critical!r})",
                f"must be above memory_warning ({memory_warning!r})",
            )
        self.margin = as_fraction(margin, f"GPUMonitor(margin={margin!r})")
        if util_floor is not None and not 0 < util_floor <= 100:
            raise ConfigurationError(
                f"GPUMonitor(util_floor={util_floor!r})", "must be a percent in (0, 100]"
            )
        if not util_window >= 0:
            raise ConfigurationError(f"GPUMonitor(util_window={util_window!r})", "must be 0 or more seconds")
        if temperature is not None and not temperature > 0:
            raise ConfigurationError(
                f"GPUMonitor(temperature={temperature!r})", "must be degrees Celsius > 0"
            )
        self.util_floor = util_floor
        self.util_window = float(util_window)
        self.temperature = temperature
        self.devices = None if devices is None else list(devices)
        self._nvml = nvml
        self._clock = clock
        self._states: list[DeviceState] | None = None
        self._latest: dict[str, GpuReading] = {}
        self._peaks: dict[str, MemoryPeak] = {}
        self._unavailable: str | None = None
        self._initialised = False  # nvmlInit succeeded and nvmlShutdown is owed
        self._active = False  # self._states hold live handles of this process
        self._pid = os.getpid()

    @classmethod
    def from_env(cls, manager: NotificationManager, env: Env, **kwargs: Any) -> GPUMonitor:
        """A monitor configured from ``GPU_*`` variables; ``kwargs`` win over them.

        Raises:
            ConfigurationError: a variable has a bad value.
        """
        options: dict[str, Any] = {
            "interval": env.number("GPU_MONITOR_INTERVAL", 5.0, minimum=1.0),
            "memory_warning": env.number("GPU_MEMORY_WARNING_THRESHOLD", 0.85, minimum=0.01, maximum=1.0),
            "memory_critical": env.number("GPU_MEMORY_CRITICAL_THRESHOLD", 0.97, minimum=0.01, maximum=1.0),
            "util_floor": env.number("GPU_UTILIZATION_FLOOR", 10.0, minimum=0.0, maximum=100.0) or None,
            "util_window": env.number("GPU_UTILIZATION_WINDOW", 300.0, minimum=0.0),
            "temperature": env.number("GPU_TEMPERATURE_THRESHOLD", None, minimum=1.0),
        }
        if options["memory_critical"] <= options["memory_warning"]:
            raise ConfigurationError(
                "GPU_MEMORY_CRITICAL_THRESHOLD", "must be above GPU_MEMORY_WARNING_THRESHOLD"
            )
        options.update(kwargs)
        return cls(manager, **options)

    # What the monitor knows ----------------------------------------------------------

    @property
    def readings(self) -> dict[str, GpuReading]:
        """The latest reading per device label."""
        with self._lock:
            return dict(self._latest)

    @property
    def peaks(self) -> dict[str, MemoryPeak]:
        """The highest memory use seen per device label."""
        with self._lock:
            return dict(self._peaks)

    @property
    def device_count(self) -> int | None:
        """How many GPUs are watched (0 without GPU stats); None until the first reading."""
        with self._lock:
            if self._unavailable is not None:
                return 0
            return None if self._states is None else len(self._states)

    @property
    def unavailable(self) -> str | None:
        """Why there are no GPU stats (no driver, no library, ...), or None when there are."""
        return self._unavailable

    def summary(self) -> dict[str, Any]:
        """Peak memory per device as JSON-safe values, for the training summary."""
        return {
            label: {
                "peak_bytes": peak.used,
                "total_bytes": peak.total,
                "peak_fraction": round(peak.fraction, 4),
            }
            for label, peak in self.peaks.items()
        }

    def status(self) -> MonitorStatus:
        """What is watched, or ``no GPU stats: <why>``."""
        with self._lock:
            if self._unavailable is not None:
                return MonitorStatus(self.name, False, f"no GPU stats: {self._unavailable}")
            if self._states is None:
                state = "waiting for the first reading" if self.running else "not started"
                return MonitorStatus(self.name, False, state)
            parts = [f"watching {', '.join(s.device.label for s in self._states if not s.lost)}"]
            for s in self._states:
                if s.lost:
                    parts.append(f"{s.device.label} is lost")
                elif s.unsupported:
                    parts.append(f"{s.device.label} does not report {', '.join(sorted(s.unsupported))}")
            return MonitorStatus(self.name, self._active, "; ".join(parts))

    # Polling --------------------------------------------------------------------------

    def _poll(self) -> None:
        states = self._ready()
        if not states:
            return
        now = self._clock()
        for state in states:
            reading = None if state.lost else self._read(state)
            if reading is not None:
                self._latest[reading.label] = reading
                self._check(state, reading, now)
        if all(s.lost or "memory" in s.unsupported for s in states):
            self._give_up("no watched GPU answers memory queries (lost, or a MIG slice without support)")

    def _done(self) -> bool:
        return self._unavailable is not None

    def _ready(self) -> list[DeviceState]:
        if self._pid != os.getpid():
            # Forked after NVML was set up: handles from another process are not ours.
            self._pid, self._initialised, self._active = os.getpid(), False, False
        if self._unavailable is not None:
            return []
        if self._active and self._states is not None:
            return self._states
        nvml = self._module()
        if nvml is None:
            return []
        try:
            nvml.nvmlInit()
            self._initialised = True
            devices, notes = resolve_devices(nvml, self.devices)
        except Exception as error:
            self._give_up(describe_error(nvml, error))
            return []
        for note in notes:
            log.warning("afs-callbacks: GPU monitor: %s", note)
        if not devices:
            hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
            why = "no GPU is visible to this process"
            self._give_up(f"{why} (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None else why)
            return []
        margin = self.margin
        self._states = [
            DeviceState(
                device,
                Hysteresis(self.memory_warning, self.memory_warning - margin),
                Hysteresis(self.memory_critical, self.memory_critical - margin),
                None
                if self.temperature is None
                else Hysteresis(self.temperature, self.temperature - 100 * margin),
            )
            for device in devices
        ]
        self._active = True
        log.info(
            "afs-callbacks: GPU monitor watching %s", ", ".join(f"{d.label} ({d.name})" for d in devices)
        )
        return self._states

    def _module(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        try:
            import pynvml
        except ImportError:
            self._give_up("nvidia-ml-py is not installed: pip install 'afs-callbacks[gpu]'")
            return None
        self._nvml = pynvml
        return pynvml

    def _give_up(self, reason: str) -> None:
        if self._unavailable is None:
            self._unavailable = reason
            log.info("afs-callbacks: no GPU stats: %s", reason)
        self._release()

    def _release(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except Exception as error:
                log.debug("afs-callbacks: nvmlShutdown failed: %s", error)
        self._active = False  # a restart initialises NVML and resolves the devices again

    def _read(self, state: DeviceState) -> GpuReading | None:
        nvml, handle = self._nvml, state.device.handle
        memory = self._query(state, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        if memory is None:
            return None
        rates = self._query(state, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        temperature = self._query(state, "temperature", lambda: read_temperature(nvml, handle))
        milliwatts = self._query(state, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        used, total = int(memory.used), int(memory.total)
        peak = self._peaks.get(state.device.label)
        if peak is None or used > peak.used:
            self._peaks[state.device.label] = MemoryPeak(used, total)
        return GpuReading(
            label=state.device.label,
            uuid=state.device.uuid,
            name=state.device.name,
            memory_used=used,
            memory_total=total,
            utilization=None if rates is None else float(rates.gpu),
            temperature=None if temperature is None else float(temperature),
            power=None if milliwatts is None else milliwatts / 1000.0,
        )

    def _query(self, state: DeviceState, metric: str, call: Callable[[], Any]) -> Any:
        if metric in state.unsupported or state.lost:
            return None
        try:
            return call()
        except Exception as error:
            label = state.device.label
            if is_nvml_error(self._nvml, error, "NVMLError_NotSupported"):
                state.unsupported.add(metric)
                log.info("afs-callbacks: %s does not report %s (a MIG slice?); not watched", label, metric)
            elif is_nvml_error(self._nvml, error, "NVMLError_GpuIsLost"):
                state.lost = True
                log.warning("afs-callbacks: %s is lost (fell off the bus?); no more stats from it", label)
            elif metric not in state.failed:
                state.failed.add(metric)  # a transient error: skip this reading, log once
                log.warning("afs-callbacks: reading %s of %s failed: %s", metric, label, error)
            return None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # Modules and driver handles do not pickle; the worker loads and resolves its own.
        state.update(_states=None, _initialised=False, _active=False)
        if isinstance(state.get("_nvml"), type(os)):
            state["_nvml"] = None
        return state
