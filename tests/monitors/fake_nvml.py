"""A stand-in for ``pynvml`` (nvidia-ml-py) for machines without an NVIDIA GPU.

NVML needs a driver and a GPU, which CI machines lack, so the GPU monitor's tests drive it
through this module-like object. It implements the subset of the pynvml API the monitor
uses, with the same signatures, return shapes (``.used``/``.total`` memory structures,
``.gpu`` utilisation) and error classes built the way pynvml builds them: ``NVMLError(code)``
returns the subclass named after the code (``NVMLError_NotSupported``, ...), with the codes
of ``nvml.h``. ``test_fake_matches_pynvml`` checks that against the installed package.

Example::

    nvml = FakeNVML([FakeGPU("GPU-aaaa", used=70 * GIB)])
    nvml.devices[0].errors["utilization"] = NVML_ERROR_NOT_SUPPORTED  # a MIG slice
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

GIB = 2**30

NVML_TEMPERATURE_GPU = 0

# Error codes from nvml.h, as pynvml names them.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999

CODES = {name: value for name, value in globals().items() if name.startswith("NVML_ERROR_")}


class NVMLError(Exception):
    """pynvml's base error: ``NVMLError(code)`` builds the subclass registered for ``code``."""

    _valClassMapping: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        error = Exception.__new__(cls)
        error.value = value
        return error

    def __init__(self, value: int | None = None) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        names = {code: name for name, code in CODES.items()}
        return names.get(self.value, f"NVML Error with code {self.value}").replace("NVML_ERROR_", "")


def _error_class_name(constant: str) -> str:
    # pynvml: NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost
    return "NVMLError_" + string.capwords(constant.replace("NVML_ERROR_", ""), "_").replace("_", "")


def _make_error_classes() -> dict[str, type[NVMLError]]:
    classes = {}
    for constant, code in CODES.items():

        def new(cls: type[NVMLError], *args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(_error_class_name(constant), (NVMLError,), {"__new__": new})
        NVMLError._valClassMapping[code] = cls
        classes[cls.__name__] = cls
    return classes


ERROR_CLASSES = _make_error_classes()


@dataclass
class FakeGPU:
    """One device as NVML would report it. ``errors`` maps a query (``memory``,
    ``utilization``, ``temperature``, ``temperature_v``, ``power``, ``name``) to the NVML
    error code it raises."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = 80 * GIB
    used: int = 1 * GIB
    utilization: int = 90
    temperature: int = 60
    power_mw: int = 250_000
    errors: dict[str, int] = field(default_factory=dict)

    def _answer(self, query: str, value: Any) -> Any:
        if query in self.errors:
            raise NVMLError(self.errors[query])
        return value

    def use(self, fraction: float) -> None:
        """Set memory in use as a fraction of the total."""
        self.used = int(self.total * fraction)


class FakeNVML:
    """The ``pynvml`` module's calls the monitor makes, over a list of :class:`FakeGPU`.

    Args:
        devices: GPUs in NVML (PCI bus) order.
        mig: MIG slices by their UUID (resolved only through ``nvmlDeviceGetHandleByUUID``).
        init_error: an NVML error code ``nvmlInit`` raises (no driver, no library, ...).
        without: function names this "version" of the bindings lacks.
    """

    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVMLError = NVMLError

    def __init__(
        self,
        devices: list[FakeGPU],
        *,
        mig: dict[str, FakeGPU] | None = None,
        init_error: int | None = None,
        without: tuple[str, ...] = (),
    ) -> None:
        self.devices = devices
        self.mig = dict(mig or {})
        self.init_error = init_error
        self.without = set(without)
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: list[str] = []
        for name, cls in ERROR_CLASSES.items():
            setattr(self, name, cls)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "without"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    @property
    def initialised(self) -> bool:
        """Whether init calls outnumber shutdowns (NVML counts references)."""
        return self.init_calls > self.shutdown_calls

    def _require_init(self, call: str) -> None:
        self.calls.append(call)
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    # Library ------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        self._require_init("nvmlShutdown")
        self.shutdown_calls += 1

    # Devices ------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._require_init("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:
        self._require_init("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGPU:
        self._require_init("nvmlDeviceGetHandleByUUID")
        for device in [*self.devices, *self.mig.values()]:
            if device.uuid == uuid:
                return device
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: FakeGPU) -> str:
        self._require_init("nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGPU) -> str:
        self._require_init("nvmlDeviceGetName")
        return str(handle._answer("name", handle.name))

    # Readings -----------------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGPU) -> SimpleNamespace:
        self._require_init("nvmlDeviceGetMemoryInfo")
        handle._answer("memory", None)
        return SimpleNamespace(total=handle.total, used=handle.used, free=handle.total - handle.used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGPU) -> SimpleNamespace:
        self._require_init("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=handle._answer("utilization", handle.utilization), memory=0)

    def nvmlDeviceGetTemperatureV(self, handle: FakeGPU, sensor: int, version: int = 0x100000C) -> int:
        self._require_init("nvmlDeviceGetTemperatureV")
        assert sensor == NVML_TEMPERATURE_GPU
        handle._answer("temperature_v", None)
        return int(handle._answer("temperature", handle.temperature))

    def nvmlDeviceGetTemperature(self, handle: FakeGPU, sensor: int) -> int:
        self._require_init("nvmlDeviceGetTemperature")
        assert sensor == NVML_TEMPERATURE_GPU
        return int(handle._answer("temperature", handle.temperature))

    def nvmlDeviceGetPowerUsage(self, handle: FakeGPU) -> int:
        self._require_init("nvmlDeviceGetPowerUsage")
        return int(handle._answer("power", handle.power_mw))
