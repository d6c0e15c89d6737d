"""Spot-check floor: verification overhead against wrong results accepted.

``python -m simulations spotcheck`` prints, for liar shares 0, 1, 10 and 30 %
and several floors (``replication_fraction``, the replication probability
even a trusted worker gets; the default is marked ``*``), the verification
overhead (extra runs ÷ jobs, audit runs included) and, per 10,000 jobs, the
wrong results accepted at any time, those retracted by an audit and those
still standing at the end, with the liar identities convicted. Normative
text and the figures: specs/CREDITS.md §4, §4.1 and §11.1.

Theory of operation
-------------------
This is a verification-only model, many jobs long (10⁵ in seconds), built
on the real policy: one :class:`~meshd.core.trust.Trust` with the real
:class:`~meshd.core.params.CoreParams` decides every replication
(``should_replicate``), takes every verdict (``observe``: streaks, trust, the
floor, one-strike conviction, reputation and bans are the core's own), and
one :class:`~meshd.core.audit.AuditBook` notes every unreplicated accepted
result and picks what to audit on a conviction. It stands for the mesh's
view of its workers: with remote streaks and conviction attestations
(trust.py) a worker is verified about ``trust_after_valid`` times in all,
and convicted everywhere at once, as by one origin.

Left out, on purpose (the full simulator, ``python -m simulations run
cheaters``, has them but is too slow for 10⁵-job curves): the network,
bidding and load. Jobs are spaced ``job_interval_ms`` apart in virtual time
(reputation decays, convictions and audit windows run on it).

Per job: the primary is drawn uniformly from the workers that are not banned
and whose reputation is not negative (bid ranking puts a negative reputation
last, PROTOCOL.md §8.4); with ``should_replicate`` further workers run it
until two results agree (a liar's wrong digests are its own, so two never
agree) or ``max_disagreeing_results`` were collected (the job fails). Agreeing
workers are ``valid``, the others ``invalid`` (convicted); an unreplicated
result is accepted as ``completed`` — a *wrong result accepted* if its worker
lied. An audit (origin.py ``_audit`` does the same) keeps the accepted result
as one vote and runs the job on other workers until two agree: if the
majority is not the accepted result, it is *retracted*. Wrong results still
accepted when the run ends are *standing*: the lies of liars not caught yet,
or of convicted ones the audit window no longer reached.

Liars (``--model``):

- ``patient`` (the case the floor is for, ``tests/bench/bench_trust.py``'s
  liar): honest while untrusted, wrong with ``lie_rate`` once trusted.
- ``constant``: wrong with ``lie_rate`` on every job.

With ``rejoin`` a convicted liar comes back at once under a
new identity (a whitewash): the liar share stays constant and every new
identity pays the newcomer's verification again (``untrusted_replication``
until ``trust_after_valid`` valid results).

Figures are over the whole run: the overhead includes verifying every
stranger ``trust_after_valid`` times (1% of 10⁵ jobs on 100 workers) and every
audit run; a wrong result counts against the job it was accepted for.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from meshd.core.audit import AuditBook
from meshd.core.params import CoreParams
from meshd.core.trust import Trust

LIAR_SHARES = (0.0, 0.01, 0.10, 0.30)
FLOORS = (0.02, 0.05, 0.10, 0.20)
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
    audit: bool = True
    """Audit a convicted worker's unreplicated results (off: the what-if without)."""
    rejoin: bool = False
    """A convicted liar returns at once under a new identity."""


@dataclass
class SpotResult:
    config: SpotConfig
    jobs: int = 0
    runs: int = 0
    """Runs for the jobs themselves (primary and replicas)."""
    audit_runs: int = 0
    """Runs made by audits (the accepted result is not run again)."""
    wrong_accepted: int = 0
    """Wrong results accepted, at any time."""
    retracted: int = 0
    """... of those, retracted by an audit before the end."""
    failed: int = 0
    trusted_primary: int = 0
    """Jobs whose primary was trusted when the decision was made."""
    trusted_replicated: int = 0
    """... and of those, how many were replicated (the floor at work)."""
    convicted: int = 0
    """Liar identities convicted (over all jobs)."""
    honest_convicted: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            **dataclasses.asdict(self.config),
            "overhead": round(self.overhead, 4),
            "wrong_per_10k": round(self.wrong_per_10k, 2),
            "retracted_per_10k": round(self.retracted_per_10k, 2),
            "standing_per_10k": round(self.standing_per_10k, 2),
            "trusted_replication_rate": round(self.trusted_rate, 4),
            "wrong_accepted": self.wrong_accepted,
            "retracted": self.retracted,
            "audit_runs": self.audit_runs,
            "failed": self.failed,
            "liars_convicted": self.convicted,
            "honest_convicted": self.honest_convicted,
        }

    @property
    def overhead(self) -> float:
        """Extra runs (replicas and audits) per job."""
        return (self.runs + self.audit_runs - self.jobs) / max(1, self.jobs)

    def _per_10k(self, n: int) -> float:
        return 10_000 * n / max(1, self.jobs)

    @property
    def wrong_per_10k(self) -> float:
        """Wrong results accepted at any time, per 10,000 jobs."""
        return self._per_10k(self.wrong_accepted)

    @property
    def retracted_per_10k(self) -> float:
        return self._per_10k(self.retracted)

    @property
    def standing(self) -> int:
        """Wrong results still accepted at the end (what the target bounds)."""
        return self.wrong_accepted - self.retracted

    @property
    def standing_per_10k(self) -> float:
        return self._per_10k(self.standing)

    @property
    def trusted_rate(self) -> float:
        return self.trusted_replicated / max(1, self.trusted_primary)

    @property
    def target_met(self) -> bool:
        return self.standing_per_10k <= TARGET_WRONG_PER_10K and self.overhead <= TARGET_OVERHEAD


def simulate(cfg: SpotConfig) -> SpotResult:
    """One run of the model (see the module docstring)."""
    params = dataclasses.replace(CoreParams(), replication_fraction=cfg.floor)
    trust = Trust(params)
    book = AuditBook(params)
    rng = random.Random(cfg.seed)
    names = [f"w{i:04d}" for i in range(cfg.workers)]
    liars = set(rng.sample(names, round(cfg.liar_share * cfg.workers)))
    res = SpotResult(cfg)
    now = 1_000_000
    accepted: dict[str, tuple[str, bool]] = {}
    """Unreplicated accepted job -> (worker, its result was wrong), until audited."""

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

    def eligible() -> list[str]:
        live = [w for w in names if not standing[w][0]]
        return [w for w in live if standing[w][1]] or live

    def collect(results: list[tuple[str, bool]], pool: list[str]) -> bool:
        """Run on workers from ``pool`` until two results agree; judge them all."""
        others = [w for w in pool if all(w != r for r, _ in results)]
        rng.shuffle(others)
        while others and len(results) < params.max_disagreeing_results:
            if sum(1 for _, lied in results if not lied) >= 2:
                break
            w = others.pop()
            results.append((w, lies(w)))
        agreed = sum(1 for _, lied in results if not lied) >= 2
        if agreed:
            for w, lied in results:
                trust.observe(w, "invalid" if lied else "valid", now)
                refresh(w)
        return agreed

    def convictions(results: list[tuple[str, bool]]) -> None:
        """Conviction: the origin audits, a whitewashing liar comes back anew."""
        todo = [w for w, lied in results if lied and trust.convicted(w, now)]
        while todo:
            w = todo.pop()
            if w in liars:
                res.convicted += 1
            else:
                res.honest_convicted += 1
            if cfg.rejoin and w in liars:
                fresh = f"w{len(standing):04d}"
                names[names.index(w)] = fresh
                liars.add(fresh)
                refresh(fresh)
            for job in book.take(w, now) if cfg.audit else []:
                worker, wrong = accepted.pop(job, (w, False))
                votes = [(worker, wrong)]
                pool = [x for x in eligible() if x != worker]
                collect(votes, pool)
                res.audit_runs += len(votes) - 1
                if wrong and sum(1 for _, lied in votes if not lied) >= 2:
                    res.retracted += 1
                todo += [x for x, lied in votes[1:] if lied and trust.convicted(x, now)]

    for j in range(cfg.jobs):
        now += cfg.job_interval_ms
        if j % REFRESH_JOBS == 0:
            for w in names:
                refresh(w)
        pool = eligible()
        if not pool:
            break
        primary = rng.choice(pool)
        was_trusted = trust.trusted(primary)
        replicate = trust.should_replicate(primary, rng)
        results = [(primary, lies(primary))]
        if replicate:
            if not collect(results, pool):
                res.failed += 1
            convictions(results)
        else:
            trust.observe(primary, "completed", now)
            refresh(primary)
            book.note(primary, str(j), now)
            accepted[str(j)] = (primary, results[0][1])
            res.wrong_accepted += int(results[0][1])
        res.jobs += 1
        res.runs += len(results)
        if was_trusted:
            res.trusted_primary += 1
            res.trusted_replicated += int(replicate)
    return res


def curve(
    *,
    shares: tuple[float, ...] = LIAR_SHARES,
    floors: tuple[float, ...] = FLOORS,
    base: SpotConfig = SpotConfig(),
) -> list[SpotResult]:
    return [
        simulate(dataclasses.replace(base, liar_share=s, floor=f)) for s in shares for f in floors
    ]


def print_curve(results: list[SpotResult]) -> None:
    default = CoreParams().replication_fraction
    if not results:
        return
    c0 = results[0].config
    print(
        f"spot-check curve: {c0.model} liars, lie_rate {c0.lie_rate}, "
        f"audit {'on' if c0.audit else 'off'}, rejoin {'on' if c0.rejoin else 'off'}, "
        f"{c0.workers} workers, "
        f"{c0.jobs} jobs, seed {c0.seed}"
    )
    print(
        f"target at 10% liars: ≤ {TARGET_WRONG_PER_10K:g} wrong result standing per 10,000 jobs "
        f"with ≤ {TARGET_OVERHEAD:.0%} overhead (audit runs included); "
        f"* marks the default floor ({default:g})"
    )
    print("per 10k jobs: wrong = accepted at any time, = retracted + standing at the end")
    print(
        f"{'liars':>6} {'floor':>7} {'overhead':>9} {'wrong':>7} {'retracted':>10} "
        f"{'standing':>9} {'convicted':>10} {'honest conv.':>13} {'failed':>7} {'target':>7}"
    )
    for r in results:
        c = r.config
        mark = "*" if abs(c.floor - default) < 1e-12 else " "
        target = ""
        if abs(c.liar_share - 0.10) < 1e-12:
            target = "met" if r.target_met else "missed"
        print(
            f"{c.liar_share:>6.0%} {c.floor:>6.2f}{mark} {r.overhead:>9.3f} {r.wrong_per_10k:>7.1f} "
            f"{r.retracted_per_10k:>10.1f} {r.standing_per_10k:>9.1f} {r.convicted:>10} "
            f"{r.honest_convicted:>13} {r.failed:>7} {target:>7}"
        )
