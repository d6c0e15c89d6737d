"""Verification cost vs. detection, measured on CoreNet (also driven by tests/bench/bench_trust.py).

A scenario is one origin (node 0) submitting a steady stream of jobs to a
mesh of honest workers and at most one liar, with the default parameters.
Figures measured (``Figures``):

- *extra compute*: runs started per job minus one, over the jobs submitted
  once every honest worker is trusted by the origin (steady state); also as
  BOINC counts it, the redundant share of all runs;
- *detection*: results the liar returned before the origin banned it (and
  before its first invalid result), lies that became a job's canonical result,
  credits the liar earned for rejected work;
- *honest flagged*: honest workers with any invalid result or a ban.

Rules checked (specs/CREDITS.md "Targets"): extra compute at steady state
≤ 10% of all compute, a half-liar caught within 30 of its results, no honest
worker flagged, the submitter always gets the honest output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.core.jobspec import JobSpec
from meshd.core.params import CoreParams
from meshd.testing.corenet import CoreNet, FakeWorker, honest_output

P = CoreParams()


@dataclass
class Figures:
    seed: int
    jobs: int = 0
    steady_jobs: int = 0
    steady_runs: int = 0
    liar_results_to_ban: int | None = None
    liar_results_to_first_invalid: int | None = None
    liar_results_total: int | None = None
    """Results the liar returned in the whole run (after turning, if patient):
    once its reputation is negative it ranks last, so this stops growing even
    when it is never banned."""
    lies_accepted: int = 0
    liar_credits_for_rejected: float = 0.0
    """Net of clawbacks (CREDITS.md §7.6): a retracted result's pay is taken back."""
    liar_earned: float = 0.0
    """All the liar was paid, net of clawbacks, in the origin's ledger."""
    liar_balance: float = 0.0
    """... of which it can spend (its bond, CREDITS.md §7.7, holds or forfeited the rest)."""
    honest_flagged: int = 0
    wrong_outputs: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def extra_per_job(self) -> float:
        return (self.steady_runs - self.steady_jobs) / max(1, self.steady_jobs)

    @property
    def redundant_share(self) -> float:
        return (self.steady_runs - self.steady_jobs) / max(1, self.steady_runs)


def job_spec(i: int) -> JobSpec:
    return JobSpec(image="meshd/busybox:1", command=["sh", "-c", f"echo {i}"], timeout_s=60)


def run_scenario(
    seed: int,
    *,
    honest: int = 6,
    liar: str = "none",
    jobs: int = 300,
    spacing_ms: int = 250,
    params: CoreParams | None = None,
) -> Figures:
    """liar: "none", "constant" (lies on half its jobs from the start) or
    "patient" (honest until the origin trusts it, then lies on half)."""
    workers = [FakeWorker() for _ in range(honest + 1)]
    if liar != "none":
        workers.append(FakeWorker(lie_rate=0.5 if liar == "constant" else 0.0))
    net = CoreNet(len(workers), seed=seed, params=params, workers=workers)
    net.run_for(3_000)
    origin = net.node(0)
    honest_ids = net.order[1 : honest + 1]
    liar_id = net.order[-1] if liar != "none" else None
    fig = Figures(seed)
    submitted: list[tuple[str, JobSpec, bool]] = []
    turned_at: int | None = None  # liar results seen when it started lying

    def liar_results() -> int:
        slot = net.slots[net.order[0]]
        return sum(
            1 for kind, body in slot.log if kind == "run_result" and body.get("worker") == liar_id
        )

    for i in range(jobs):
        steady = all(origin.trust.trusted(p) for p in honest_ids)
        spec = job_spec(i)
        submitted.append((net.submit(0, spec), spec, steady))
        net.run_for(spacing_ms)
        if liar_id is None:
            continue
        if liar == "patient" and turned_at is None and origin.trust.trusted(liar_id):
            net.slots[liar_id].worker.lie_rate = 0.5
            turned_at = liar_results()
        ev = origin.trust._ev.get(liar_id)
        started = turned_at if liar == "patient" else 0
        if (
            started is not None
            and ev is not None
            and ev.invalid
            and fig.liar_results_to_first_invalid is None
        ):
            fig.liar_results_to_first_invalid = liar_results() - started
        if (
            started is not None
            and fig.liar_results_to_ban is None
            and origin.trust.banned(liar_id, net.now_ms)
        ):
            fig.liar_results_to_ban = liar_results() - started
    net.run_until(
        lambda: all(
            origin.origin.jobs[j].state in ("succeeded", "failed") for j, _, _ in submitted
        ),
        max_ms=600_000,
    )
    if liar_id is not None and (turned_at is not None or liar == "constant"):
        fig.liar_results_total = liar_results() - (turned_at or 0)
    _collect(net, fig, submitted, honest_ids, liar_id)
    return fig


def _collect(
    net: CoreNet,
    fig: Figures,
    submitted: list[tuple[str, JobSpec, bool]],
    honest_ids: list[str],
    liar_id: str | None,
) -> None:
    origin = net.node(0)
    started: dict[str, int] = {}
    for slot in net.slots.values():
        for kind, body in slot.log:
            if kind == "work_started":
                started[body["job_id"]] = started.get(body["job_id"], 0) + 1
    fig.jobs = len(submitted)
    for job_id, spec, steady in submitted:
        job = origin.origin.jobs[job_id]
        if job.state != "succeeded":
            fig.failed += 1
            continue
        if job.canonical != honest_output(spec):
            fig.wrong_outputs += 1
            if liar_id is not None and liar_id in (job.verdict or {}).get("valid", []):
                fig.lies_accepted += 1
        if steady:
            fig.steady_jobs += 1
            fig.steady_runs += started.get(job_id, 0)
    snap = origin.trust.snapshot(net.now_ms)
    fig.honest_flagged = sum(
        1 for p in honest_ids if p in snap and (snap[p]["invalid"] or snap[p]["banned"])
    )
    if liar_id is not None:
        invalid_jobs = {
            j
            for j, _, _ in submitted
            if liar_id in (origin.origin.jobs[j].verdict or {}).get("invalid", [])
        }
        fig.liar_credits_for_rejected = sum(
            e.credits
            for e in origin.ledger.entries.values()
            if e.worker == liar_id and e.job_id in invalid_jobs
        )
        mine = origin.ledger.balances().get(liar_id)
        if mine is not None:
            fig.liar_earned, fig.liar_balance = mine["earned"], mine["balance"]


# ---------------------------------------------------------------- tests


def test_steady_state_extra_compute_is_within_ten_percent() -> None:
    """Pooled over three seeds. Once trusted a worker is replicated with
    max(f, 1/streak): between the floor f and 1/trust_after_valid (10%), so
    at most 10/110 = 9.1% of all compute is redundant."""
    figs = [run_scenario(seed=s, honest=5, jobs=300, spacing_ms=200) for s in (11, 12, 13)]
    assert all(f.failed == 0 and f.wrong_outputs == 0 and f.honest_flagged == 0 for f in figs)
    jobs = sum(f.steady_jobs for f in figs)
    runs = sum(f.steady_runs for f in figs)
    assert jobs >= 600, figs
    f, top = P.replication_fraction, max(P.replication_fraction, 1 / P.trust_after_valid)
    sigma = (top * (1 - top) / jobs) ** 0.5
    extra = (runs - jobs) / jobs
    assert f - 3 * sigma <= extra <= top + 3 * sigma, (runs, jobs)  # as the policy says
    assert (runs - jobs) / runs <= 0.10 + sigma, (runs, jobs)


def test_constant_half_liar_is_caught_within_thirty_results() -> None:
    for seed in (1, 2):
        fig = run_scenario(seed=seed, honest=5, liar="constant", jobs=120, spacing_ms=200)
        assert fig.liar_results_to_ban is not None and fig.liar_results_to_ban <= 30, fig
        assert fig.lies_accepted == 0 and fig.wrong_outputs == 0 and fig.failed == 0, fig
        assert fig.liar_credits_for_rejected == 0.0
        assert fig.honest_flagged == 0, fig
