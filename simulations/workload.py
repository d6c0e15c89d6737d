"""Hardware profiles and job streams, drawn from the seed.

A node's *measured* score (what it advertises) and its *actual* speed differ
for slow nodes (``slow_factor``). A job's ``estimated_flops`` is what the
submitter declares; its actual work differs by a lognormal noise factor. The
honest output digest of a job is a pure function of its id, so every honest
run agrees and the invariant checker knows the right answer.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import cast

from meshd.core.events import LocalCapabilities
from meshd.core.jobspec import JobSpec, Speed

REF_GFLOPS = 50.0
IMAGE = "meshd/busybox:1"


@dataclass
class Hardware:
    cores: int
    score_gflops: float
    """Measured (advertised) compute score per core."""
    speed_gflops: float
    """Actual speed per core (lower than the score for slow nodes)."""
    price: float
    liar: bool = False
    lie_rate: float = 0.0
    spammer: bool = False
    client: bool = False
    """Runs no jobs (no runtime): not even its own, which a node's own worker
    otherwise takes when no other peer can (specs/PROTOCOL.md §8.5)."""

    def caps(self) -> LocalCapabilities:
        return LocalCapabilities(
            cores=self.cores,
            ram_mb=2048 * self.cores,
            disk_free_mb=100_000,
            gpus=(),
            gpu_runtime=False,
            runtimes=() if self.client else ("docker",),
            images=(IMAGE,),
            score_gflops=self.score_gflops,
            gpu_gflops=None,
            tier="cpu",
            price=self.price,
            capacity=self.cores,
            network_allowed=False,
        )


def draw_hardware(
    rng: random.Random, n: int, *, slow_fraction: float, slow_factor: float
) -> list[Hardware]:
    out = []
    for _ in range(n):
        cores = rng.choices([2, 4, 8, 16], weights=[3, 4, 2, 1])[0]
        score = REF_GFLOPS * math.exp(rng.gauss(0.0, 0.35))
        slow = rng.random() < slow_fraction
        out.append(
            Hardware(
                cores,
                round(score, 2),
                score / slow_factor if slow else score,
                round(rng.uniform(0.0005, 0.002), 6),
            )
        )
    return out


@dataclass
class JobPlan:
    job_id: str
    submit_ms: int
    est_flops: float
    actual_flops: float
    spec: JobSpec

    @property
    def honest_digest(self) -> str:
        return honest_digest(self.job_id)


def honest_digest(job_id: str) -> str:
    return "sha256:" + hashlib.sha256(b"honest:" + job_id.encode()).hexdigest()


def lie_digest(job_id: str, worker: str, attempt: int, replica: int) -> str:
    return (
        "sha256:"
        + hashlib.sha256(f"lie:{job_id}:{worker}:{attempt}:{replica}".encode()).hexdigest()
    )


def draw_jobs(
    rng: random.Random,
    n_jobs: int,
    hw: list[Hardware],
    *,
    load: float,
    start_ms: int,
    job_s_median: float,
    job_sigma: float,
    estimate_noise: float,
    speed: str,
) -> list[JobPlan]:
    """Poisson arrivals at the rate that makes ``load`` the offered utilisation."""
    capacity_flops = sum(h.cores * h.speed_gflops for h in hw) * 1e9
    median_flops = job_s_median * REF_GFLOPS * 1e9
    mean_flops = median_flops * math.exp(job_sigma**2 / 2) * math.exp(estimate_noise**2 / 2)
    rate_per_ms = load * capacity_flops / mean_flops / 1000.0
    t = float(start_ms)
    jobs = []
    for i in range(n_jobs):
        t += rng.expovariate(rate_per_ms)
        est = median_flops * math.exp(rng.gauss(0.0, job_sigma))
        actual = est * math.exp(rng.gauss(0.0, estimate_noise))
        job_id = f"job-{i:07d}"
        spec = JobSpec(
            image=IMAGE,
            command=["work", job_id],
            estimated_flops=est,
            timeout_s=max(600.0, 20 * est / 1e9 / 5.0),
            speed=cast(Speed, speed),  # a knob's text: JobSpec validates it
        )
        jobs.append(JobPlan(job_id, int(t), est, actual, spec))
    return jobs
