"""Failures attributed right, budgets that hold, estimates that are not the timeout.

Real cores on ``CoreNet`` (virtual time). Each test cites the rule it checks:
specs/PROTOCOL.md §10 (whose fault a failed run is), specs/CREDITS.md §7
(what a failed job costs), specs/JOB.md §5 and PROTOCOL.md §8.2 (budget and
estimates).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from meshd.core.jobspec import JobSpec, parse_job_spec
from meshd.core.lifecycle import TERMINAL
from meshd.core.params import CoreParams
from meshd.core.placement import WorkHistory
from meshd.testing.corenet import CoreNet, FakeWorker, default_caps

SINGLE = CoreParams(replication_fraction=0.0, untrusted_replication=0.0)
WARMUP_MS = 3_000


def spec(**extra: Any) -> JobSpec:
    return parse_job_spec({"image": "meshd/busybox:1", "command": ["echo", "hi"], **extra})


def mesh(n: int, *, seed: int, workers: list[FakeWorker], params: CoreParams = SINGLE) -> CoreNet:
    net = CoreNet(n, seed=seed, params=params, workers=workers)
    net.run_for(WARMUP_MS)
    return net


def run_to_end(net: CoreNet, job_id: str, max_ms: int = 120_000) -> Any:
    assert net.run_until(lambda: net.job(0, job_id).state in TERMINAL, max_ms=max_ms)
    net.run_for(5_000)  # receipts countersigned and gossiped back
    return net.job(0, job_id)


def records(net: CoreNet, peer: str, kind: str, job_id: str) -> list[dict[str, Any]]:
    return [b for k, b in net.slots[peer].log if k == kind and b.get("job_id") == job_id]


def ledger_charged(net: CoreNet, job_id: str) -> float:
    """What the origin's ledger holds as spent on the job (countersigned receipts)."""
    origin = net.order[0]
    return math.fsum(
        e.credits
        for e in net.node(0).ledger.entries.values()
        if e.origin == origin and e.job_id == job_id
    )


def reputations(net: CoreNet) -> dict[str, float]:
    node = net.node(0)
    return {p: node.trust.reputation(p, net.now_ms) for p in net.order[1:]}


# ------------------------------------------------------------ failures attributed right


def test_a_job_that_exits_nonzero_costs_two_runs_and_leaves_reputation_unchanged() -> None:
    """A job's own failure is confirmed by one run elsewhere and then fails the
    job: at most ``job_fault_runs`` runs, both paid by the submitter (receipts
    with verdict ``job_failed``, countersigned), no mark on either worker, and
    the exit code named once."""
    workers = [FakeWorker(exit_code=lambda s: 3, duration_ms=lambda s: 2_000) for _ in range(6)]
    net = mesh(6, seed=31, workers=workers)
    job_id = net.submit(0, spec())
    job = run_to_end(net, job_id)
    assert job.state == "failed"
    ran_on = [r.worker for r in job.runs.values()]
    assert len(ran_on) == SINGLE.job_fault_runs == 2 == len(set(ran_on))
    assert job.reason.count("exit code 3") == 1, job.reason
    assert job.reason.startswith("the job failed on 2 workers")
    # Reputation: the two that ran it stand exactly where the idle workers stand.
    rep = reputations(net)
    idle = [rep[p] for p in net.order[1:] if p not in ran_on]
    assert all(rep[w] == idle[0] for w in ran_on), rep
    assert all(b["fault"] == "job" for b in records(net, net.order[0], "run_failed", job_id))
    # Charged to the submitter: a receipt per run, countersigned; shown = ledger.
    receipts = records(net, net.order[0], "receipt", job_id)
    assert sorted(r["worker"] for r in receipts) == sorted(ran_on)
    assert job.cost_actual > 0
    assert job.cost_actual == pytest.approx(ledger_charged(net, job_id))
    assert job.cost_actual == pytest.approx(2 * 2.0 * 50.0 * 0.001)


@pytest.mark.parametrize(
    ("worker", "words"),
    [
        (FakeWorker(duration_ms=lambda s: 60_000), "hit its timeout"),
        (FakeWorker(status=lambda s: "oom"), "ran out of memory"),
        (FakeWorker(status=lambda s: "output_limit"), "wrote more output than allowed"),
        (FakeWorker(input_failure=lambda s: "job"), "input fetch failed"),
    ],
    ids=["timeout", "oom", "output_limit", "input_uri"],
)
def test_every_job_caused_failure_fails_the_job_after_one_confirming_run(
    worker: FakeWorker, words: str
) -> None:
    """PROTOCOL.md §10: its own timeout, out of memory, output over the cap and
    an input the submitter named that cannot be fetched are the job's fault."""
    net = mesh(5, seed=32, workers=[worker] * 5)
    job_id = net.submit(0, spec(timeout_s=10))
    job = run_to_end(net, job_id)
    assert job.state == "failed"
    assert len(job.runs) == 2
    assert job.reason.count(words) == 1, job.reason
    rep = reputations(net)
    assert len(set(rep.values())) == 1, "no worker's reputation moved"


def test_a_worker_that_cannot_fetch_the_origins_blob_is_blamed_and_the_job_retried() -> None:
    """An input from the origin that does not arrive is the worker's fault:
    re-offered as before (up to ``max_attempts``), marked against the worker."""
    net = mesh(6, seed=33, workers=[FakeWorker(input_failure=lambda s: "worker")] * 6)
    job_id = net.submit(0, spec())
    job = run_to_end(net, job_id)
    assert job.state == "failed"
    assert len(job.runs) == SINGLE.max_attempts
    rep = reputations(net)
    assert all(rep[r.worker] < 0 for r in job.runs.values())
    assert job.cost_actual == 0 == ledger_charged(net, job_id)


def test_a_flaky_job_that_succeeds_on_the_confirming_run_pays_only_that_run() -> None:
    """An unconfirmed job fault (the run elsewhere succeeds) is not charged."""
    calls = {"n": 0}

    def first_fails(_: JobSpec) -> int:
        calls["n"] += 1
        return 3 if calls["n"] == 1 else 0

    net = mesh(4, seed=34, workers=[FakeWorker(exit_code=first_fails)] * 4)
    job_id = net.submit(0, spec())
    job = run_to_end(net, job_id)
    assert job.state == "succeeded", job.reason
    assert len(job.runs) == 2
    assert len(records(net, net.order[0], "receipt", job_id)) == 1
    assert job.cost_actual == pytest.approx(ledger_charged(net, job_id))


# ------------------------------------------------------------ budgets that hold


def test_max_budget_caps_the_total_across_job_fault_retries() -> None:
    """JOB.md §5: ``max_budget`` caps the job's total cost, not each run's. Each
    run here would cost 0.6 × the budget; without a flops estimate the worker
    stops each run at the budget the origin has left for it."""
    budget = 0.06
    # 0.72 s × 50 GFLOPS × 0.001 credits/GFLOP = 0.036 credits a run.
    workers = [
        FakeWorker(exit_code=lambda s: 3, duration_ms=lambda s: 720, caps=default_caps(price=0.001))
        for _ in range(6)
    ]
    net = mesh(6, seed=35, workers=workers)
    job_id = net.submit(0, spec(max_budget=budget, timeout_s=600))
    job = run_to_end(net, job_id)
    assert job.state == "failed"
    first = 0.72 * 50 * 0.001  # 0.036 = 0.6 × budget
    assert job.cost_actual == pytest.approx(ledger_charged(net, job_id))
    assert job.cost_actual <= budget + 1e-12
    # the second run stopped at what was left (durations are whole milliseconds)
    assert job.cost_actual == pytest.approx(budget, rel=1e-2)
    assert first < job.cost_actual
    held = [
        w.timeout_s
        for pid in net.order[1:]
        for w in net.slots[pid].node.worker.work.values()
        if w.key[0] == job_id
    ]
    # the first run may spend the whole budget, the second only what the first left
    rate = 50 * 0.001
    assert sorted(held) == [pytest.approx((budget - first) / rate), pytest.approx(budget / rate)]


def test_max_budget_holds_when_the_worker_dies_mid_run() -> None:
    """A lost run earns nothing and frees its share; the retry elsewhere is
    awarded within what is left, and the total charged stays in budget."""
    workers = [FakeWorker(duration_ms=lambda s: 10_000) for _ in range(4)]
    net = mesh(4, seed=36, workers=workers)
    budget = 0.8  # a whole 10 s run costs 0.5
    job_id = net.submit(0, spec(max_budget=budget, timeout_s=600))
    assert net.run_until(lambda: any(r.started for r in net.job(0, job_id).runs.values()))
    (first,) = net.job(0, job_id).runs.values()
    net.run_for(3_000)
    net.crash(first.worker)
    job = run_to_end(net, job_id)
    assert job.state == "succeeded", job.reason
    assert "lease lost" in records(net, net.order[0], "run_failed", job_id)[0]["reason"]
    assert len(job.runs) == 2
    assert job.cost_actual == pytest.approx(ledger_charged(net, job_id)) == pytest.approx(0.5)
    assert job.cost_actual <= budget


def test_a_job_whose_budget_is_spent_fails_saying_so() -> None:
    """When the runs already paid leave nothing, no further run is offered."""
    workers = [FakeWorker(exit_code=lambda s: 3, duration_ms=lambda s: 60_000)] * 4
    net = mesh(4, seed=37, workers=workers)
    job_id = net.submit(0, spec(max_budget=0.05, timeout_s=600))
    job = run_to_end(net, job_id)
    assert job.state == "failed"
    assert len(job.runs) == 1, "the first run took the whole budget"
    assert "budget spent" in job.reason
    assert job.cost_actual == pytest.approx(0.05) == pytest.approx(ledger_charged(net, job_id))


# ------------------------------------------------------------ estimates


def test_estimates_use_flops_else_the_images_history_else_a_default() -> None:
    """PROTOCOL.md §8.2: never simply the timeout."""
    net = mesh(3, seed=38, workers=[FakeWorker(duration_ms=lambda s: 4_000)] * 3)
    origin = net.node(0).origin
    job_spec = spec(timeout_s=3_600)
    est = origin.estimate(job_spec)
    default_s = SINGLE.default_job_gflop / 50.0
    assert est["basis"] == "default" and est["seconds"] == pytest.approx(default_s)
    assert est["credits"] == pytest.approx(SINGLE.default_job_gflop * 0.001)
    exact = origin.estimate(spec(timeout_s=3_600, estimated_flops=5e11))
    assert exact["basis"] == "estimated_flops" and exact["seconds"] == pytest.approx(10.0)
    job = run_to_end(net, net.submit(0, job_spec))
    assert job.state == "succeeded"
    learned = origin.estimate(job_spec)
    assert learned["basis"] == "history"
    assert learned["seconds"] == pytest.approx(4.0)  # 4 s × 50 GFLOPS = 200 GFLOP
    assert learned["credits"] == pytest.approx(job.cost_actual)
    # Another image has no history yet.
    assert origin.estimate(spec(image="other:1", timeout_s=3_600))["basis"] == "default"


def test_speed_fast_picks_the_faster_worker_without_a_flops_estimate() -> None:
    """Bids are timed with the origin's guess at the work, so compute score
    counts: ``fast`` takes the 10× faster node over the cheaper slow one."""
    slow = FakeWorker(caps=default_caps(score=20.0, price=0.001))
    fast = FakeWorker(caps=default_caps(score=200.0, price=0.002))
    wins = {"fast": 0, "slow": 0}
    for seed in range(6):
        net = mesh(3, seed=40 + seed, workers=[FakeWorker(), slow, fast])
        job = run_to_end(net, net.submit(0, spec(speed="fast")))
        (run,) = job.runs.values()
        wins["fast" if run.worker == net.order[2] else "slow"] += 1
    assert wins == {"fast": 6, "slow": 0}


def test_work_history_is_bounded_and_takes_the_median() -> None:
    h = WorkHistory(images=2, runs=3)
    for g in (10.0, 1000.0, 20.0, 30.0):  # the first falls out: 1000, 20, 30
        h.learn("a", g)
    assert h.guess("a") == 30.0
    h.learn("b", 5.0)
    h.guess("a")  # asked: most recently used
    h.learn("c", 7.0)  # evicts b, the least recently used
    assert len(h) == 2 and h.guess("b") is None and h.guess("c") == 7.0
    h.learn("a", -1.0)  # nothing learned from a nonsense sample
    assert h.guess("a") == 30.0


def test_a_bid_above_the_budget_left_is_not_awarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The origin does not rely on workers capping their bids at the offer's
    budget: a bid above what the job has left is passed over, with the reason."""
    import meshd.core.worker as worker_mod

    honest = worker_mod.make_bid

    def overbid(*args: Any, **kw: Any) -> Any:
        bid = honest(*args, **kw)
        return bid.model_copy(update={"price": 1.0})

    monkeypatch.setattr(worker_mod, "make_bid", overbid)
    net = mesh(3, seed=39, workers=[FakeWorker()] * 3)
    job_id = net.submit(0, spec(max_budget=0.5, timeout_s=600))
    net.run_for(20_000)
    job = net.job(0, job_id)
    assert job.runs == {}
    assert job.declines and any("exceeds the budget left, 0.5" in r for _, r in job.declines)


def test_a_replicated_job_shares_its_budget_between_its_runs() -> None:
    """Replication is decided when the first bid is awarded, after the round
    was offered (and bid) at the whole budget: each of the two runs is awarded
    half of it (the worker stops a run at its award's price), so both fit and
    the job is verified within budget."""
    params = CoreParams(replication_fraction=1.0, untrusted_replication=1.0)
    workers = [FakeWorker(duration_ms=lambda s: 10_000) for _ in range(4)]
    net = mesh(4, seed=41, workers=workers, params=params)
    budget = 1.2  # a 10 s run costs 0.5; the timeout bound (30) is capped at the budget
    job_id = net.submit(0, spec(max_budget=budget, timeout_s=600))
    job = run_to_end(net, job_id)
    assert job.state == "succeeded", job.reason
    assert job.verdict["verdict"] == "agreed"
    assert sorted(r.price for r in job.runs.values()) == [pytest.approx(budget / 2)] * 2
    assert job.cost_actual == pytest.approx(ledger_charged(net, job_id)) == pytest.approx(1.0)


def test_a_budget_that_cannot_pay_two_runs_of_a_flops_job_is_not_replicated() -> None:
    """CREDITS.md §4: the budget pays for verification too; when the first
    bid's exact price fits once but not twice, the result is accepted
    unverified rather than the job waiting for a second run it cannot pay."""
    params = CoreParams(replication_fraction=1.0, untrusted_replication=1.0)
    net = mesh(4, seed=42, workers=[FakeWorker(duration_ms=lambda s: 2_000)] * 4, params=params)
    # 1e11 flop at 0.001 credits per GFLOP = 0.1 credits a run; the budget pays 1.5 runs.
    job_id = net.submit(0, spec(estimated_flops=1e11, max_budget=0.15))
    job = run_to_end(net, job_id)
    assert job.state == "succeeded", job.reason
    assert len(job.runs) == 1 and job.verdict["verdict"] == "unverified"
    assert job.cost_actual == pytest.approx(0.1) == pytest.approx(ledger_charged(net, job_id))


def test_an_origin_restarted_between_the_two_runs_still_stops_at_two() -> None:
    """The job-fault count is rebuilt from the log (``run_failed`` with
    ``fault: job``): a restart does not buy the job a third run."""
    workers = [FakeWorker(exit_code=lambda s: 3, duration_ms=lambda s: 2_000) for _ in range(6)]
    net = mesh(6, seed=43, workers=workers)
    origin = net.order[0]
    job_id = net.submit(0, spec())
    assert net.run_until(lambda: bool(records(net, origin, "run_failed", job_id)))
    net.crash(origin)
    net.restart(origin)
    job = run_to_end(net, job_id)
    assert job.state == "failed", job.reason
    assert len(job.runs) == 2 and job.reason.startswith("the job failed on 2 workers")
    assert job.cost_actual > 0
    assert job.cost_actual == pytest.approx(ledger_charged(net, job_id))


def test_a_failure_is_named_once() -> None:
    from meshd.core.origin import failure_text

    assert failure_text("failed", 3, "exit code 3") == "exit code 3"
    assert failure_text("failed", 3, "") == "exit code 3"
    assert failure_text("failed", 143, "exit code 143 (killed by signal 15)") == (
        "exit code 143 (killed by signal 15)"
    )
    assert failure_text("timeout", 137, "killed after the 5 s wall-clock limit") == (
        "hit its timeout: killed after the 5 s wall-clock limit"
    )
    assert failure_text("oom", 137, "") == "ran out of memory"
