"""Fault and workload knobs, drawn from the seed (swarm testing).

Every run draws its knobs from the run's seed within ranges the protocol is
meant to survive, so one seed explores one corner of the fault space and the
seed alone reproduces it. A scenario narrows or widens the ranges (see
``scenarios.py``); ``--set name=value`` pins a knob (the replay command
repeats every pin).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Knobs:
    # --- network
    latency_ms_median: float = 20.0
    """Median one-way message latency (lognormal per message)."""
    latency_sigma: float = 0.5
    """Lognormal shape of the latency distribution."""
    latency_ms_max: int = 2_000
    """Latency cap (tail bound)."""
    gossip_loss: float = 0.0
    """Probability a gossip copy (offer, advert) never reaches a given node."""
    direct_loss: float = 0.0
    """Probability a direct message is silently lost (stream reset after write)."""
    direct_dup: float = 0.0
    """Probability a direct message is delivered twice."""
    connect_timeout_ms: int = 1_000
    """Delay before a send to an unreachable peer is reported as failed."""
    # --- gossip modelling (see engine.py, "Scale")
    receipt_fanout: int = -1
    """Receipt/attestation gossip reach: -1 auto (all up to 256 nodes, else 16), 0 all, k peers."""
    gossip_mode: str = "lazy"
    """'lazy': offers reach nodes in bid-arrival order until the window closes; 'full': every node."""
    # --- hardware and behaviour
    slow_fraction: float = 0.0
    """Share of nodes that run jobs slower than their measured score says."""
    slow_factor: float = 2.0
    """How much slower those nodes are."""
    liar_fraction: float = 0.0
    """Share of nodes that sometimes return a wrong output digest."""
    lie_rate: float = 0.5
    """Probability a liar's run returns a wrong digest."""
    spammer_fraction: float = 0.0
    """Share of nodes that also inject garbage, forged, replayed and fake-offer traffic."""
    spam_interval_ms: int = 200
    """Mean gap between a spammer's injections."""
    # --- crashes and partitions (safety phase only)
    crash_fraction: float = 0.0
    """Share of nodes that crash once during the safety phase (and restart)."""
    down_ms_max: int = 30_000
    """Longest a crashed node stays down before restarting."""
    torn_batch: float = 0.5
    """Probability a crash lands after a batch's appends but before its messages."""
    partition: bool = False
    """Split the mesh in two groups for part of the safety phase."""
    partition_fraction: float = 0.4
    """Size of the smaller side of the split."""
    partition_ms: int = 30_000
    """How long the split lasts."""
    # --- CPU model (engine.py, "CPU model")
    cpu_model: bool = False
    """Nodes handle one input at a time through a bounded inbox, at measured per-message
    costs (simulations/costs.py); off: every input is handled the instant it arrives."""
    cpu_slowdown: float = 1.0
    """CPU cost multiplier of a busy machine (a CPU hog: 2); applies to the nodes chosen
    by cpu_hog_fraction and, in `burst`, to the origin."""
    cpu_hog_fraction: float = 0.0
    """Share of nodes (drawn from the seed) whose CPU costs are multiplied by cpu_slowdown."""
    # --- workload
    load: float = 0.5
    """Offered utilisation: arrival rate × mean work / total capacity."""
    job_s_median: float = 10.0
    """Median job length on a 50 GFLOPS core."""
    job_sigma: float = 0.8
    """Lognormal shape of job sizes."""
    estimate_noise: float = 0.2
    """Lognormal shape of (actual work / estimated_flops)."""
    speed: str = "fast"
    """The jobs' speed profile (placement weights)."""
    replication: str = "default"
    """'default' core params, or 'off' (no replicas) to compare placement alone."""
    liveness_ms: int = 600_000
    """Virtual time the liveness phase may take before a job counts as lost."""

    def with_overrides(self, pins: dict[str, str]) -> Knobs:
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, text in pins.items():
            if name.startswith("core."):  # a CoreParams override, applied by the run
                continue
            if name not in known:
                raise ValueError(f"unknown knob {name!r} (see `python -m simulations list`)")
            cur = getattr(self, name)
            if isinstance(cur, bool):
                clean[name] = text.lower() in ("1", "true", "yes", "on")
            elif isinstance(cur, int):
                clean[name] = int(text)
            elif isinstance(cur, float):
                clean[name] = float(text)
            else:
                clean[name] = text
        return dataclasses.replace(self, **clean)


def draw_network(rng: random.Random, k: Knobs, *, faults: bool) -> None:
    """Network knobs every scenario draws (faults only where the scenario injects them)."""
    k.latency_ms_median = rng.choice([2.0, 10.0, 20.0, 50.0, 100.0])
    k.latency_sigma = rng.uniform(0.2, 0.8)
    if faults:
        k.gossip_loss = rng.choice([0.0, 0.0, 0.01, 0.05])
        k.direct_loss = rng.choice([0.0, 0.0, 0.005, 0.02])
        k.direct_dup = rng.choice([0.0, 0.0, 0.01, 0.05])
        k.slow_fraction = rng.choice([0.0, 0.1, 0.2])
        k.slow_factor = rng.uniform(1.5, 4.0)


def knob_docs() -> dict[str, str]:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Knobs))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
        ):
            out[prev.target.id] = " ".join(str(node.value.value).split())  # type: ignore[union-attr]
    return out
