"""Trust: when to replicate, how results are judged, reputation.

This node's own signed observations are the evidence: valid / invalid results
(from replicated comparisons), completed / abandoned leases. Evidence decays
with a half-life, so old sins and old merits fade.

Replication follows BOINC's adaptive replication: a worker is *trusted* after
``trust_after_valid`` consecutive valid results; an untrusted worker's jobs are
replicated with probability ``untrusted_replication``, a trusted one's with
``replication_fraction``; one invalid result resets the streak.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .params import CoreParams

OUTCOME_WEIGHTS = {"valid": 1.0, "completed": 0.25, "invalid": -3.0, "abandoned": -1.0}


@dataclass
class Evidence:
    score: float = 0.0
    """Signed sum of decayed outcome weights."""
    mass: float = 0.0
    """Sum of decayed absolute weights."""
    updated_ms: int = 0
    valid_streak: int = 0
    invalid: int = 0


class Trust:
    def __init__(self, params: CoreParams) -> None:
        self.params = params
        self._ev: dict[str, Evidence] = {}

    def _decayed(self, ev: Evidence, now_ms: int) -> tuple[float, float]:
        dt = max(0, now_ms - ev.updated_ms)
        f = math.pow(0.5, dt / self.params.reputation_half_life_ms)
        return ev.score * f, ev.mass * f

    def observe(self, peer: str, outcome: str, now_ms: int) -> None:
        ev = self._ev.setdefault(peer, Evidence(updated_ms=now_ms))
        score, mass = self._decayed(ev, now_ms)
        w = OUTCOME_WEIGHTS[outcome]
        ev.score, ev.mass, ev.updated_ms = score + w, mass + abs(w), now_ms
        if outcome == "valid":
            ev.valid_streak += 1
        elif outcome == "invalid":
            ev.valid_streak = 0
            ev.invalid += 1

    def reputation(self, peer: str, now_ms: int) -> float:
        """In [-1, 1]; 0 for a stranger."""
        ev = self._ev.get(peer)
        if ev is None:
            return 0.0
        score, mass = self._decayed(ev, now_ms)
        return max(-1.0, min(1.0, score / (mass + 2.0)))

    def trusted(self, peer: str) -> bool:
        ev = self._ev.get(peer)
        return ev is not None and ev.valid_streak >= self.params.trust_after_valid

    def banned(self, peer: str, now_ms: int) -> bool:
        return self.reputation(peer, now_ms) < self.params.ban_reputation

    def should_replicate(self, worker: str, rng: random.Random) -> bool:
        p = self.params.replication_fraction if self.trusted(worker) else self.params.untrusted_replication
        return rng.random() < p

    def snapshot(self, now_ms: int) -> dict[str, dict[str, float]]:
        return {p: {"reputation": self.reputation(p, now_ms), "valid_streak": ev.valid_streak,
                    "invalid": ev.invalid} for p, ev in self._ev.items()}
