"""The GPU monitor's alert rules: memory, starvation and heat, per device.

Kept apart from :mod:`afs_callbacks.monitors.gpu` (which reads NVML) so each file has one
job: this one turns a reading into alerts, with the hysteresis each device remembers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.formatting import format_duration
from afs_callbacks.monitors._devices import GpuDevice, GpuReading
from afs_callbacks.monitors._poller import Hysteresis, Poller, format_bytes


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


class GpuAlerts(Poller):
    """Alert rules of :class:`~afs_callbacks.monitors.gpu.GPUMonitor` (its base; internal)."""

    memory_warning: float
    memory_critical: float
    util_floor: float | None
    util_window: float
    temperature: float | None
    margin: float

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
