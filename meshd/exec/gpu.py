"""GPUs: what NVML reports, whether the engine can hand them to containers, who has which.

Rules:
- Discovery never raises. No pynvml, no driver, no device, any NVMLError:
  an empty device list plus the reason, which ends up in decline reasons
  ("node has no GPU (NVML: ...)") and in the hardware advert.
- The engine must *say* it can do GPU device requests (an ``nvidia`` runtime
  in ``docker info``), otherwise a GPU job is declined up front. Without it a
  device request fails only at container start ("could not select device
  driver"), i.e. after we bid; ``ExecParams.assume_gpu_runtime`` overrides.
- ``GpuAllocator`` is pure (no NVML, no clock): N specific devices per job,
  exclusively, each with at least the job's minimum memory; released when
  the job ends. Its choice is deterministic: the smallest devices that fit
  (best fit, keeps big cards free for big jobs), ties by index.
- Devices are handed to Docker by UUID (stable across reboots and
  ``CUDA_VISIBLE_DEVICES`` games), as ``DeviceRequest(device_ids=[...],
  capabilities=[["gpu"]])``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class GpuDevice:
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    driver_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_total_mb": self.memory_total_mb,
            "driver_version": self.driver_version,
        }


@dataclass(frozen=True)
class GpuDiscovery:
    devices: tuple[GpuDevice, ...]
    reason: str  # why the list is empty (or "ok")


class GpuAllocationError(Exception):
    """No set of free devices satisfies the request (carries the human reason)."""


def _import_pynvml() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynvml's own deprecation notice
        import pynvml  # type: ignore[import-untyped]
    return pynvml


def discover_gpus() -> GpuDiscovery:
    """Ask NVML for the node's GPUs. Never raises."""
    try:
        nv = _import_pynvml()
    except Exception as e:  # ImportError, or a broken install
        return GpuDiscovery((), f"NVML: pynvml not importable ({e.__class__.__name__})")
    try:
        nv.nvmlInit()
    except Exception as e:
        return GpuDiscovery((), f"NVML: {_nvml_msg(e)}")
    try:
        driver = _s(nv.nvmlSystemGetDriverVersion())
        count = nv.nvmlDeviceGetCount()
        devices = []
        for i in range(count):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            devices.append(
                GpuDevice(
                    index=i,
                    uuid=_s(nv.nvmlDeviceGetUUID(h)),
                    name=_s(nv.nvmlDeviceGetName(h)),
                    memory_total_mb=int(mem.total) // (1024 * 1024),
                    driver_version=driver,
                )
            )
        if not devices:
            return GpuDiscovery((), "NVML: no devices")
        return GpuDiscovery(tuple(devices), "ok")
    except Exception as e:
        return GpuDiscovery((), f"NVML: {_nvml_msg(e)}")
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def sample_gpus(uuids: Sequence[str]) -> tuple[float, int] | None:
    """(mean utilisation %, total memory used bytes) of these devices now, or None."""
    if not uuids:
        return None
    try:
        nv = _import_pynvml()
        nv.nvmlInit()
    except Exception:
        return None
    try:
        utils, used = [], 0
        for u in uuids:
            h = nv.nvmlDeviceGetHandleByUUID(u.encode() if isinstance(u, str) else u)
            utils.append(float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
            used += int(nv.nvmlDeviceGetMemoryInfo(h).used)
        return sum(utils) / len(utils), used
    except Exception:
        return None
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def engine_gpu_runtime(docker_info: Mapping[str, Any]) -> str | None:
    """The engine's GPU-capable runtime name from ``docker info``, or None."""
    runtimes = docker_info.get("Runtimes") or {}
    for name in runtimes:
        if "nvidia" in name.lower():
            return str(name)
    return None


def device_request(devices: Iterable[GpuDevice]) -> Any:
    """Docker device request for exactly these devices."""
    from docker.types import DeviceRequest

    return DeviceRequest(device_ids=[d.uuid for d in devices], capabilities=[["gpu"]])


class GpuAllocator:
    """Exclusive assignment of specific devices to jobs. Pure; not thread-safe
    (use it from the trio thread only)."""

    def __init__(self, devices: Sequence[GpuDevice]) -> None:
        uuids = [d.uuid for d in devices]
        if len(set(uuids)) != len(uuids):
            raise ValueError("duplicate GPU uuids")
        self._devices = tuple(sorted(devices, key=lambda d: d.index))
        self._owner: dict[str, str] = {}  # uuid -> job_id
        self._by_job: dict[str, tuple[GpuDevice, ...]] = {}

    @property
    def devices(self) -> tuple[GpuDevice, ...]:
        return self._devices

    def free(self) -> tuple[GpuDevice, ...]:
        return tuple(d for d in self._devices if d.uuid not in self._owner)

    def assignments(self) -> dict[str, tuple[str, ...]]:
        """Snapshot: job_id -> device uuids."""
        return {j: tuple(d.uuid for d in ds) for j, ds in self._by_job.items()}

    def why_not(self, n: int, min_memory_mb: int = 0) -> str | None:
        """Reason ``allocate(n, min_memory_mb)`` would fail now, or None."""
        if n <= 0:
            return None
        if not self._devices:
            return "node has no GPU"
        fit = [d for d in self._devices if d.memory_total_mb >= min_memory_mb]
        if len(fit) < n:
            return (
                f"node has {len(fit)} GPU(s) with >= {min_memory_mb} MiB, job needs {n} "
                f"(devices: {', '.join(f'{d.name} {d.memory_total_mb} MiB' for d in self._devices)})"
            )
        free_fit = [d for d in fit if d.uuid not in self._owner]
        if len(free_fit) < n:
            return f"{len(free_fit)} of {len(fit)} suitable GPU(s) free, job needs {n}"
        return None

    def allocate(self, job_id: str, n: int, min_memory_mb: int = 0) -> tuple[GpuDevice, ...]:
        """Assign ``n`` devices to ``job_id``; () for n == 0. Raises GpuAllocationError."""
        if job_id in self._by_job:
            raise ValueError(f"job {job_id!r} already holds GPUs")
        if n <= 0:
            return ()
        reason = self.why_not(n, min_memory_mb)
        if reason is not None:
            raise GpuAllocationError(reason)
        candidates = sorted(
            (d for d in self.free() if d.memory_total_mb >= min_memory_mb),
            key=lambda d: (d.memory_total_mb, d.index),
        )
        chosen = tuple(sorted(candidates[:n], key=lambda d: d.index))
        for d in chosen:
            self._owner[d.uuid] = job_id
        self._by_job[job_id] = chosen
        return chosen

    def release(self, job_id: str) -> None:
        """Give back the job's devices. Unknown job: no-op (release is idempotent)."""
        for d in self._by_job.pop(job_id, ()):
            del self._owner[d.uuid]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml_msg(e: Exception) -> str:
    text = str(e) or e.__class__.__name__
    return text.strip()
