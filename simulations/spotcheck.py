"""Spot-check floor: verification overhead against wrong results accepted.

``python -m simulations spotcheck`` prints, for liar shares 0, 1, 10 and 30 %
and several floors (``replication_fraction``, the replication probability
even a trusted worker gets; the default is marked ``*``), the verification
overhead (extra runs ÷ jobs, audit runs included) and, per 10,000 jobs, the
wrong results accepted at any time, those retracted by an audit, those
still standing at the end, and those that became *final* (the hold,
``result_hold_ms``), with the liar identities convicted; then the *hold
curve* (final per 10,000 by hold, the default marked). Normative text and
the figures: specs/CREDITS.md §4, §4.1, §4.2 and §11.1.

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

*The hold* (specs/CREDITS.md §4.2): an unreplicated result is provisional
for ``hold_ms`` (``result_hold_ms``) after it was accepted. Each wrong
result's age is recorded when an audit retracts it and, for those still
standing, at the end; a wrong result is *final* if that age reached the
hold (``SpotResult.final_for``), *pending* if it stands at the end still in
its hold. The hold changes no run (audits re-run the same jobs with it or
without it), so one run gives the whole hold curve.

Liars (``--model``):

- ``patient`` (the case the floor is for, ``tests/bench/bench_trust.py``'s
  liar): honest while untrusted, wrong with ``lie_rate`` once trusted.
- ``constant``: wrong with ``lie_rate`` on every job.

With ``rejoin`` a convicted liar comes back at once under a
new identity (a whitewash): the liar share stays constant and every new
identity pays the newcomer's verification again (``untrusted_replication``
until ``trust_after_valid`` valid results).

*Pay* (specs/CREDITS.md §7, §7.6, §7.7), from the same ``CoreParams``:
every accepted result earns its worker one credit (an unreplicated one, and
each result of a replica majority, audits' included); a retracted result's
credit is clawed back; a worker's earnings are held by its bond until it
has ``bond_valid_receipts`` valid results, and forfeited if one of its
results is retracted before then. Reported per 10,000 jobs: the pay liars
keep (released to their balance), what their bonds forfeited or still
hold, and the share of honest pay still held at the end. The bond moves
credits only: which results are wrong and which runs are made (overhead,
wrong, standing) are the same with it or without it (``bond 0``); what it
changes is what a liar identity is paid.

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
HOLDS_MS = (0, 300_000, 1_000_000, CoreParams().result_hold_ms)
"""The holds of the hold curve (the default, ``result_hold_ms``, last)."""
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
    bond: int = CoreParams().bond_valid_receipts
    """``bond_valid_receipts``: valid results before a worker's pay is released."""
    core: tuple[tuple[str, float], ...] = ()
    """Other ``CoreParams`` overrides (``--set NAME=VALUE``), e.g. a what-if
    ``untrusted_replication`` for whitewashing liars."""
    hold_ms: int = CoreParams().result_hold_ms
    """``result_hold_ms``: an unreplicated result is *final* only once it has
    stood this long unretracted (0: at once; specs/CREDITS.md §4.2). ``final``
    counts the wrong results that became final: retracted only after their
    hold, or standing at the end with their hold over; ``pending`` the wrong
    ones standing at the end still in their hold (provisional)."""


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
    retracted_ages: list[int] = dataclasses.field(default_factory=list)
    """Per retracted wrong result: how long (ms) it had stood when retracted."""
    standing_ages: list[int] = dataclasses.field(default_factory=list)
    """Per wrong result standing at the end: how long it had stood then."""
    failed: int = 0
    trusted_primary: int = 0
    """Jobs whose primary was trusted when the decision was made."""
    trusted_replicated: int = 0
    """... and of those, how many were replicated (the floor at work)."""
    convicted: int = 0
    """Liar identities convicted (over all jobs)."""
    honest_convicted: int = 0
    liar_pay: dict[str, float] = dataclasses.field(default_factory=dict)
    """Liars' pay (credits, net of clawbacks) by bond state: kept, held, forfeited."""
    honest_pay: dict[str, float] = dataclasses.field(default_factory=dict)
    """The same for honest workers."""

    def final_for(self, hold_ms: int) -> int:
        """Wrong results that became final under a hold of ``hold_ms``: those
        retracted only after it, and those standing at the end past it. One
        run gives the whole hold curve: the hold changes no run, only when a
        result counts as final."""
        return sum(1 for a in self.retracted_ages + self.standing_ages if a >= hold_ms)

    def pending_for(self, hold_ms: int) -> int:
        """Wrong results standing at the end, still provisional under ``hold_ms``."""
        return sum(1 for a in self.standing_ages if a < hold_ms)

    @property
    def wrong_final(self) -> int:
        """Wrong results that became final under the run's own hold."""
        return self.final_for(self.config.hold_ms)

    @property
    def final_per_10k(self) -> float:
        return self._per_10k(self.wrong_final)

    @property
    def pending_per_10k(self) -> float:
        return self._per_10k(self.pending_for(self.config.hold_ms))

    def as_dict(self) -> dict[str, object]:
        return {
            **dataclasses.asdict(self.config),
            "overhead": round(self.overhead, 4),
            "wrong_per_10k": round(self.wrong_per_10k, 2),
            "retracted_per_10k": round(self.retracted_per_10k, 2),
            "standing_per_10k": round(self.standing_per_10k, 2),
            "final_per_10k": round(self.final_per_10k, 2),
            "pending_per_10k": round(self.pending_per_10k, 2),
            "trusted_replication_rate": round(self.trusted_rate, 4),
            "wrong_accepted": self.wrong_accepted,
            "retracted": self.retracted,
            "audit_runs": self.audit_runs,
            "failed": self.failed,
            "liars_convicted": self.convicted,
            "honest_convicted": self.honest_convicted,
            "liar_pay_per_10k": {k: round(self._per_10k_f(v), 1) for k, v in self.liar_pay.items()},
            "honest_held_share": round(self.honest_held_share, 4),
        }

    def _per_10k_f(self, x: float) -> float:
        return 10_000 * x / max(1, self.jobs)

    @property
    def honest_held_share(self) -> float:
        """Share of honest workers' pay still held by their bonds at the end."""
        total = sum(self.honest_pay.values())
        return self.honest_pay.get("held", 0.0) / total if total else 0.0

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
        """The target judged on what stands at the end."""
        return self.standing_per_10k <= TARGET_WRONG_PER_10K and self.overhead <= TARGET_OVERHEAD

    @property
    def strict_target_met(self) -> bool:
        """The target judged on every wrong result that became final (with no
        hold: every one ever accepted, retracted ones included)."""
        return self.final_per_10k <= TARGET_WRONG_PER_10K and self.overhead <= TARGET_OVERHEAD


class Purse:
    """One worker's pay under the bond rule (specs/CREDITS.md §7.7): what it
    earned in the bond period, after it, its valid results, and whether the
    bond was released or forfeited."""

    def __init__(self) -> None:
        self.period = 0.0
        self.after = 0.0
        self.valid = 0
        self.released = False
        self.forfeited = False

    def earn(self, credits: float, valid: bool, needed: int) -> None:
        if self.released or (self.forfeited and self.valid >= needed):
            self.after += credits
        else:
            self.period += credits
        if valid:
            self.valid += 1
            if self.valid >= needed and not self.forfeited:
                self.released = True

    def claw_back(self, credits: float) -> None:
        """A retracted result: its credit goes; before the release, the bond is forfeited."""
        self.period -= credits
        if not self.released:
            self.forfeited = True

    def split(self) -> dict[str, float]:
        if self.released:
            return {"kept": self.period + self.after, "held": 0.0, "forfeited": 0.0}
        if self.forfeited:
            return {"kept": self.after, "held": 0.0, "forfeited": self.period}
        return {"kept": self.after, "held": self.period, "forfeited": 0.0}


def simulate(cfg: SpotConfig) -> SpotResult:
    """One run of the model (see the module docstring)."""
    params = dataclasses.replace(
        CoreParams().with_overrides(dict(cfg.core)),
        replication_fraction=cfg.floor,
        bond_valid_receipts=cfg.bond,
    )
    trust = Trust(params)
    book = AuditBook(params)
    rng = random.Random(cfg.seed)
    names = [f"w{i:04d}" for i in range(cfg.workers)]
    liars = set(rng.sample(names, round(cfg.liar_share * cfg.workers)))
    res = SpotResult(cfg)
    now = 1_000_000
    accepted: dict[str, tuple[str, bool]] = {}
    """Unreplicated accepted job -> (worker, its result was wrong), until audited."""
    accepted_ms: dict[str, int] = {}
    """... and when it was accepted (for ``hold_ms``)."""
    unresolved: list[int] = []
    """When each wrong result an audit could not overturn was accepted."""

    def lies(w: str) -> bool:
        if w not in liars:
            return False
        if cfg.model == "patient" and not trust.trusted(w):
            return False
        return rng.random() < cfg.lie_rate

    purses: dict[str, Purse] = {}

    def purse(w: str) -> Purse:
        found = purses.get(w)
        if found is None:
            found = purses[w] = Purse()
        return found

    def earn(w: str, valid: bool) -> None:
        purse(w).earn(1.0, valid, params.bond_valid_receipts)

    standing: dict[str, tuple[bool, bool]] = {}
    """worker -> (banned, reputation ≥ 0), refreshed after each verdict on it
    and for everyone every ``REFRESH_JOBS`` jobs (decay moves them slowly)."""

    def refresh(w: str) -> None:
        standing[w] = (trust.banned(w, now), trust.reputation(w, now) >= 0.0)

    def eligible() -> list[str]:
        live = [w for w in names if not standing[w][0]]
        return [w for w in live if standing[w][1]] or live

    def collect(results: list[tuple[str, bool]], pool: list[str], paid_from: int = 0) -> bool:
        """Run on workers from ``pool`` until two results agree; judge them all
        and pay the majority's results from ``paid_from`` on (an audit's accepted
        result was paid when it was first accepted)."""
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
            for w, lied in results[paid_from:]:
                if not lied:
                    earn(w, valid=True)
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
                since = accepted_ms.pop(job, now)
                votes = [(worker, wrong)]
                pool = [x for x in eligible() if x != worker]
                collect(votes, pool, paid_from=1)
                res.audit_runs += len(votes) - 1
                if wrong and sum(1 for _, lied in votes if not lied) >= 2:
                    res.retracted += 1
                    res.retracted_ages.append(now - since)
                    purse(worker).claw_back(1.0)
                elif wrong:  # no majority: the wrong result stays accepted
                    unresolved.append(since)
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
            accepted_ms[str(j)] = now
            earn(primary, valid=False)
            res.wrong_accepted += int(results[0][1])
        res.jobs += 1
        res.runs += len(results)
        if was_trusted:
            res.trusted_primary += 1
            res.trusted_replicated += int(replicate)
    # What stands at the end: the wrong results no audit reached, and those
    # an audit could not overturn (no majority).
    stood = [accepted_ms[job] for job, (_, wrong) in accepted.items() if wrong] + unresolved
    res.standing_ages = [now - since for since in stood]
    assert len(res.standing_ages) == res.standing
    for w, p in purses.items():
        into = res.liar_pay if w in liars else res.honest_pay
        for k, v in p.split().items():
            into[k] = into.get(k, 0.0) + v
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
        f"{c0.jobs} jobs, seed {c0.seed}, bond {c0.bond} valid results, "
        f"hold {c0.hold_ms / 1000:g} s ({c0.hold_ms // c0.job_interval_ms} jobs, "
        f"~{c0.hold_ms // (c0.job_interval_ms * c0.workers)} of one worker's)"
        + "".join(f", {k} {v:g}" for k, v in c0.core)
    )
    print(
        f"target at 10% liars: ≤ {TARGET_WRONG_PER_10K:g} wrong result standing per 10,000 jobs "
        f"with ≤ {TARGET_OVERHEAD:.0%} overhead (audit runs included; target: standing at the "
        f"end, strict: final); "
        f"* marks the default floor ({default:g})"
    )
    print(
        "per 10k jobs: wrong = accepted at any time, = retracted + standing at the end; "
        "final = wrong that became final (retracted only after its hold, or standing past it; "
        "= wrong with no hold); pending = standing at the end, still provisional"
    )
    print(
        "pay (1 credit per accepted result, clawed back when retracted), per 10k jobs: "
        "what liars keep, what their bonds forfeited or still hold; honest held: "
        "share of honest pay still held at the end"
    )
    print(
        f"{'liars':>6} {'floor':>7} {'overhead':>9} {'wrong':>7} {'retracted':>10} "
        f"{'standing':>9} {'final':>6} {'pending':>8} {'convicted':>10} {'honest conv.':>13} {'failed':>7}"
        f" {'liar pay kept':>14} {'forfeit':>8} {'held':>6} {'honest held':>12}"
        f" {'target':>7} {'strict':>7}"
    )
    for r in results:
        c = r.config
        mark = "*" if abs(c.floor - default) < 1e-12 else " "
        target = strict = ""
        if abs(c.liar_share - 0.10) < 1e-12:
            target = "met" if r.target_met else "missed"
            strict = "met" if r.strict_target_met else "missed"
        print(
            f"{c.liar_share:>6.0%} {c.floor:>6.2f}{mark} {r.overhead:>9.3f} {r.wrong_per_10k:>7.1f} "
            f"{r.retracted_per_10k:>10.1f} {r.standing_per_10k:>9.1f} "
            f"{r.final_per_10k:>6.1f} {r.pending_per_10k:>8.1f} {r.convicted:>10} "
            f"{r.honest_convicted:>13} {r.failed:>7}"
            f" {r._per_10k_f(r.liar_pay.get('kept', 0.0)):>14.1f}"
            f" {r._per_10k_f(r.liar_pay.get('forfeited', 0.0)):>8.1f}"
            f" {r._per_10k_f(r.liar_pay.get('held', 0.0)):>6.1f}"
            f" {r.honest_held_share:>11.1%} {target:>7} {strict:>7}"
        )


def print_hold_curve(results: list[SpotResult], holds: tuple[int, ...] = HOLDS_MS) -> None:
    """Wrong results final per 10,000 jobs against the hold, at the default
    floor (``result_hold_ms``'s default marked ``*``): one run per row, as the
    hold changes no run (``SpotResult.final_for``); the overhead, audit re-runs
    included, is the row's whatever the hold."""
    default_floor = CoreParams().replication_fraction
    default_hold = CoreParams().result_hold_ms
    rows = [r for r in results if abs(r.config.floor - default_floor) < 1e-12]
    if not rows:
        return
    c0 = rows[0].config
    print(
        f"hold curve at the default floor {default_floor:g}: wrong results final per 10k jobs "
        f"by hold (s; * the default result_hold_ms), rejoin "
        f"{'on' if c0.rejoin else 'off'}; a worker gets a job every "
        f"{c0.job_interval_ms * c0.workers / 1000:g} s"
    )
    heads = [f"{h / 1000:g}{'*' if h == default_hold else ''}" for h in holds]
    print(
        f"{'liars':>6} {'overhead':>9} "
        + " ".join(f"{'final@' + h:>12}" for h in heads)
        + f" {'pending*':>9} {'strict*':>8}"
    )
    for r in rows:
        final = [r._per_10k(r.final_for(h)) for h in holds]
        pending = r._per_10k(r.pending_for(default_hold))
        strict = ""
        if abs(r.config.liar_share - 0.10) < 1e-12:
            ok = final[holds.index(default_hold)] <= TARGET_WRONG_PER_10K
            strict = "met" if ok and r.overhead <= TARGET_OVERHEAD else "missed"
        print(
            f"{r.config.liar_share:>6.0%} {r.overhead:>9.3f} "
            + " ".join(f"{f:>12.1f}" for f in final)
            + f" {pending:>9.1f} {strict:>8}"
        )
