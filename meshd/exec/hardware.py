"""Hardware profile of this node, for capability adverts.

Rules:
- psutil for CPU/RAM/disk, NVML (``meshd.exec.gpu``) for GPUs; no GPU or no
  driver is normal and gives ``gpus=()`` plus ``gpu_reason``.
- ``disk_*`` describe the filesystem holding the node's data dir (where
  inputs/outputs/blobs live), not ``/``.
- Never raises for missing information: unknown values are 0 / "".
- The profile is a frozen snapshot; re-profile to refresh (RAM/disk change).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .gpu import GpuDevice, GpuDiscovery, discover_gpus


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    cpu_model: str
    cpu_logical: int
    cpu_physical: int
    ram_total_bytes: int
    ram_available_bytes: int
    disk_total_bytes: int
    disk_free_bytes: int
    gpus: tuple[GpuDevice, ...]
    gpu_reason: str
    os: str
    arch: str

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (msgpack/JSON-safe), stable keys."""
        return {
            "cpu_model": self.cpu_model,
            "cpu_logical": self.cpu_logical,
            "cpu_physical": self.cpu_physical,
            "ram_total_bytes": self.ram_total_bytes,
            "ram_available_bytes": self.ram_available_bytes,
            "disk_total_bytes": self.disk_total_bytes,
            "disk_free_bytes": self.disk_free_bytes,
            "gpus": [g.to_dict() for g in self.gpus],
            "gpu_reason": self.gpu_reason,
            "os": self.os,
            "arch": self.arch,
        }


def profile_hardware(data_dir: Path, *, gpus: GpuDiscovery | None = None) -> HardwareProfile:
    """Measure now. ``data_dir`` (or its nearest existing parent) sets the disk figures."""
    vm = psutil.virtual_memory()
    disk_total, disk_free = _disk(data_dir)
    found = gpus if gpus is not None else discover_gpus()
    return HardwareProfile(
        cpu_model=_cpu_model(),
        cpu_logical=psutil.cpu_count(logical=True) or os.cpu_count() or 0,
        cpu_physical=psutil.cpu_count(logical=False) or 0,
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
        gpus=found.devices,
        gpu_reason=found.reason,
        os=platform.system(),
        arch=platform.machine(),
    )


def _disk(path: Path) -> tuple[int, int]:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        du = psutil.disk_usage(str(p))
    except OSError:
        return 0, 0
    return int(du.total), int(du.free)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or ""
