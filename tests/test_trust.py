"""Trust: adaptive replication, reputation, attestations, bans (meshd/core/trust.py),
and replicated verification through the origin on CoreNet.

Rules checked (trust.py header, specs/CREDITS.md):
- "a worker is trusted after trust_after_valid consecutive valid results; one
  invalid result resets the streak" (BOINC adaptive replication);
- untrusted workers are replicated with untrusted_replication, trusted ones
  with max(replication_fraction, 1/streak);
- reputation decays with a half-life; a ban lifts when the evidence fades,
  except a ban on proof (equivocation);
- attestations count only from credible issuers (positive reputation, not
  banned; full weight from 0.05), weigh less than own observations and can
  never ban alone;
- the remote streak: valid attestations from credible origins make a worker
  trusted (at most 2 per issuer, so five origins must vouch), an invalid one
  from a credible issuer resets it, and a node that caught the worker itself
  ignores it; ranking uses remote evidence when it is worse;
- honest outputs that differ only within tolerance are never penalised; a
  mismatch brings a tie-breaker and the majority is canonical.
"""

from __future__ import annotations

import dataclasses
import random

from meshd.core.jobspec import JobSpec, Tolerance
from meshd.core.params import CoreParams
from meshd.core.trust import Trust
from meshd.testing.corenet import CoreNet, FakeWorker, honest_output

P = CoreParams()
AT_TRUST = max(P.replication_fraction, 1 / P.trust_after_valid)
"""Replication probability the moment trust is earned (1/streak, floored)."""
T0 = 1_000_000
W = "12D3KooWworker"


def trust(params: CoreParams = P) -> tuple[Trust, list[tuple[str, float, bool]]]:
    t = Trust(params)
    seen: list[tuple[str, float, bool]] = []
    t.listener = lambda peer, rep, banned: seen.append((peer, rep, banned))
    return t, seen


# ---------------------------------------------------------------- replication policy


def test_stranger_is_always_replicated_and_trusted_after_ten_valid() -> None:
    t, _ = trust()
    assert t.replication_probability(W) == 1.0
    for _ in range(P.trust_after_valid - 1):
        t.observe(W, "valid", T0)
    assert not t.trusted(W) and t.replication_probability(W) == 1.0
    t.observe(W, "valid", T0)
    assert t.trusted(W)
    assert t.replication_probability(W) == AT_TRUST


def test_one_invalid_resets_the_streak() -> None:
    t, _ = trust()
    for _ in range(30):
        t.observe(W, "valid", T0)
    t.observe(W, "invalid", T0)
    assert not t.trusted(W)
    assert t.replication_probability(W) == 1.0


def test_trusted_probability_falls_as_one_over_streak_down_to_the_floor() -> None:
    t, _ = trust(dataclasses.replace(P, replication_fraction=0.02))
    probs = []
    for n in range(1, 101):
        t.observe(W, "valid", T0)
        if n in (10, 20, 50, 100):
            probs.append(t.replication_probability(W))
    assert probs == [0.1, 0.05, 0.02, 0.02]


def test_should_replicate_follows_the_probability() -> None:
    t, _ = trust()
    for _ in range(10):
        t.observe(W, "valid", T0)
    rng = random.Random(5)
    share = sum(t.should_replicate(W, rng) for _ in range(10_000)) / 10_000
    assert abs(share - AT_TRUST) < 0.015


# ---------------------------------------------------------------- reputation and bans


def test_a_strangers_first_proven_lie_bans_it_and_the_ban_fades_with_its_evidence() -> None:
    t, seen = trust()
    t.observe(W, "valid", T0)
    t.observe(W, "invalid", T0)
    assert t.banned(W, T0) and t.reputation(W, T0) < P.ban_reputation
    assert seen[-1][0] == W and seen[-1][2] is True
    later = T0 + 3 * P.reputation_half_life_ms
    assert not t.banned(W, later)
    t.refresh(later)
    assert seen[-1][2] is False  # standing change reported: ban lifted


def test_one_proven_lie_convicts_a_long_standing_peer_for_conviction_ms() -> None:
    """One-strike conviction (CREDITS.md §6.1): whatever its record."""
    t, seen = trust()
    for _ in range(200):
        t.observe(W, "valid", T0)
    assert t.reputation(W, T0) > 0.9 and not t.banned(W, T0)
    t.observe(W, "invalid", T0)
    assert t.convicted(W, T0) and t.banned(W, T0) and t.reputation(W, T0) == -1.0
    assert seen[-1] == (W, -1.0, True)
    t.observe(W, "valid", T0 + 1)  # an audit may confirm an old honest result: still convicted
    end = T0 + P.conviction_ms
    assert t.convicted(W, end - 1) and t.banned(W, end - 1)
    assert not t.convicted(W, end)
    assert t.rank_reputation("12D3KooWother", T0) == 0.0  # nobody else is touched


def test_a_credible_conviction_elsewhere_makes_a_trusted_worker_verified_again() -> None:
    """The invalid attestation another origin publishes with its verdict resets
    this node's own streak (times the issuer's credibility), never bans."""
    t, _ = trust()
    (issuer,) = vouchers(t, 1)
    for _ in range(30):
        t.observe(W, "valid", T0)
    assert t.trusted(W) and t.replication_probability(W) == P.replication_fraction
    assert t.observe_remote(issuer, W, "invalid", T0)
    assert not t.trusted(W) and t.replication_probability(W) == P.untrusted_replication
    assert not t.banned(W, T0) and not t.convicted(W, T0)
    for _ in range(P.trust_after_valid):
        t.observe(W, "valid", T0)
    assert t.trusted(W)


def test_small_changes_are_not_reported_but_ban_flips_are() -> None:
    t, seen = trust()
    for _ in range(40):
        t.observe(W, "completed", T0)
    assert 1 <= len(seen) <= 6  # only moves of ≥ peer_score_min_change
    assert all(not banned for _, _, banned in seen)


def test_equivocator_is_banned_for_ever() -> None:
    t, seen = trust()
    t.ban_forever(W, "equivocation", T0)
    assert t.banned(W, T0 + 100 * P.reputation_half_life_ms)
    assert t.reputation(W, T0) == -1.0
    assert seen[-1] == (W, -1.0, True)


# ---------------------------------------------------------------- attestations (Sybil limits)


def test_attestations_from_strangers_or_bad_peers_are_ignored() -> None:
    t, _ = trust()
    assert not t.observe_remote("12D3KooWsybil", W, "invalid", T0)
    t.observe("12D3KooWbad", "invalid", T0)
    assert not t.observe_remote("12D3KooWbad", W, "invalid", T0)
    assert t.reputation(W, T0) == 0.0


def test_attestations_weigh_less_than_own_observations() -> None:
    t, _ = trust()
    good = "12D3KooWgood"
    for _ in range(10):
        t.observe(good, "valid", T0)
    assert t.observe_remote(good, W, "valid", T0)
    remote = t.reputation(W, T0)
    own, _ = trust()
    own.observe(W, "valid", T0)
    assert 0 < remote < own.reputation(W, T0)


def test_slander_from_many_good_peers_can_never_ban() -> None:
    t, _ = trust()
    for i in range(50):
        issuer = f"12D3KooWgood{i}"
        for _ in range(10):
            t.observe(issuer, "valid", T0)
        t.observe_remote(issuer, W, "invalid", T0)
    rep = t.reputation(W, T0)
    bound = P.attestation_max_mass / (P.attestation_max_mass + P.reputation_prior_mass)
    assert rep >= -bound - 1e-9
    assert not t.banned(W, T0)


# ---------------------------------------------------------------- remote streak (cross-origin trust)


def vouchers(t: Trust, n: int) -> list[str]:
    """n issuers this node verified once each (reputation 0.2: full credibility)."""
    out = [f"12D3KooWorigin{i}" for i in range(n)]
    for o in out:
        t.observe(o, "valid", T0)
        assert t.credibility(o, T0) == 1.0
    return out


def test_five_credible_origins_vouching_twice_make_a_worker_trusted() -> None:
    t, _ = trust()
    issuers = vouchers(t, 5)
    for i, o in enumerate(issuers):
        for _ in range(2):
            assert t.observe_remote(o, W, "valid", T0)
        assert t.trusted(W) == (i == 4)
    assert t.replication_probability(W) == AT_TRUST


def test_one_issuer_cannot_make_a_worker_trusted_however_often_it_vouches() -> None:
    t, _ = trust()
    (o,) = vouchers(t, 1)
    for _ in range(50):
        t.observe_remote(o, W, "valid", T0)
    assert t.streak(W) == P.attestation_streak_per_issuer
    assert not t.trusted(W) and t.replication_probability(W) == 1.0


def test_an_invalid_attestation_from_a_credible_issuer_resets_the_remote_streak() -> None:
    t, _ = trust()
    issuers = vouchers(t, 6)
    for o in issuers[:5]:
        t.observe_remote(o, W, "valid", T0)
        t.observe_remote(o, W, "valid", T0)
    assert t.trusted(W)
    t.observe_remote(issuers[5], W, "invalid", T0)
    assert t.streak(W) == 0 and not t.trusted(W)


def test_own_proof_of_a_lie_overrides_any_vouching() -> None:
    t, _ = trust()
    issuers = vouchers(t, 6)
    t.observe(W, "invalid", T0)
    for o in issuers:
        t.observe_remote(o, W, "valid", T0)
        t.observe_remote(o, W, "valid", T0)
    assert t.streak(W) == 0 and not t.trusted(W)
    for _ in range(P.trust_after_valid):  # only its own streak can restore trust
        t.observe(W, "valid", T0)
    assert t.trusted(W)


def test_credibility_fades_along_a_chain_of_vouching() -> None:
    t, _ = trust()
    (o,) = vouchers(t, 1)
    sybil, sybil2 = "12D3KooWsybil1", "12D3KooWsybil2"
    t.observe_remote(o, sybil, "valid", T0)
    c1 = t.credibility(sybil, T0)
    assert 0 < c1 < 0.5
    t.observe_remote(sybil, sybil2, "valid", T0)
    assert t.credibility(sybil2, T0) < c1 / 10
    before = t.streak(W)
    t.observe_remote(sybil2, W, "valid", T0)
    assert t.streak(W) - before < 0.05


def test_ranking_uses_remote_evidence_when_it_is_worse_but_bans_need_own() -> None:
    t, _ = trust()
    issuers = vouchers(t, 4)
    t.observe(W, "valid", T0)
    t.observe(W, "valid", T0)
    for o in issuers:
        t.observe_remote(o, W, "invalid", T0)
    assert t.reputation(W, T0) > t.rank_reputation(W, T0)
    assert t.rank_reputation(W, T0) < -0.2
    assert not t.banned(W, T0)
    good = "12D3KooWgood"
    t.observe(good, "valid", T0)
    assert t.rank_reputation(good, T0) == t.reputation(good, T0)


# ---------------------------------------------------------------- uptime from adverts


def test_uptime_separates_steady_from_flaky_peers_but_can_neither_ban_nor_vouch() -> None:
    t, _ = trust()
    steady, flaky = "12D3KooWsteady", "12D3KooWflaky"
    for i in range(200):
        t.sample_uptime(steady, True, T0)
        t.sample_uptime(flaky, i % 5 == 0, T0)
    bound = P.uptime_mass / (P.uptime_mass + P.reputation_prior_mass)
    assert 0 < t.reputation(steady, T0) <= bound + 1e-9
    assert -bound - 1e-9 <= t.reputation(flaky, T0) < 0
    assert not t.banned(flaky, T0)
    assert t.credibility(steady, T0) == 0.0  # being online vouches for nobody
    assert not t.observe_remote(steady, W, "valid", T0)


def test_uptime_is_sampled_from_adverts_and_down_once_they_stop() -> None:
    net = CoreNet(3, params=dataclasses.replace(P, peer_score_interval_ms=1_000))
    net.run_for(5_000)
    origin, other = net.node(0), net.order[1]
    assert origin.trust.snapshot(net.now_ms)[other]["uptime"] == 1.0
    net.crash(other)
    net.run_for(30_000)
    assert origin.trust.snapshot(net.now_ms)[other]["uptime"] < 0.9


def test_trust_table_is_bounded() -> None:
    t, _ = trust(dataclasses.replace(P, max_trust_entries=50))
    for i in range(200):
        t.observe(f"12D3KooW{i}", "completed", T0)
    assert len(t.snapshot(T0)) <= 50


# ---------------------------------------------------------------- verification on CoreNet


def spec(i: int, **kw: object) -> JobSpec:
    return JobSpec(image="meshd/busybox:1", command=["echo", str(i)], timeout_s=60, **kw)  # type: ignore[arg-type]


def run_jobs(net: CoreNet, specs: list[JobSpec], spacing_ms: int = 300) -> list[str]:
    ids = []
    for s in specs:
        ids.append(net.submit(0, s))
        net.run_for(spacing_ms)
    assert net.run_until(
        lambda: all(net.job(0, j).state in ("succeeded", "failed") for j in ids), 300_000
    )
    return ids


def test_half_liar_is_caught_banned_unpaid_and_submitter_gets_honest_output() -> None:
    workers = [FakeWorker() for _ in range(5)] + [FakeWorker(lie_rate=0.5)]
    net = CoreNet(6, seed=4, workers=workers)
    net.run_for(3_000)
    liar = net.order[5]
    specs = [spec(i) for i in range(40)]
    ids = run_jobs(net, specs)
    origin = net.node(0)
    for j, s in zip(ids, specs, strict=True):
        assert net.job(0, j).state == "succeeded"
        assert net.job(0, j).canonical == honest_output(s)
    snap = origin.trust.snapshot(net.now_ms)
    assert snap[liar]["invalid"] >= 1 and snap[liar]["banned"] and snap[liar]["valid_streak"] == 0
    assert origin.counters["rejected_banned"] > 0  # its messages are dropped now
    caught_in = [j for j in ids if liar in (net.job(0, j).verdict or {}).get("invalid", [])]
    assert caught_in
    for node_id in net.order:  # nobody's ledger pays the liar for rejected work
        for e in net.node(node_id).ledger.entries.values():
            assert not (e.worker == liar and e.job_id in caught_in)
    for p in net.order[1:5]:
        assert snap.get(p, {"invalid": 0})["invalid"] == 0
        assert not origin.trust.banned(p, net.now_ms)


def test_float_noise_within_tolerance_is_never_penalised() -> None:
    workers = [FakeWorker(float_noise=True) for _ in range(5)]
    net = CoreNet(5, seed=8, workers=workers)
    net.checker_delay_ms = 3_000
    net.run_for(3_000)
    specs = [spec(i, tolerance=Tolerance(rel=1e-9), replicas=2) for i in range(15)]
    ids = run_jobs(net, specs)
    origin = net.node(0)
    for j in ids:
        job = net.job(0, j)
        assert job.state == "succeeded" and job.verdict["verdict"] == "agreed"
        assert job.verdict["invalid"] == [] and len(job.verdict["valid"]) == 2
        assert len(job.runs) == 2  # no tie-breaker started while the checker was judging
        assert net.noisy[job.canonical]  # a (noisy) honest output
    assert all(
        v["invalid"] == 0 and not v["banned"] for v in origin.trust.snapshot(net.now_ms).values()
    )
    assert origin.counters["checker_verdict_unsolicited"] == 0


def test_exact_rule_would_flag_noise_but_tolerance_rule_does_not() -> None:
    """The same noisy mesh without a tolerance: digests differ, so replicas disagree."""
    workers = [FakeWorker(float_noise=True) for _ in range(6)]
    net = CoreNet(6, seed=8, workers=workers)
    net.run_for(3_000)
    ids = run_jobs(net, [spec(1, replicas=2)])
    job = net.job(0, ids[0])
    assert job.state == "failed" and "disagree" in job.reason
    assert all(v["invalid"] == 0 for v in net.node(0).trust.snapshot(net.now_ms).values())


def test_liar_among_noisy_workers_is_still_outvoted() -> None:
    workers = [FakeWorker(float_noise=True) for _ in range(4)] + [FakeWorker(lie_rate=1.0)]
    net = CoreNet(5, seed=3, workers=workers)
    net.run_for(3_000)
    liar = net.order[4]
    specs = [spec(i, tolerance=Tolerance(abs=1e-6)) for i in range(12)]
    ids = run_jobs(net, specs)
    for j, s in zip(ids, specs, strict=True):
        job = net.job(0, j)
        assert job.state == "succeeded"
        assert net.noisy.get(job.canonical, job.canonical) == honest_output(s)
    assert net.node(0).trust.banned(liar, net.now_ms)


def test_last_tie_breaker_waits_for_the_comparison_before_giving_up() -> None:
    """Every fitting worker has run the job and two results disagree, but the
    comparison of the tie-breaker's result is still pending: the job must wait
    for the verdict (which settles it), not fail as "no tie-breaker possible"."""
    workers = [FakeWorker(), FakeWorker(float_noise=True), FakeWorker(float_noise=True)]
    workers.append(FakeWorker(lie_rate=1.0))
    net = CoreNet(4, seed=5, workers=workers)
    net.checker_delay_ms = 3_000
    net.run_for(3_000)
    liar = net.order[3]
    ids = run_jobs(net, [spec(i, tolerance=Tolerance(rel=1e-9), replicas=2) for i in range(8)])
    jobs = [net.job(0, j) for j in ids]
    assert all(j.state == "succeeded" for j in jobs), [j.reason for j in jobs]
    caught = [j for j in jobs if liar in j.verdict["invalid"]]
    assert caught and all(len(j.runs) == 3 for j in caught)
    assert all(liar not in j.verdict["valid"] for j in jobs)


def test_mismatch_brings_a_tie_breaker_and_majority_wins() -> None:
    workers = [FakeWorker(), FakeWorker(), FakeWorker(), FakeWorker(lie_rate=1.0)]
    net = CoreNet(4, seed=12, workers=workers)
    net.run_for(3_000)
    liar = net.order[3]
    ids = run_jobs(net, [spec(i, replicas=2) for i in range(8)])
    tie_broken = [
        net.job(0, j) for j in ids if liar in (net.job(0, j).verdict or {}).get("invalid", [])
    ]
    assert tie_broken
    job = tie_broken[0]
    assert job.verdict["replicas"] == 3 and len(job.verdict["valid"]) == 2


def test_checker_verdict_decides_and_persistent_disagreement_fails_without_blame() -> None:
    workers = [FakeWorker(float_noise=True) for _ in range(6)]
    net = CoreNet(6, seed=2, workers=workers)
    net.checker = lambda eff: False  # the user's checker rejects every pair
    net.run_for(3_000)
    ids = run_jobs(net, [spec(1, checker_image="acme/check:1", replicas=2)])
    job = net.job(0, ids[0])
    assert job.state == "failed"
    assert len(job.runs) >= P.max_disagreeing_results
    assert all(v["invalid"] == 0 for v in net.node(0).trust.snapshot(net.now_ms).values())


def test_disagreement_with_no_worker_left_to_break_the_tie_fails_at_once_without_blame() -> None:
    """Three workers, three different outputs: no fourth worker exists, so the
    job fails now (not after max_queue_time_ms) and nobody is penalised. (The
    origin is cold: a fitting origin would run the tie-breaker itself, §8.5.)"""
    workers = [FakeWorker(healthy=False)] + [FakeWorker(lie_rate=1.0) for _ in range(3)]
    net = CoreNet(4, seed=3, workers=workers)
    net.run_for(3_000)
    start = net.now_ms
    ids = run_jobs(net, [spec(1, replicas=2)])
    job = net.job(0, ids[0])
    assert job.state == "failed" and "no tie-breaker is possible" in job.reason, job.reason
    assert len(job.runs) == 3
    assert net.now_ms - start < P.max_queue_time_ms / 10
    assert all(v["invalid"] == 0 for v in net.node(0).trust.snapshot(net.now_ms).values())


def test_a_retry_on_another_worker_gets_its_own_replication_decision() -> None:
    """The decision made for the first (trusted) worker does not cover a re-offer's result."""
    params = dataclasses.replace(P, replication_fraction=0.0)
    workers = [FakeWorker(), FakeWorker(exit_code=lambda s: 3), FakeWorker(), FakeWorker()]
    net = CoreNet(4, seed=6, params=params, workers=workers)
    net.run_for(3_000)
    origin, flaky = net.node(0), net.order[1]
    for _ in range(10_000):  # trusted so long that 1/streak ≈ 0: never replicated
        origin.trust.observe(flaky, "valid", net.now_ms)
    for other in net.order[2:]:  # the first round reaches only the flaky worker
        net.cut(net.order[0], other)
    job_id = net.submit(0, spec(1))
    assert net.run_until(lambda: net.job(0, job_id).failures >= 1, 5_000)
    net.heal()
    assert net.run_until(lambda: net.job(0, job_id).state in ("succeeded", "failed"), 60_000)
    job = net.job(0, job_id)
    assert job.runs[min(job.runs)].worker == flaky
    assert job.state == "succeeded"
    assert job.verdict["needed"] == 2 and job.verdict["verdict"] == "agreed"
    assert flaky not in job.verdict["valid"]
