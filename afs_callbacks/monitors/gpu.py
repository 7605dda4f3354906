"""GPU monitor: NVML readings of memory, utilisation, temperature and power, with alerts.

NVML (``nvidia-ml-py``, the ``gpu`` extra) is imported and initialised on the polling
thread's first reading, never at import or construction: callbacks are pickled by
``ddp_spawn`` and a parent that forks DDP workers must not hold a driver handle. Without a
driver, a library or a supported query the monitor logs one line, reports "no GPU stats"
in :meth:`GPUMonitor.status` and goes on; nothing here raises into training.

Which GPUs: ``CUDA_VISIBLE_DEVICES`` may hold indices or UUIDs (``GPU-...``, ``MIG-...``,
unique prefixes allowed), and CUDA numbers devices fastest-first while NVML numbers them by
PCI bus, so devices are matched by UUID wherever a UUID is known. The parsing follows CUDA's
rules as ``torch.cuda`` implements them: the list ends at the first invalid entry, and a
repeated entry makes it empty.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from afs_callbacks._log import get_logger
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import format_bytes, format_duration
from afs_callbacks.monitors._poller import Hysteresis, MonitorStatus, Poller, as_fraction

if TYPE_CHECKING:
    from afs_callbacks.config import Env
    from afs_callbacks.manager import NotificationManager

log = get_logger(__name__)

__all__ = ["GPUMonitor", "GpuReading", "MemoryPeak"]

#: What an NVML error class means for the user, by the class name pynvml gives it.
_REASONS = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver library (libnvidia-ml) on this machine",
    "NVMLError_DriverNotLoaded": "the NVIDIA driver is not loaded",
    "NVMLError_NoPermission": "no permission to query the GPUs",
    "NVMLError_LibRmVersionMismatch": "the NVIDIA driver and its library versions differ (reboot?)",
    "NVMLError_GpuIsLost": "a GPU is lost (fell off the bus)",
    "NVMLError_NotSupported": "NVML does not support the query on this device",
}


@dataclass(frozen=True)
class GpuDevice:
    """One watched device: its NVML handle and how alerts name it."""

    label: str
    uuid: str
    name: str
    handle: Any
    index: int | None = None


@dataclass(frozen=True)
class GpuReading:
    """One device's figures at one moment.

    Attributes:
        label: ``GPU<n>`` with NVML's index (what ``nvidia-smi`` shows), or a MIG UUID prefix.
        uuid: the device UUID.
        name: the product name.
        memory_used: bytes in use on the device, all processes together.
        memory_total: bytes on the device.
        utilization: percent of time a kernel ran, or None where unsupported (MIG).
        temperature: degrees Celsius, or None.
        power: watts, or None.
    """

    label: str
    uuid: str
    name: str
    memory_used: int
    memory_total: int
    utilization: float | None = None
    temperature: float | None = None
    power: float | None = None

    @property
    def memory_fraction(self) -> float:
        """Share of the device's memory in use, 0-1."""
        return self.memory_used / self.memory_total if self.memory_total else 0.0


@dataclass(frozen=True)
class MemoryPeak:
    """The highest memory use seen on a device during the run."""

    used: int
    total: int

    @property
    def fraction(self) -> float:
        """Peak share of the device's memory, 0-1."""
        return self.used / self.total if self.total else 0.0

    def describe(self) -> str:
        """``'61.2 GiB of 80.0 GiB (77%)'``."""
        return f"{format_bytes(self.used)} of {format_bytes(self.total)} ({self.fraction:.0%})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe figures: ``peak_bytes``, ``total_bytes``, ``peak_fraction``."""
        return {"peak_bytes": self.used, "total_bytes": self.total, "peak_fraction": round(self.fraction, 4)}


@dataclass
class DeviceState:
    """What the monitor remembers about one device between readings."""

    device: GpuDevice
    warning: Hysteresis
    critical: Hysteresis
    temperature: Hysteresis | None
    unsupported: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    lost: bool = False
    low_since: float | None = None
    low_samples: list[float] = field(default_factory=list)
    low_alerted: bool = False


class GPUMonitor(Poller):
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
        return {label: peak.to_dict() for label, peak in self.peaks.items()}

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
            from afs_callbacks._install import install_hint

            self._give_up(f"nvidia-ml-py is not installed: {install_hint('gpu')}")
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

    # Alert rules -------------------------------------------------------------------

    def _check(self, state: DeviceState, reading: GpuReading, now: float) -> None:
        fraction = reading.memory_fraction
        critical, warning = state.critical.update(fraction), state.warning.update(fraction)
        if critical or warning:
            limit = self.memory_critical if critical else self.memory_warning
            self._alert(
                EventType.GPU_MEMORY,
                NotificationLevel.CRITICAL if critical else NotificationLevel.WARNING,
                f"{reading.label} memory at {fraction:.0%}",
                f"{reading.label} ({reading.name}) uses {format_bytes(reading.memory_used)} of "
                f"{format_bytes(reading.memory_total)}, past the {limit:.0%} "
                + (
                    "critical threshold: an out-of-memory error is close."
                    if critical
                    else "warning threshold."
                ),
                limit=limit,
                **_context(reading, "memory-critical" if critical else "memory"),
            )
        self._check_utilization(state, reading, now)
        guard = state.temperature
        if guard is not None and reading.temperature is not None and guard.update(reading.temperature):
            self._alert(
                EventType.GPU_TEMPERATURE,
                NotificationLevel.WARNING,
                f"{reading.label} at {reading.temperature:.0f} °C",
                f"{reading.label} ({reading.name}) reached {reading.temperature:.0f} °C, past the "
                f"{self.temperature:g} °C threshold; a hot GPU throttles its clocks.",
                limit=self.temperature,
                **_context(reading, "temperature"),
            )

    def _check_utilization(self, state: DeviceState, reading: GpuReading, now: float) -> None:
        if self.util_floor is None or reading.utilization is None:
            return
        if reading.utilization < self.util_floor:
            if state.low_since is None:
                state.low_since, state.low_samples = now, []
            state.low_samples.append(reading.utilization)
            lasted = now - state.low_since
            if not state.low_alerted and lasted >= self.util_window:
                state.low_alerted = True
                average = sum(state.low_samples) / len(state.low_samples)
                self._alert(
                    EventType.GPU_UTILIZATION,
                    NotificationLevel.WARNING,
                    f"{reading.label} starved: {average:.0f}% busy for {format_duration(lasted)}",
                    f"{reading.label} ({reading.name}) has been below {self.util_floor:g}% utilisation for "
                    f"{format_duration(lasted)} (average {average:.0f}%). The GPU is waiting: on data "
                    "loading, CPU work, I/O or a stalled process.",
                    limit=self.util_floor,
                    **_context(reading, "utilization"),
                )
            return
        state.low_since = None
        if reading.utilization >= self.util_floor + 100 * self.margin:
            state.low_alerted = False  # busy again: the next starvation is news

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # Modules and driver handles do not pickle; the worker loads and resolves its own.
        state.update(_states=None, _initialised=False, _active=False)
        if isinstance(state.get("_nvml"), type(os)):
            state["_nvml"] = None
        return state


def _context(reading: GpuReading, what: str) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "memory_used_gib": round(reading.memory_used / 2**30, 2),
        "memory_total_gib": round(reading.memory_total / 2**30, 2),
        "memory_percent": round(100 * reading.memory_fraction, 1),
    }
    for name, value in (
        ("utilization_percent", reading.utilization),
        ("temperature_c", reading.temperature),
        ("power_w", reading.power),
    ):
        if value is not None:
            metrics[name] = round(value, 1)
    return {
        "key": f"{reading.uuid}:{what}",
        "device": reading.label,
        "gpu_uuid": reading.uuid,
        "gpu_name": reading.name,
        "metrics": metrics,
    }


def is_nvml_error(nvml: Any, error: BaseException, class_name: str) -> bool:
    """Whether ``error`` is the NVML error class ``class_name`` of module ``nvml``."""
    cls = getattr(nvml, class_name, None)
    return isinstance(cls, type) and isinstance(error, cls)


def describe_error(nvml: Any, error: BaseException) -> str:
    """A sentence saying why NVML cannot give stats."""
    for class_name, reason in _REASONS.items():
        if is_nvml_error(nvml, error, class_name):
            return reason
    base = getattr(nvml, "NVMLError", None)
    if isinstance(base, type) and isinstance(error, base):
        return f"NVML error: {error}"
    return f"NVML failed: {type(error).__name__}: {error}"


def parse_visible_devices(value: str) -> list[int] | list[str]:
    """Entries of a ``CUDA_VISIBLE_DEVICES`` value: indices, or UUIDs (``GPU-``/``MIG-``).

    ``"0,2"`` → ``[0, 2]``; ``"1,-1,0"`` → ``[1]`` (a negative or invalid entry ends the
    list); ``"0,0"`` → ``[]``; ``""`` → ``[]`` (no GPU).
    """
    entries = [entry.strip() for entry in value.split(",")]
    prefix = next((p for p in ("GPU-", "MIG-") if entries[0].upper().startswith(p)), None)
    if prefix is not None:
        uuids: list[str] = []
        for entry in entries:
            if not entry.upper().startswith(prefix):
                break
            if entry in uuids:
                return []
            uuids.append(entry)
        return uuids
    indices: list[int] = []
    for entry in entries:
        digits = entry[: len(entry) - len(entry.lstrip("0123456789"))]
        if not digits:
            break  # like strtoul: "1gpu" is 1, "gpu" or "-1" ends the list
        if int(digits) in indices:
            return []
        indices.append(int(digits))
    return indices


def resolve_devices(nvml: Any, wanted: Sequence[int | str] | None) -> tuple[list[GpuDevice], list[str]]:
    """The devices to watch, and notes worth a log line (unmatched or ambiguous entries).

    ``wanted``: NVML indices or UUIDs; None means the GPUs this process can use: the UUIDs
    CUDA reports when ``torch.cuda`` is already initialised (exact), else
    ``CUDA_VISIBLE_DEVICES``, else every GPU.
    """
    table = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        table.append(GpuDevice(f"GPU{index}", uuid, _text(nvml.nvmlDeviceGetName(handle)), handle, index))
    notes: list[str] = []
    if wanted is None:
        wanted = _cuda_uuids()
    if wanted is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return table, notes
        wanted = parse_visible_devices(visible)
        mixed = len({d.name for d in table}) > 1
        by_index = bool(wanted) and isinstance(wanted[0], int)
        if by_index and mixed and os.environ.get("CUDA_DEVICE_ORDER", "").upper() != "PCI_BUS_ID":
            notes.append(
                "CUDA_VISIBLE_DEVICES holds indices on a machine with different GPU models; CUDA "
                "numbers the fastest first, NVML by PCI bus. Assuming PCI order: set "
                "CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs for an exact match."
            )
    chosen: list[GpuDevice] = []
    for entry in wanted:
        device = _find(nvml, table, entry, notes)
        if device is None:
            break
        if device not in chosen:
            chosen.append(device)
    return chosen, notes


def _find(nvml: Any, table: list[GpuDevice], entry: int | str, notes: list[str]) -> GpuDevice | None:
    if isinstance(entry, int):
        if 0 <= entry < len(table):
            return table[entry]
        notes.append(f"there is no GPU with index {entry} ({len(table)} GPUs)")
        return None
    key = _uuid_key(entry)
    matches = [device for device in table if _uuid_key(device.uuid).startswith(key)] if key else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        notes.append(f"GPU UUID prefix {entry!r} is ambiguous")
        return None
    if entry.upper().startswith("MIG-"):
        try:  # a MIG slice: NVML resolves its UUID to a handle of its own
            handle = nvml.nvmlDeviceGetHandleByUUID(entry)
        except Exception as error:
            notes.append(f"MIG device {entry!r} not found: {error}")
            return None
        try:
            name = _text(nvml.nvmlDeviceGetName(handle))
        except Exception:
            name = "MIG slice"
        return GpuDevice(entry[:12], entry, name, handle)
    notes.append(f"no GPU has UUID {entry!r}")
    return None


def _uuid_key(uuid: str) -> str:
    # torch reports UUIDs without NVML's "GPU-" prefix; compare the hex part only.
    text = uuid.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def _cuda_uuids() -> list[str] | None:
    """UUIDs of the CUDA devices in CUDA's order, if this process already initialised CUDA.

    Never initialises CUDA itself: doing that in a parent that forks DDP workers breaks them.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_initialized():
            return None
        return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    except Exception:
        return None


def _text(value: Any) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_temperature(nvml: Any, handle: Any) -> Any:
    """The GPU's temperature in °C: ``nvmlDeviceGetTemperatureV``, else the deprecated call."""
    sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    versioned = getattr(nvml, "nvmlDeviceGetTemperatureV", None)
    if versioned is not None:
        try:
            return versioned(handle, sensor)
        except Exception as error:
            # Older drivers lack the symbol (FunctionNotFound); older bindings its version.
            if not (
                is_nvml_error(nvml, error, "NVMLError_FunctionNotFound")
                or is_nvml_error(nvml, error, "NVMLError_ArgumentVersionMismatch")
            ):
                raise
    return nvml.nvmlDeviceGetTemperature(handle, sensor)
