"""GPU sources behind one interface: NVML on GPU hosts, a simulation where configured.

The simulated source is used only when asked for (``--simulate-gpus N``); when
NVML is missing and no simulation was asked for, :func:`open_gpu_source` fails
with a message saying so, never silently falling back.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Fault",
    "GpuInfo",
    "GpuSample",
    "GpuSource",
    "GpuUnavailable",
    "NvmlGpuSource",
    "SimulatedGpuSource",
    "open_gpu_source",
]

log = logging.getLogger(__name__)
GIB = 1024**3


class GpuUnavailable(RuntimeError):
    """No GPU source can be opened as configured."""


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total_bytes: int


@dataclass(frozen=True, slots=True)
class XidEvent:
    code: int
    at: float  # wall clock


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int
    utilization: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    xid_events: tuple[XidEvent, ...] = ()
    throttle_reasons: tuple[str, ...] = ()
    hung: bool = False
    recent_xids: tuple[int, ...] = ()


class GpuSource(Protocol):
    def inventory(self) -> list[GpuInfo]: ...
    def sample(self) -> list[GpuSample]: ...
    def close(self) -> None: ...


# --- simulation ------------------------------------------------------------------------------


class Fault(enum.StrEnum):
    XID79 = "xid79"  # fallen off the bus
    ECC_UNCORRECTABLE = "ecc"  # double-bit ECC error (XID 48)
    OVERHEAT = "overheat"
    HUNG = "hung"


# memory per GPU model (vendor data sheets)
_MEMORY_GIB = {"H200": 141, "H100": 80, "A100": 80, "L40S": 48, "A10G": 24, "L4": 24, "T4": 16}


@dataclass
class _SimGpu:
    info: GpuInfo
    faults: set[Fault] = field(default_factory=set)
    pending_xids: list[XidEvent] = field(default_factory=list)
    recent_xids: set[int] = field(default_factory=set)
    ecc_uncorrected: int = 0


class SimulatedGpuSource:
    """``count`` GPUs of ``gpu_type`` with plausible figures and injectable faults."""

    def __init__(
        self,
        count: int,
        gpu_type: str = "H100",
        *,
        seed: int = 0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if count < 0:
            raise ValueError("simulated GPU count must be >= 0")
        memory = _MEMORY_GIB.get(gpu_type.upper(), 80) * GIB
        self._rng = random.Random(seed)
        self._wall = wall_clock
        self._gpus = [
            _SimGpu(GpuInfo(i, f"GPU-sim-{seed:04x}-{i:04d}", f"Simulated {gpu_type}", memory))
            for i in range(count)
        ]

    def inventory(self) -> list[GpuInfo]:
        return [g.info for g in self._gpus]

    def inject(self, index: int, fault: Fault) -> None:
        gpu = self._gpus[index]
        gpu.faults.add(fault)
        now = self._wall()
        if fault == Fault.XID79:
            gpu.pending_xids.append(XidEvent(79, now))
            gpu.recent_xids.add(79)
        elif fault == Fault.ECC_UNCORRECTABLE:
            gpu.ecc_uncorrected += 1
            gpu.pending_xids.append(XidEvent(48, now))
            gpu.recent_xids.add(48)

    def clear(self, index: int) -> None:
        """A GPU reset: faults, counters and remembered XIDs are gone."""
        gpu = self._gpus[index]
        gpu.faults.clear()
        gpu.pending_xids.clear()
        gpu.recent_xids.clear()
        gpu.ecc_uncorrected = 0

    def sample(self) -> list[GpuSample]:
        rng = self._rng
        samples = []
        for gpu in self._gpus:
            total = gpu.info.memory_total_bytes
            overheat = Fault.OVERHEAT in gpu.faults
            lost = Fault.XID79 in gpu.faults or Fault.HUNG in gpu.faults
            samples.append(
                GpuSample(
                    index=gpu.info.index,
                    utilization=0.0 if lost else round(rng.uniform(20, 90), 1),
                    memory_used_bytes=int(total * rng.uniform(0.3, 0.7)),
                    memory_total_bytes=total,
                    temperature_c=96.0 if overheat else round(rng.uniform(40, 70), 1),
                    power_w=round(rng.uniform(150, 500), 1),
                    ecc_corrected=0,
                    ecc_uncorrected=gpu.ecc_uncorrected,
                    xid_events=tuple(gpu.pending_xids),
                    throttle_reasons=("hw_thermal",) if overheat else (),
                    hung=Fault.HUNG in gpu.faults,
                    recent_xids=tuple(sorted(gpu.recent_xids)),
                )
            )
            gpu.pending_xids.clear()
        return samples

    def close(self) -> None:
        pass


# --- NVML ------------------------------------------------------------------------------------

_THROTTLES = {
    "clocksThrottleReasonGpuIdle": "gpu_idle",
    "clocksThrottleReasonApplicationsClocksSetting": "applications_clocks",
    "clocksThrottleReasonSwPowerCap": "sw_power_cap",
    "clocksThrottleReasonHwSlowdown": "hw_slowdown",
    "clocksThrottleReasonSwThermalSlowdown": "sw_thermal",
    "clocksThrottleReasonHwThermalSlowdown": "hw_thermal",
    "clocksThrottleReasonHwPowerBrakeSlowdown": "hw_power_brake",
}


class NvmlGpuSource:
    """Real GPUs through NVML (``nvidia-ml-py``). XIDs come from NVML's event set."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - the package is a dependency
            raise GpuUnavailable("nvidia-ml-py is not installed") from exc
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML cannot start (no NVIDIA driver?): {exc}") from exc
        count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._info = []
        for i, h in enumerate(self._handles):
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            memory = pynvml.nvmlDeviceGetMemoryInfo(h).total
            self._info.append(GpuInfo(i, _text(uuid), _text(name), int(memory)))
        self._recent: dict[int, set[int]] = {i: set() for i in range(count)}
        self._events: Any = None
        try:
            self._events = pynvml.nvmlEventSetCreate()
            for h in self._handles:
                pynvml.nvmlDeviceRegisterEvents(
                    h, pynvml.nvmlEventTypeXidCriticalError, self._events
                )
        except pynvml.NVMLError as exc:
            log.warning("XID events are not available from NVML: %s", exc)
            self._events = None

    def inventory(self) -> list[GpuInfo]:
        return list(self._info)

    def _drain_xids(self) -> dict[int, list[XidEvent]]:
        nv = self._nvml
        found: dict[int, list[XidEvent]] = {}
        if self._events is None:
            return found
        uuids = {g.uuid: g.index for g in self._info}
        while True:
            try:
                event = nv.nvmlEventSetWait(self._events, 0)
            except nv.NVMLError:
                return found  # timeout: no more events
            index = uuids.get(_text(nv.nvmlDeviceGetUUID(event.device)), -1)
            if index >= 0:
                found.setdefault(index, []).append(XidEvent(int(event.eventData), time.time()))
                self._recent[index].add(int(event.eventData))

    def sample(self) -> list[GpuSample]:
        nv = self._nvml
        xids = self._drain_xids()
        samples = []
        for info, h in zip(self._info, self._handles, strict=True):
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h).gpu
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                temp = nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
                power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
                reasons = nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)
                throttles = tuple(
                    label
                    for attr, label in _THROTTLES.items()
                    if reasons & getattr(nv, f"nvml{attr[0].upper()}{attr[1:]}", 0)
                )
                corrected, uncorrected = self._ecc(h)
                hung = False
            except nv.NVMLError as exc:
                log.warning("GPU %d does not answer NVML: %s", info.index, exc)
                util, temp, power, throttles, corrected, uncorrected = 0, 0.0, 0.0, (), 0, 0
                mem = None
                hung = True
            samples.append(
                GpuSample(
                    index=info.index,
                    utilization=float(util),
                    memory_used_bytes=int(mem.used) if mem else 0,
                    memory_total_bytes=int(mem.total) if mem else info.memory_total_bytes,
                    temperature_c=float(temp),
                    power_w=float(power),
                    ecc_corrected=corrected,
                    ecc_uncorrected=uncorrected,
                    xid_events=tuple(xids.get(info.index, ())),
                    throttle_reasons=throttles,
                    hung=hung,
                    recent_xids=tuple(sorted(self._recent[info.index])),
                )
            )
        return samples

    def _ecc(self, handle: Any) -> tuple[int, int]:
        nv = self._nvml
        try:
            corrected = nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC
            )
            uncorrected = nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            )
        except nv.NVMLError_NotSupported:
            return 0, 0  # consumer GPUs have no ECC
        return int(corrected), int(uncorrected)

    def close(self) -> None:
        nv = self._nvml
        try:
            if self._events is not None:
                nv.nvmlEventSetFree(self._events)
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_gpu_source(simulate: int | None, gpu_type: str = "H100", *, seed: int = 0) -> GpuSource:
    """``simulate`` N → N simulated GPUs; None → NVML, or a clear error when absent."""
    if simulate is not None:
        log.warning("using %d SIMULATED %s GPUs (not real hardware)", simulate, gpu_type)
        return SimulatedGpuSource(simulate, gpu_type, seed=seed)
    try:
        return NvmlGpuSource()
    except GpuUnavailable as exc:
        raise GpuUnavailable(
            f"{exc}. On a host without NVIDIA GPUs pass --simulate-gpus N to use simulated GPUs."
        ) from exc
