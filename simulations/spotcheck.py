"""Spot-check floor: verification overhead against wrong results accepted.

``python -m simulations spotcheck`` prints, for liar shares 0, 1, 10 and 30 %
and several floors (``replication_fraction``, the replication probability
even a trusted worker gets; the default is marked ``*``), the verification
overhead (extra runs ÷ jobs) and the wrong results accepted per 10,000 jobs.
Normative text and the figures: specs/CREDITS.md §4 and §11.

Theory of operation
-------------------
This is a verification-only model, many jobs long (10⁵ in seconds), built
on the real policy: one :class:`~meshd.core.trust.Trust` with the real
:class:`~meshd.core.params.CoreParams` decides every replication
(``should_replicate``) and takes every verdict (``observe``), so streaks,
trust, the floor, reputation and bans are the core's own. It stands for the
mesh's view of its workers: with remote streaks (trust.py) a worker is
verified about ``trust_after_valid`` times in all, as by one origin.

Left out, on purpose (the full simulator, ``python -m simulations run
cheaters``, has them but is too slow for 10⁵-job curves): the network,
bidding and load, attestations between origins. Jobs are spaced
``job_interval_ms`` apart in virtual time (reputation decays on it).

Per job: the primary is drawn uniformly from the workers that are not banned
and whose reputation is not negative (bid ranking puts a negative reputation
last, PROTOCOL.md §8.4: such a worker gets no work while others bid); with
``should_replicate`` further workers run it until two results agree (a
liar's wrong digests are its own, so two never agree) or
``max_disagreeing_results`` were collected (the job fails). Agreeing workers
are ``valid``, the others ``invalid``; an unreplicated result is accepted as
``completed`` — and is a *wrong result accepted* if its worker lied.

Liars (``--model``):

- ``patient`` (the case the floor is for): honest while untrusted, wrong
  with ``lie_rate`` once trusted; caught, it loses its streak and is honest
  again until it has earned it back.
- ``constant``: wrong with ``lie_rate`` on every job.

Steady-state figures are over the second half of the jobs (the first pays
for verifying every stranger ``trust_after_valid`` times).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from meshd.core.params import CoreParams
from meshd.core.trust import Trust

LIAR_SHARES = (0.0, 0.01, 0.10, 0.30)
FLOORS = (0.02, 0.05, 0.10, 0.20, 0.30, 0.50)
TARGET_WRONG_PER_10K = 1.0
TARGET_OVERHEAD = 0.10
REFRESH_JOBS = 1000


@dataclass(frozen=True)
class SpotConfig:
    workers: int = 100
    jobs: int = 100_000
    liar_share: float = 0.10
    lie_rate: float = 0.5
    model: str = "patient"
    floor: float = CoreParams().replication_fraction
    seed: int = 1
    job_interval_ms: int = 100
    policy: str = "core"
    """``core``: trust.py as it is; ``one-strike``: a what-if, a worker this
    node has caught returning a wrong result is banned for ever (:class:`OneStrike`)."""


@dataclass
class SpotResult:
    config: SpotConfig
    jobs: int = 0
    runs: int = 0
    wrong_accepted: int = 0
    failed: int = 0
    steady_jobs: int = 0
    steady_runs: int = 0
    steady_wrong: int = 0
    trusted_primary: int = 0
    """Steady-state jobs whose primary was trusted when the decision was made."""
    trusted_replicated: int = 0
    """... and of those, how many were replicated (the floor at work)."""
    liars_banned: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            **dataclasses.asdict(self.config),
            "overhead": round(self.overhead, 4),
            "wrong_per_10k": round(self.wrong_per_10k, 2),
            "trusted_replication_rate": round(self.trusted_rate, 4),
            "wrong_accepted_all_jobs": self.wrong_accepted,
            "failed": self.failed,
            "liars_banned": self.liars_banned,
        }

    @property
    def overhead(self) -> float:
        return (self.steady_runs - self.steady_jobs) / max(1, self.steady_jobs)

    @property
    def wrong_per_10k(self) -> float:
        """Steady state (the second half of the jobs)."""
        return 10_000 * self.steady_wrong / max(1, self.steady_jobs)

    @property
    def trusted_rate(self) -> float:
        return self.trusted_replicated / max(1, self.trusted_primary)


class OneStrike(Trust):
    """What-if, not the protocol: one own ``invalid`` verdict bans for ever."""

    def observe(self, peer: str, outcome: str, now_ms: int) -> None:
        super().observe(peer, outcome, now_ms)
        if outcome == "invalid":
            self.ban_forever(peer, "caught returning a wrong result", now_ms)


POLICIES: dict[str, type[Trust]] = {"core": Trust, "one-strike": OneStrike}


def simulate(cfg: SpotConfig) -> SpotResult:
    """One run of the model (see the module docstring)."""
    params = dataclasses.replace(CoreParams(), replication_fraction=cfg.floor)
    trust = POLICIES[cfg.policy](params)
    rng = random.Random(cfg.seed)
    names = [f"w{i:04d}" for i in range(cfg.workers)]
    liars = set(rng.sample(names, round(cfg.liar_share * cfg.workers)))
    res = SpotResult(cfg)
    now = 1_000_000

    def lies(w: str) -> bool:
        if w not in liars:
            return False
        if cfg.model == "patient" and not trust.trusted(w):
            return False
        return rng.random() < cfg.lie_rate

    standing: dict[str, tuple[bool, bool]] = {}
    """worker -> (banned, reputation ≥ 0), refreshed after each verdict on it
    and for everyone every ``REFRESH_JOBS`` jobs (decay moves them slowly)."""

    def refresh(w: str) -> None:
        standing[w] = (trust.banned(w, now), trust.reputation(w, now) >= 0.0)

    for j in range(cfg.jobs):
        now += cfg.job_interval_ms
        steady = j >= cfg.jobs // 2
        if j % REFRESH_JOBS == 0:
            for w in names:
                refresh(w)
        live = [w for w in names if not standing[w][0]]
        eligible = [w for w in live if standing[w][1]] or live
        if not eligible:
            break
        primary = rng.choice(eligible)
        was_trusted = trust.trusted(primary)
        replicate = trust.should_replicate(primary, rng)
        results = [(primary, lies(primary))]
        if replicate:
            others = [w for w in eligible if w != primary]
            rng.shuffle(others)
            while others and len(results) < params.max_disagreeing_results:
                if sum(1 for _, lied in results if not lied) >= 2:
                    break
                w = others.pop()
                results.append((w, lies(w)))
            agreed = sum(1 for _, lied in results if not lied) >= 2
            for w, lied in results:
                if agreed:
                    trust.observe(w, "invalid" if lied else "valid", now)
                    refresh(w)
            if not agreed:
                res.failed += 1
        else:
            trust.observe(primary, "completed", now)
            refresh(primary)
            if results[0][1]:
                res.wrong_accepted += 1
                if steady:
                    res.steady_wrong += 1
        res.jobs += 1
        res.runs += len(results)
        if steady:
            res.steady_jobs += 1
            res.steady_runs += len(results)
            if was_trusted:
                res.trusted_primary += 1
                res.trusted_replicated += int(replicate)
    res.liars_banned = sum(1 for w in liars if trust.banned(w, now))
    return res


def curve(
    *,
    shares: tuple[float, ...] = LIAR_SHARES,
    floors: tuple[float, ...] = FLOORS,
    workers: int,
    jobs: int,
    model: str,
    lie_rate: float,
    seed: int,
    policy: str = "core",
) -> list[SpotResult]:
    return [
        simulate(SpotConfig(workers, jobs, s, lie_rate, model, f, seed, policy=policy))
        for s in shares
        for f in floors
    ]


def print_curve(results: list[SpotResult]) -> None:
    default = CoreParams().replication_fraction
    if not results:
        return
    c0 = results[0].config
    print(
        f"spot-check curve: {c0.model} liars, lie_rate {c0.lie_rate}, policy {c0.policy}, "
        f"{c0.workers} workers, "
        f"{c0.jobs} jobs (steady state: the last {c0.jobs - c0.jobs // 2}), seed {c0.seed}"
    )
    print(
        f"target at 10% liars: ≤ {TARGET_WRONG_PER_10K:g} wrong result accepted per 10,000 jobs "
        f"with ≤ {TARGET_OVERHEAD:.0%} overhead; * marks the default floor ({default:g})"
    )
    print(
        f"{'liars':>6} {'floor':>7} {'overhead':>9} {'wrong/10k':>10} {'(all jobs)':>10} "
        f"{'trusted repl.':>14} "
        f"{'failed':>7} {'banned':>7} {'target':>7}"
    )
    for r in results:
        c = r.config
        mark = "*" if abs(c.floor - default) < 1e-12 else " "
        target = ""
        if abs(c.liar_share - 0.10) < 1e-12:
            met = r.wrong_per_10k <= TARGET_WRONG_PER_10K and r.overhead <= TARGET_OVERHEAD
            target = "met" if met else "missed"
        print(
            f"{c.liar_share:>6.0%} {c.floor:>6.2f}{mark} {r.overhead:>9.3f} {r.wrong_per_10k:>10.1f} "
            f"{10_000 * r.wrong_accepted / max(1, r.jobs):>10.1f} "
            f"{r.trusted_rate:>14.3f} {r.failed:>7} {r.liars_banned:>7} {target:>7}"
        )
