"""Measured compute score: what this node can actually do, not what it claims.

Rules:
- CPU: a numpy float64 ``n x n`` matmul (2 n^3 flops) in a **fresh
  subprocess** (``python -c``) whose BLAS thread pool is fixed to
  ``ScoreParams.threads`` by ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` /
  ``MKL_NUM_THREADS`` / ... set in its environment *before numpy loads* (the
  only way that works for every BLAS numpy may be linked with; threadpoolctl
  is not a dependency, and the daemon's own numpy, if any, is left alone).
  After one warm-up run it times ``runs`` runs of ``reps_per_run`` matmuls
  each; the score is the **median** run and the **spread** (slowest run ÷
  fastest run) is reported beside it. One run was what the score used to be
  (a 0.4 s best-of on every core): a single loaded core stalls a
  multi-threaded BLAS at each barrier, and the same machine scored anywhere
  from 4 to 76 GFLOPS across restarts. With a fixed, small thread count the
  figure is the per-core (by default single-thread) rate, and the median
  ignores the odd disturbed run.
- Timing (``ScoreParams.timing``): ``"cpu"`` (default) divides by the CPU
  time the child spent (``time.process_time``), ``"wall"`` by elapsed time.
  CPU time does not advance while other load holds the core, so the score is
  the machine's per-core rate rather than the share of it free at start-up:
  on a 2-core machine at load average 8.5 wall timing gave 15-24 GFLOPS and
  CPU timing 47-51, against 52 idle (``tests/bench/bench_score.py``). A
  loaded worker is not hidden by this: its queue and inbox delay reach the
  origin in its bids, and a worker far slower than its claim is caught by
  the claimed-vs-achieved check (``Origin._check_claimed_score``).
- Bounded: the child stops timing once ``budget_s`` has passed (after at least
  ``min_runs``) and is killed after ``timeout_s``; the whole measurement
  never takes longer than that plus process start.
- Degrades, never raises: no numpy in the child, a crash or a timeout gives
  ``cpu_gflops = fallback_gflops`` with ``cpu_method`` saying why (shown by
  ``mesh status``), so the node still advertises and bids, priced as slow.
- GPU: the same median-of-runs with float32 on the first device when CuPy or
  PyTorch with CUDA is importable and works, and only when NVML found a
  device; otherwise ``gpu_gflops=None`` (never raises). A job that needs a
  GPU is priced with this figure (``core.placement.job_gflops``).
- Tier (from the GPU *model and memory*, not the measurement, so a busy GPU
  does not change class):
    * no GPU                                     -> ``"cpu"``
    * any GPU whose name has a data-centre family token (A100, H100, H200,
      B200, V100, P100, T4, L4, L40, A10, A30, A40, "Tesla", Instinct MI*),
      or with >= ``DATACENTER_MIN_MEMORY_MB`` (40 GiB) memory -> ``"datacenter-gpu"``
    * otherwise                                   -> ``"consumer-gpu"``
- Blocking: call from a worker thread (``trio.to_thread.run_sync``), once at
  start-up and then rarely (``RuntimeParams.score_refresh_s``).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .gpu import GpuDevice

Tier = Literal["cpu", "consumer-gpu", "datacenter-gpu"]
DATACENTER_MIN_MEMORY_MB = 40 * 1024
_DATACENTER_RE = re.compile(
    r"\b(A100|A800|H100|H800|H200|GH200|B100|B200|GB200|V100|P100|P40|T4|L4|L20|L40S?|"
    r"A10G?|A16|A30|A40|TESLA|INSTINCT|MI\d{2,3}X?)\b",
    re.IGNORECASE,
)
THREAD_ENV_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
"""Set to ``ScoreParams.threads`` in the measuring child's environment."""


@dataclass(frozen=True, kw_only=True)
class ScoreParams:
    """Bounds of one score measurement (module rules); the defaults take about
    0.3 s on an idle core, at most ``timeout_s``."""

    matrix_n: int = 512
    """CPU matmul size: 2 n^3 = 0.27 GFLOP per matmul."""
    reps_per_run: int = 4
    """Matmuls per timed run (about 1.1 GFLOP, 20-100 ms single-threaded)."""
    runs: int = 9
    """Timed runs; the score is their median."""
    min_runs: int = 3
    """Runs always timed, even past ``budget_s``."""
    budget_s: float = 3.0
    """After this much timing the child stops (once ``min_runs`` are done)."""
    threads: int = 1
    """BLAS threads in the measuring child: a per-core score, stable under load."""
    timing: Literal["cpu", "wall"] = "cpu"
    """Divide by the child's CPU time (per-core rate, load-independent) or by wall time."""
    timeout_s: float = 30.0
    """The child is killed after this long (numpy import included)."""
    fallback_gflops: float = 1.0
    """The CPU score advertised when it cannot be measured (priced as slow)."""
    gpu_matrix_n: int = 4096
    """GPU matmul size (float32)."""
    gpu_runs: int = 9
    """Timed GPU runs (one matmul each); the GPU score is their median."""


@dataclass(frozen=True, kw_only=True)
class ComputeScore:
    """One measurement: what the advert carries (``cpu_gflops`` as
    ``score_gflops``, ``gpu_gflops``, ``tier``) and how it was obtained
    (shown by ``mesh status``)."""

    cpu_gflops: float
    gpu_gflops: float | None
    tier: Tier
    measured_at_monotonic: float
    cpu_spread: float | None = None
    """Slowest ÷ fastest timed run (1.0 = perfectly steady); None if not measured."""
    cpu_runs: int = 0
    cpu_threads: int = 0
    cpu_method: str = "numpy, cpu time"
    """How it was timed (``numpy, cpu time``), or why the CPU score is
    ``fallback_gflops`` (``unmeasured: ...``) or configured."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_gflops": round(self.cpu_gflops, 3),
            "cpu_spread": None if self.cpu_spread is None else round(self.cpu_spread, 3),
            "cpu_runs": self.cpu_runs,
            "cpu_threads": self.cpu_threads,
            "cpu_method": self.cpu_method,
            "gpu_gflops": None if self.gpu_gflops is None else round(self.gpu_gflops, 3),
            "tier": self.tier,
        }


@dataclass(frozen=True)
class CpuMeasurement:
    """What the measuring child reported: per-run GFLOPS, or why there are none."""

    gflops: float
    spread: float | None
    runs: tuple[float, ...]
    method: str
    threads: int = 0
    """The BLAS thread count the child ran with (0: unknown / not measured)."""


def tier_for(devices: Sequence[GpuDevice]) -> Tier:
    """The tier rule above."""
    if not devices:
        return "cpu"
    for d in devices:
        if _DATACENTER_RE.search(d.name) or d.memory_total_mb >= DATACENTER_MIN_MEMORY_MB:
            return "datacenter-gpu"
    return "consumer-gpu"


def summarise(runs: Sequence[float]) -> tuple[float, float]:
    """(median, slowest ÷ fastest) of per-run GFLOPS; ``runs`` must be non-empty."""
    lo, hi = min(runs), max(runs)
    return statistics.median(runs), (hi / lo if lo > 0 else float("inf"))


# The measuring child. Its argv: n, reps, runs, min_runs, budget_s. It prints
# one JSON object: {"wall": [gflops, ...], "cpu": [gflops, ...], "threads": n}
# (per run, by elapsed and by CPU time; the BLAS thread count its environment
# set) or {"error": "..."}.
_CHILD = r"""
import json, os, sys, time
try:
    import numpy as np
except Exception as e:
    print(json.dumps({"error": "numpy not importable (%s)" % e.__class__.__name__}))
    sys.exit(0)
n, reps, runs, min_runs = (int(x) for x in sys.argv[1:5])
budget = float(sys.argv[5])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n))
b = rng.standard_normal((n, n))
out = np.empty((n, n))
np.matmul(a, b, out=out)
flops = 2.0 * n ** 3 * reps
wall, cpu = [], []
start = time.perf_counter()
for i in range(runs):
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        np.matmul(a, b, out=out)
    t1, c1 = time.perf_counter(), time.process_time()
    wall.append(flops / max(t1 - t0, 1e-9) / 1e9)
    cpu.append(flops / max(c1 - c0, 1e-9) / 1e9)
    if i + 1 >= min_runs and t1 - start >= budget:
        break
print(json.dumps({"wall": wall, "cpu": cpu, "threads": os.environ.get("OMP_NUM_THREADS")}))
"""


def measure_cpu(
    params: ScoreParams = ScoreParams(), python: Sequence[str] = (sys.executable,)
) -> CpuMeasurement:
    """Run the measuring child (see the module rules). Never raises.

    ``python``: the interpreter's argv prefix (this one by default)."""
    env = dict(os.environ)
    for var in THREAD_ENV_VARS:
        env[var] = str(params.threads)
    argv = [
        *python,
        "-c",
        _CHILD,
        str(params.matrix_n),
        str(params.reps_per_run),
        str(params.runs),
        str(params.min_runs),
        str(params.budget_s),
    ]
    fallback = params.fallback_gflops
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, timeout=params.timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return CpuMeasurement(
            fallback, None, (), f"unmeasured: timed out after {params.timeout_s} s"
        )
    except OSError as e:
        return CpuMeasurement(fallback, None, (), f"unmeasured: {e.__class__.__name__}")
    return parse_child_output(proc.stdout, proc.returncode, params)


def parse_child_output(stdout: bytes, returncode: int, params: ScoreParams) -> CpuMeasurement:
    """The measurement in the child's last output line (``params.timing``'s
    list), or ``fallback_gflops`` with the reason. Never raises."""
    fallback = params.fallback_gflops
    try:
        lines = stdout.decode("utf-8", "replace").strip().splitlines()
        body = json.loads(lines[-1]) if lines else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    runs = body.get(params.timing)
    if (
        not isinstance(runs, list)
        or not runs
        or not all(
            isinstance(r, int | float) and not isinstance(r, bool) and math.isfinite(r) and r > 0
            for r in runs
        )
    ):
        why = body.get("error")
        why = str(why)[:200] if why else f"child exited {returncode}, no {params.timing} runs"
        return CpuMeasurement(fallback, None, (), f"unmeasured: {why}")
    median, spread = summarise(runs)
    seen = body.get("threads")
    threads = int(seen) if isinstance(seen, str) and seen.isdigit() else 0
    return CpuMeasurement(
        median, spread, tuple(float(r) for r in runs), f"numpy, {params.timing} time", threads
    )


def measure_cpu_gflops(params: ScoreParams = ScoreParams()) -> float:
    """The CPU score alone (median GFLOPS, or ``fallback_gflops``)."""
    return measure_cpu(params).gflops


def measure_gpu_gflops(
    params: ScoreParams = ScoreParams(), clock: Callable[[], float] = time.perf_counter
) -> float | None:
    """Median GFLOPS of the first GPU via CuPy or PyTorch, or None if neither works here."""
    n = params.gpu_matrix_n
    for backend in (_cupy_matmul, _torch_matmul):
        try:
            run_once = backend(n)
        except Exception:  # not installed, no CUDA, driver trouble: try the next
            continue
        if run_once is not None:
            try:
                run_once()  # warm-up: context, kernels, allocator
                runs = []
                for _ in range(max(1, params.gpu_runs)):
                    t0 = clock()
                    run_once()
                    runs.append(2.0 * n**3 / max(clock() - t0, 1e-9) / 1e9)
                return summarise(runs)[0]
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
    """Benchmark now (blocking, about a second) and classify. Never raises."""
    cpu = measure_cpu(params)
    gpu = measure_gpu_gflops(params) if devices else None
    return ComputeScore(
        cpu_gflops=cpu.gflops,
        gpu_gflops=gpu,
        tier=tier_for(devices),
        measured_at_monotonic=clock(),
        cpu_spread=cpu.spread,
        cpu_runs=len(cpu.runs),
        cpu_threads=cpu.threads,
        cpu_method=cpu.method,
    )
