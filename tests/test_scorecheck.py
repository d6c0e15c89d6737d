"""The claimed-score cross-check (meshd/core/scorecheck.py, origin.py
``_check_claimed_score``; specs/CREDITS.md §6 "Over-claimed score").

Rules checked: "the worker is judged on the best sample in its window once it
holds ``score_check_min_samples``"; "a gap above ``score_mismatch_ratio`` is an
over-claim ... of weight ``overclaim_weight × (gap − 1)``, at most
``invalid_weight``"; an honest worker on a busy machine (most runs far slower
than its claim, some at it) is never flagged; a 2× over-claimer loses
reputation and work.
"""

from __future__ import annotations

from itertools import count

from meshd.core.jobspec import JobSpec, parse_job_spec
from meshd.core.params import CoreParams
from meshd.core.scorecheck import ScoreCheck
from meshd.testing.corenet import CoreNet, FakeWorker, default_caps

P = CoreParams()
SINGLE = CoreParams(replication_fraction=0.0, untrusted_replication=0.0)


def test_judged_on_the_best_run_after_the_minimum_samples_penalty_grows_with_the_gap() -> None:
    check = ScoreCheck(P)
    # Busy honest machine: mostly at 40-60% of its claim, one run at 95%.
    honest = [check.sample("h", 100.0, a) for a in (50.0, 40.0, 95.0, 45.0, 60.0, 41.0, 43.0)]
    assert all(v.weight == 0.0 for v in honest)
    assert sum(v.best for v in honest[-1:]) == 0.95
    # 2x over-claimer: nothing before the minimum sample count, then 0.5 per run.
    twice = [check.sample("x2", 100.0, 50.0) for _ in range(P.score_check_min_samples + 2)]
    assert [v.weight for v in twice[: P.score_check_min_samples - 1]] == [0.0] * 4
    assert twice[-1].gap == 2.0
    assert twice[-1].weight == P.overclaim_weight * 1.0
    twenty = [check.sample("x20", 1000.0, 50.0) for _ in range(P.score_check_min_samples)]
    assert twenty[-1].weight == min(P.invalid_weight, P.overclaim_weight * 19.0)
    assert twenty[-1].weight > twice[-1].weight
    # Within tolerance: never.
    mild = [check.sample("m", 100.0, 70.0) for _ in range(20)]
    assert all(v.weight == 0.0 for v in mild)


def test_the_window_forgets_an_old_fast_run_and_is_bounded() -> None:
    p = CoreParams(score_check_window=4, score_check_min_samples=2, max_trust_entries=2)
    check = ScoreCheck(p)
    check.sample("w", 100.0, 100.0)
    verdicts = [check.sample("w", 100.0, 30.0) for _ in range(4)]
    assert verdicts[2].weight == 0.0 and verdicts[3].weight > 0.0  # the fast run left
    check.sample("a", 100.0, 100.0)
    check.sample("b", 100.0, 100.0)
    assert check.samples("w") == 0 and check.samples("b") == 1


def spec(i: int) -> JobSpec:
    # 1e11 flop: 2 s at 50 GFLOPS
    return parse_job_spec(
        {"image": "meshd/busybox:1", "command": ["echo", str(i)], "estimated_flops": 1e11}
    )


def test_a_2x_over_claimer_loses_reputation_and_work_a_busy_honest_worker_does_not() -> None:
    busy = count()
    # Honest: claims its measured 50 GFLOPS; its machine is busy, so most runs take
    # 1.6-2.5x as long as the claim says (2 s), one in five runs at the claimed speed.
    honest = FakeWorker(
        caps=default_caps(score=50.0),
        duration_ms=lambda s: (2_000, 4_000, 5_000, 3_200, 4_600)[next(busy) % 5],
    )
    # Claims 100 GFLOPS, runs at 50 (2 s): a 2x over-claim.
    liar = FakeWorker(caps=default_caps(score=100.0), duration_ms=lambda s: 2_000)
    idle_origin = FakeWorker(caps=default_caps(images=()))  # bids on nothing
    net = CoreNet(3, seed=31, params=SINGLE, workers=[idle_origin, honest, liar])
    net.run_for(3_000)
    honest_id, liar_id = net.order[1], net.order[2]
    winners = []
    for i in range(30):
        job_id = net.submit(0, spec(i))
        assert net.run_until(lambda j=job_id: net.job(0, j).state == "succeeded", 120_000)
        (run,) = net.job(0, job_id).runs.values()
        winners.append(run.worker)
    trust, now = net.node(0).trust, net.now_ms
    log = net.slots[net.order[0]].log
    mismatches = [b for k, b in log if k == "score_mismatch"]
    assert mismatches and {m["worker"] for m in mismatches} == {liar_id}
    # 2x, plus the award's and the result's transit the origin's clock includes
    assert all(
        2.0 <= m["ratio"] < 2.1 and m["samples"] >= P.score_check_min_samples for m in mismatches
    )
    assert winners.count(honest_id) >= P.score_check_min_samples  # the honest one was judged
    assert trust.reputation(liar_id, now) < 0 < trust.reputation(honest_id, now)
    # Every run it wins once judged is penalised; its claim wins it the first
    # jobs, and it wins far fewer than the honest worker once judged.
    assert len(mismatches) == winners.count(liar_id) - (P.score_check_min_samples - 1)
    assert winners[: P.score_check_min_samples] == [liar_id] * P.score_check_min_samples
    later = winners[15:]
    assert later.count(liar_id) * 3 < later.count(honest_id)


def test_a_worker_under_reporting_its_durations_is_judged_by_the_origins_clock() -> None:
    # Claims 100 GFLOPS, runs at 50 (40 s for 2e12 flop) and reports half of
    # each real duration (20 s): by its own report it achieves its claim.
    big = parse_job_spec(
        {"image": "meshd/busybox:1", "command": ["true"], "estimated_flops": 2e12, "timeout_s": 600}
    )
    liar = FakeWorker(
        caps=default_caps(score=100.0), duration_ms=lambda s: 40_000, reported_share=0.5
    )
    honest = FakeWorker(caps=default_caps(score=50.0), duration_ms=lambda s: 40_000)
    idle_origin = FakeWorker(caps=default_caps(images=()))
    net = CoreNet(3, seed=32, params=SINGLE, workers=[idle_origin, honest, liar])
    net.run_for(3_000)
    honest_id, liar_id = net.order[1], net.order[2]
    for _ in range(20):
        job_id = net.submit(0, big)
        assert net.run_until(lambda j=job_id: net.job(0, j).state == "succeeded", 300_000)
    log = net.slots[net.order[0]].log
    reports = [b for k, b in log if k == "run_result" and b["worker"] == liar_id]
    assert reports and all(r["duration_ms"] == 20_000 for r in reports)
    mismatches = [b for k, b in log if k == "score_mismatch"]
    assert mismatches and {m["worker"] for m in mismatches} == {liar_id}
    # Judged by what the origin saw (award sent to result received, ≥ 40 s,
    # less the 2 s slack), not by the 20 s it reported: the 2x over-claim shows.
    assert all(m["reported_ms"] == 20_000 and m["observed_ms"] >= 40_000 for m in mismatches)
    assert all(m["ratio"] >= 1.9 for m in mismatches)
    trust, now = net.node(0).trust, net.now_ms
    assert trust.reputation(liar_id, now) < 0 < trust.reputation(honest_id, now)
