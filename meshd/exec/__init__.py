"""meshd.exec — executors (Docker sandbox, opt-in subprocess), GPUs, hardware, compute score.

Import the public names from here. Modules:
``base`` (interface and bounds), ``docker_exec``, ``process_exec``,
``factory`` (``make_executor``), ``gpu``, ``hardware``, ``score``,
``outputs`` (output/log caps), ``cgroups`` (per-job accounting).
Docker and the process executor are imported lazily by ``make_executor``.
"""

from .base import (
    ExecParams,
    ExecRequest,
    ExecResult,
    Executor,
    ExecutorUnavailable,
    InvalidRequest,
)
from .factory import make_executor
from .gpu import GpuAllocationError, GpuAllocator, GpuDevice, GpuDiscovery, discover_gpus
from .hardware import HardwareProfile, profile_hardware
from .score import ComputeScore, ScoreParams, measure_compute_score, tier_for

__all__ = [
    "ComputeScore",
    "ExecParams",
    "ExecRequest",
    "ExecResult",
    "Executor",
    "ExecutorUnavailable",
    "GpuAllocationError",
    "GpuAllocator",
    "GpuDevice",
    "GpuDiscovery",
    "HardwareProfile",
    "InvalidRequest",
    "ScoreParams",
    "discover_gpus",
    "make_executor",
    "measure_compute_score",
    "profile_hardware",
    "tier_for",
]
