"""NVML plumbing: which GPUs this process uses, what a reading holds, what errors mean.

``CUDA_VISIBLE_DEVICES`` may hold indices or UUIDs (``GPU-...``, ``MIG-...``, unique
prefixes allowed), and CUDA numbers devices fastest-first while NVML numbers them by PCI bus,
so devices are matched by UUID wherever a UUID is known. The parsing follows CUDA's rules as
``torch.cuda`` implements them: the list ends at the first invalid entry, and a repeated
entry makes it empty.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from afs_callbacks.monitors._poller import format_bytes

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
