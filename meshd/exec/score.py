"""Measured compute score: what this node can actually do, not what it claims.

Rules:
- CPU: numpy float64 ``n x n`` matmul (2 n^3 flops), repeated within a
  ``budget_s`` time budget (at least ``min_repeats``); the *best* run counts
  (least disturbed by other load). ~0.3-1 s in total with the defaults.
- GPU: the same with float32 on the first device when CuPy or PyTorch with
  CUDA is importable and works; otherwise ``gpu_gflops=None`` (never raises).
- Tier (from the GPU *model and memory*, not the measurement, so a busy GPU
  does not change class):
    * no GPU                                     -> ``"cpu"``
    * any GPU whose name has a data-centre family token (A100, H100, H200,
      B200, V100, P100, T4, L4, L40, A10, A30, A40, "Tesla", Instinct MI*),
      or with >= ``DATACENTER_MIN_MEMORY_MB`` (40 GiB) memory -> ``"datacenter-gpu"``
    * otherwise                                   -> ``"consumer-gpu"``
- Blocking and CPU-heavy: call from a worker thread
  (``trio.to_thread.run_sync``), once at start-up and then rarely.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .gpu import GpuDevice

Tier = Literal["cpu", "consumer-gpu", "datacenter-gpu"]
DATACENTER_MIN_MEMORY_MB = 40 * 1024
_DATACENTER_RE = re.compile(
    r"\b(A100|A800|H100|H800|H200|GH200|B100|B200|GB200|V100|P100|P40|T4|L4|L20|L40S?|"
    r"A10G?|A16|A30|A40|TESLA|INSTINCT|MI\d{2,3}X?)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, kw_only=True)
class ScoreParams:
    matrix_n: int = 1024  # CPU matmul size (2.1 Gflop per run)
    budget_s: float = 0.4  # time budget for the repeats (per device kind)
    min_repeats: int = 3
    max_repeats: int = 200
    gpu_matrix_n: int = 4096


@dataclass(frozen=True, kw_only=True)
class ComputeScore:
    cpu_gflops: float
    gpu_gflops: float | None
    tier: Tier
    measured_at_monotonic: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_gflops": round(self.cpu_gflops, 3),
            "gpu_gflops": None if self.gpu_gflops is None else round(self.gpu_gflops, 3),
            "tier": self.tier,
        }


def tier_for(devices: Sequence[GpuDevice]) -> Tier:
    """The tier rule above."""
    if not devices:
        return "cpu"
    for d in devices:
        if _DATACENTER_RE.search(d.name) or d.memory_total_mb >= DATACENTER_MIN_MEMORY_MB:
            return "datacenter-gpu"
    return "consumer-gpu"


def _best_gflops(
    run_once: Callable[[], object], flops: float, params: ScoreParams, clock: Callable[[], float]
) -> float:
    run_once()  # warm-up: BLAS thread pool start, page faults
    best = float("inf")
    start = clock()
    for i in range(params.max_repeats):
        t0 = clock()
        run_once()
        best = min(best, clock() - t0)
        if i + 1 >= params.min_repeats and clock() - start >= params.budget_s:
            break
    return flops / max(best, 1e-9) / 1e9


def measure_cpu_gflops(
    params: ScoreParams = ScoreParams(), clock: Callable[[], float] = time.perf_counter
) -> float:
    n = params.matrix_n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    out = np.empty((n, n))
    return _best_gflops(lambda: np.matmul(a, b, out=out), 2.0 * n**3, params, clock)


def measure_gpu_gflops(
    params: ScoreParams = ScoreParams(), clock: Callable[[], float] = time.perf_counter
) -> float | None:
    """GFLOPS of the first GPU via CuPy or PyTorch, or None if neither works here."""
    n = params.gpu_matrix_n
    for backend in (_cupy_matmul, _torch_matmul):
        try:
            run_once = backend(n)
        except Exception:  # not installed, no CUDA, driver trouble: try the next
            continue
        if run_once is not None:
            try:
                return _best_gflops(run_once, 2.0 * n**3, params, clock)
            except Exception:
                return None
    return None


def _cupy_matmul(n: int) -> Callable[[], None] | None:
    import cupy  # type: ignore[import-not-found]

    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)

    def run() -> None:
        cupy.matmul(a, b)
        cupy.cuda.Stream.null.synchronize()

    return run


def _torch_matmul(n: int) -> Callable[[], None] | None:
    import torch  # type: ignore[import-not-found]

    if not torch.cuda.is_available():
        return None
    a = torch.randn((n, n), device="cuda", dtype=torch.float32)
    b = torch.randn((n, n), device="cuda", dtype=torch.float32)

    def run() -> None:
        torch.matmul(a, b)
        torch.cuda.synchronize()

    return run


def measure_compute_score(
    devices: Sequence[GpuDevice],
    params: ScoreParams = ScoreParams(),
    clock: Callable[[], float] = time.monotonic,
) -> ComputeScore:
    """Benchmark now (blocking, ~0.5-1 s) and classify."""
    cpu = measure_cpu_gflops(params)
    gpu = measure_gpu_gflops(params) if devices else None
    return ComputeScore(
        cpu_gflops=cpu, gpu_gflops=gpu, tier=tier_for(devices), measured_at_monotonic=clock()
    )
