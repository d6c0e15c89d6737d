"""Placement as pure functions (``meshd/core/placement.py``).

Rules checked (module header): "A worker bids iff it is warm, fits every
requirement, is not excluded, has room ... and its price is within the
budget"; "Reasons the advert cannot show (busy since its last advert,
budget) are sent as a decline"; the cost model; "Ranking: lower is better;
expected finish and price are normalised over the bids, weighted by the speed
profile, then divided by a reputation factor".
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from meshd.core.events import TOPIC_ADVERTS, GossipReceived
from meshd.core.identity import Identity
from meshd.core.jobspec import parse_job_spec
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.placement import (
    Capacity,
    actual_cost,
    budget_timeout_s,
    decline_reason,
    estimate_cost,
    estimate_duration_s,
    fit_reason,
    fit_reasons,
    image_present,
    job_gflops,
    make_bid,
    rank_bids,
    spread_scaled,
)
from meshd.core.wire import Advert, Bid, Offer, OfferRequirements, seal

IMAGE = "meshd/busybox:1"
DIGEST = "sha256:" + "00" * 32

ADVERT_NOW = 1_000_000


def cap(**kw: object) -> Capacity:
    base = Capacity(
        cores=4,
        ram_mb=8192,
        gpus=(),
        gpu_runtime=False,
        runtimes=("docker",),
        images=(IMAGE,),
        tier="cpu",
        network_allowed=False,
        warm=True,
        cold_reason=None,
        score_gflops=50.0,
        price=0.01,
        running=0,
        queued=0,
        capacity=4,
    )
    return dataclasses.replace(base, **kw)


def req(**kw: object) -> OfferRequirements:
    return OfferRequirements(image=IMAGE, **kw)


def offer(**kw: object) -> Offer:
    fields: dict[str, object] = {
        "job_id": "job-000000000001",
        "attempt": 1,
        "spec_digest": DIGEST,
        "requirements": req(),
        "timeout_s": 100.0,
        "bid_window_ms": 250,
    }
    fields.update(kw)
    return Offer(**fields)


GPU = (("RTX 4090", 24_576),)


# ------------------------------------------------------------ fit


def test_fitting_node_has_no_reason() -> None:
    assert fit_reason(cap(), req()) is None


@pytest.mark.parametrize(
    ("capacity", "requirements", "expected"),
    [
        (
            cap(warm=False, cold_reason="docker unreachable"),
            req(),
            "node is cold: docker unreachable",
        ),
        (cap(warm=False, cold_reason=None), req(), "node is cold: health check pending"),
        (cap(), req(gpus=1), "node has no GPU"),
        (cap(gpus=GPU, gpu_runtime=False), req(gpus=1), "engine has no GPU runtime"),
        (cap(gpus=GPU, gpu_runtime=True), req(gpus=2), "needs 2 GPU(s) with ≥0 MB, node has 1"),
        (
            cap(gpus=GPU, gpu_runtime=True),
            req(gpus=1, gpu_min_memory_mb=40_000),
            "needs 1 GPU(s) with ≥40000 MB, node has 0",
        ),
        (cap(ram_mb=512), req(memory_mb=1024), "needs 1024 MB RAM, node has 512"),
        (cap(cores=2), req(cpus=3), "needs 3 CPUs, node has 2"),
        (cap(), req(tier="consumer-gpu"), "needs tier consumer-gpu, node is cpu"),
        (
            cap(tier="consumer-gpu"),
            req(tier="datacenter-gpu"),
            "needs tier datacenter-gpu, node is consumer-gpu",
        ),
        (cap(), req(network=True), "job needs network; node does not allow it"),
        (cap(images=()), req(), f"image {IMAGE} not present locally"),
        (cap(), req(runtime="process"), "runtime process not available (has docker)"),
    ],
)
def test_fit_reasons(capacity: Capacity, requirements: OfferRequirements, expected: str) -> None:
    assert fit_reason(capacity, requirements) == expected


def test_higher_tier_satisfies_a_lower_requirement() -> None:
    assert fit_reason(cap(tier="datacenter-gpu"), req(tier="consumer-gpu")) is None
    assert fit_reason(cap(network_allowed=True), req(network=True)) is None
    assert (
        fit_reason(cap(gpus=GPU, gpu_runtime=True), req(gpus=1, gpu_min_memory_mb=24_576)) is None
    )


def test_image_matching() -> None:
    assert image_present("meshd/busybox", ("meshd/busybox:latest",))
    assert not image_present("meshd/busybox:2", ("meshd/busybox:1",))


def test_the_process_executor_takes_only_jobs_that_ask_for_it() -> None:
    """Issue 12 "Roles": an unsandboxed worker never runs an image job as if it
    could honour the image; only a job asking for runtime process."""
    process = cap(images=(), runtimes=("process",))
    assert fit_reason(process, req()) == (
        "node's process executor is unsandboxed and runs only jobs asking for runtime process"
    )
    assert fit_reason(process, req(runtime="docker")) == fit_reason(process, req())
    assert fit_reason(process, req(runtime="process")) is None
    # Its missing image does not matter to a process job, and matters to any other.
    both = cap(images=(), runtimes=("docker", "process"))
    assert fit_reason(both, req(runtime="process")) is None
    assert fit_reason(both, req()) == f"image {IMAGE} not present locally"
    assert fit_reason(cap(runtimes=()), req()) == "node is a client (runs no jobs)"


def test_every_failed_requirement_has_its_reason() -> None:
    """The refusal at submit counts peers per requirement, not per first failure."""
    assert list(fit_reasons(cap(warm=False, cold_reason="x", cores=2), req(cpus=3, gpus=1))) == [
        "node is cold: x",
        "needs 3 CPUs, node has 2",
        "node has no GPU",
    ]
    assert list(fit_reasons(cap(), req())) == []


# ------------------------------------------------------------ decline / bid


def test_cold_and_static_reasons_are_not_sent() -> None:
    """The origin derives advert-visible reasons itself, so the worker stays quiet."""
    reason, send = decline_reason(
        cap(warm=False, cold_reason="x"), offer(), self_id="me", queue_max=16, overhead_s=1.0
    )
    assert reason == "node is cold: x" and send is False
    reason, send = decline_reason(
        cap(), offer(exclude=["me"]), self_id="me", queue_max=16, overhead_s=1.0
    )
    assert reason is not None and "excluded" in reason and send is False


def test_busy_is_sent() -> None:
    reason, send = decline_reason(
        cap(running=4, queued=16), offer(), self_id="me", queue_max=16, overhead_s=1.0
    )
    assert reason == "busy: 4 running, 16 queued" and send is True


def test_over_budget_with_flops_estimate_is_declined_and_sent() -> None:
    # 1e12 flop = 1000 GFLOP at 0.01 credits/GFLOP = 10 credits.
    o = offer(estimated_flops=1e12, max_budget=5.0)
    reason, send = decline_reason(cap(), o, self_id="me", queue_max=16, overhead_s=1.0)
    assert reason == "price 10 credits exceeds budget 5" and send is True
    assert decline_reason(
        cap(),
        offer(estimated_flops=1e12, max_budget=10.0),
        self_id="me",
        queue_max=16,
        overhead_s=1.0,
    ) == (None, False)


def test_over_budget_without_estimate_bids_and_is_capped() -> None:
    """Without flops the cost is an upper bound: bid, and stop the run at the budget."""
    o = offer(max_budget=5.0)  # 100 s × 50 GFLOPS × 0.01 = 50 credits worst case
    assert decline_reason(cap(), o, self_id="me", queue_max=16, overhead_s=1.0) == (None, False)
    bid = make_bid(cap(), o, avg_run_s=5.0, overhead_s=1.0)
    assert bid.price == 5.0
    assert budget_timeout_s(100.0, 5.0, 50.0, 0.01, 1.0) == pytest.approx(10.0)


def test_bid_estimates() -> None:
    o = offer(estimated_flops=1e12)  # 1000 GFLOP at 50 GFLOPS = 20 s
    bid = make_bid(cap(), o, avg_run_s=5.0, overhead_s=1.0)
    assert bid.est_duration_ms == 21_000
    assert bid.est_start_ms == 0
    assert bid.price == pytest.approx(10.0)
    assert bid.score_gflops == 50.0
    # A full node (4 running on 4 slots, 4 queued) expects to wait for 5 jobs over 4 slots.
    busy = make_bid(cap(running=4, queued=4), o, avg_run_s=8.0, overhead_s=1.0)
    assert busy.est_start_ms == 10_000
    assert (busy.running, busy.queued) == (4, 4)
    # Three of the eight are the offering origin's own: it counts those itself
    # when ranking, so the wait is for the other five (2 waiting over 4 slots);
    # the bid still reports everything it holds.
    mine = make_bid(cap(running=4, queued=4), o, avg_run_s=8.0, overhead_s=1.0, origin_runs=3)
    assert mine.est_start_ms == 4_000
    assert (mine.running, mine.queued) == (4, 4)


def test_duration_and_cost_model() -> None:
    assert estimate_duration_s(None, 60.0, 50.0, 1.0) == 60.0
    assert estimate_duration_s(1e15, 60.0, 50.0, 1.0) == 61.0, "capped by the timeout"
    assert estimate_cost(None, 60.0, 50.0, 0.01, 2.0) == pytest.approx(60.0)
    assert estimate_cost(5e11, 60.0, 50.0, 0.01, 2.0) == pytest.approx(10.0)
    assert actual_cost(2_000, 50.0, 0.01, 1.0) == pytest.approx(1.0)
    assert budget_timeout_s(60.0, None, 50.0, 0.01, 1.0) == 60.0
    assert budget_timeout_s(60.0, 1.0, 0.0, 0.01, 1.0) == 60.0


# ------------------------------------------------------------ GPU jobs: priced by the GPU score

GPU_CAP = {"gpus": GPU, "gpu_runtime": True, "tier": "consumer-gpu", "gpu_gflops": 20_000.0}


def test_a_gpu_job_is_timed_and_priced_with_the_gpu_score() -> None:
    """Module rule: "the measured gpu_gflops when the job needs a GPU and the
    worker advertises one, its CPU score_gflops otherwise"."""
    worker = cap(**GPU_CAP)
    assert job_gflops(worker, 1) == 20_000.0
    assert job_gflops(worker, 0) == 50.0
    # 1e14 flop at 20,000 GFLOPS = 5 s (at the CPU score it would be 2,000 s).
    o = offer(requirements=req(gpus=1), estimated_flops=1e14, timeout_s=10_000.0)
    bid = make_bid(worker, o, avg_run_s=5.0, overhead_s=1.0)
    assert bid.est_duration_ms == 6_000
    assert bid.score_gflops == 20_000.0  # the origin's cost accounting uses the bid's score
    assert bid.price == pytest.approx(1e14 / 1e9 * 0.01)
    # Without a flops estimate the bound is timeout × GPU score × price.
    bound = make_bid(
        worker, offer(requirements=req(gpus=1), timeout_s=10.0), avg_run_s=5.0, overhead_s=1.0
    )
    assert bound.price == pytest.approx(10.0 * 20_000.0 * 0.01)
    assert bound.score_gflops == 20_000.0


def test_a_cpu_job_on_a_gpu_worker_is_priced_with_the_cpu_score() -> None:
    bid = make_bid(cap(**GPU_CAP), offer(estimated_flops=1e12), avg_run_s=5.0, overhead_s=1.0)
    assert bid.score_gflops == 50.0 and bid.est_duration_ms == 21_000


def test_a_gpu_job_falls_back_to_the_cpu_score_without_a_measured_gpu_score() -> None:
    worker = cap(**{**GPU_CAP, "gpu_gflops": None})
    assert job_gflops(worker, 1) == 50.0
    o = offer(requirements=req(gpus=1), estimated_flops=1e12)
    assert make_bid(worker, o, avg_run_s=5.0, overhead_s=1.0).score_gflops == 50.0


def test_a_gpu_job_bid_without_a_flops_estimate_is_bounded_at_the_gpu_rate() -> None:
    # No flops estimate: 10 s × 20,000 GFLOPS × 0.01 = 2,000 credits worst case;
    # the bid is capped at the budget (at the CPU score it would be 5 credits, under it).
    o = offer(requirements=req(gpus=1), timeout_s=10.0, max_budget=100.0)
    assert make_bid(cap(**GPU_CAP), o, avg_run_s=5.0, overhead_s=1.0).price == 100.0


def test_capacity_carries_the_advertised_gpu_score() -> None:
    from meshd.testing.corenet import default_caps

    local = default_caps(gpus=GPU, gpu_gflops=12_345.0)
    c = Capacity.from_local(local, warm=True, cold_reason=None, running=0, queued=0)
    assert c.gpu_gflops == 12_345.0


# ------------------------------------------------------------ ranking


def bid(price: float, duration_ms: int, start_ms: int = 0) -> Bid:
    return Bid(
        job_id="job-000000000001",
        attempt=1,
        price=price,
        est_start_ms=start_ms,
        est_duration_ms=duration_ms,
        score_gflops=10.0,
    )


FAST_DEAR = bid(price=10.0, duration_ms=1_000)
SLOW_CHEAP = bid(price=1.0, duration_ms=10_000)


def test_fast_profile_prefers_the_fast_bid_and_cheap_the_cheap_one() -> None:
    bids = {"fast": FAST_DEAR, "cheap": SLOW_CHEAP}
    assert rank_bids(bids, "fast", {}, {}, {}) == ["fast", "cheap"]
    assert rank_bids(bids, "cheap", {}, {}, {}) == ["cheap", "fast"]


def test_balanced_profile_picks_the_best_compromise() -> None:
    bids = {"fast": FAST_DEAR, "cheap": SLOW_CHEAP, "middle": bid(price=3.0, duration_ms=3_000)}
    assert rank_bids(bids, "balanced", {}, {}, {})[0] == "middle"


def test_waiting_time_counts_toward_finish() -> None:
    bids = {"idle": bid(5.0, 5_000), "queued": bid(5.0, 5_000, start_ms=20_000)}
    assert rank_bids(bids, "fast", {}, {}, {}) == ["idle", "queued"]


def test_reputation_breaks_an_even_contest_and_can_outweigh_price() -> None:
    even = {"a": bid(5.0, 5_000), "b": bid(5.0, 5_000)}
    assert rank_bids(even, "balanced", {"a": -0.8, "b": 0.5}, {}, {})[0] == "b"
    assert rank_bids(even, "balanced", {"a": 0.5, "b": -0.8}, {}, {})[0] == "a"
    # A marginally cheaper stranger loses to a well-reputed peer (prices are
    # normalised over the bids, so "marginally" is relative to the spread; the
    # bonus for good standing is small so that newcomers are not starved) ...
    close = {"stranger": bid(5.0, 5_000), "known": bid(5.01, 5_000), "dear": bid(10.0, 5_000)}
    assert rank_bids(close, "cheap", {"known": 1.0}, {}, {})[0] == "known"
    assert rank_bids(close, "cheap", {}, {}, {})[0] == "stranger"
    # ... but reputation does not buy a visibly worse bid.
    far = {"stranger": bid(1.0, 5_000), "known": bid(50.0, 5_000)}
    assert rank_bids(far, "cheap", {"known": 1.0}, {}, {})[0] == "stranger"
    assert (
        rank_bids({**close, "known": bid(5.1, 5_000)}, "cheap", {"known": 1.0}, {}, {})[0]
        == "stranger"
    )


def test_without_a_flops_estimate_unit_prices_are_compared() -> None:
    # Same unit price, one worker twice as fast: its timeout-bound price is twice
    # as high, but the work costs the same on both.
    slow = Bid(
        job_id="j-00000001",
        attempt=1,
        price=30.0,
        est_start_ms=0,
        est_duration_ms=600_000,
        score_gflops=50.0,
    )
    fast = Bid(
        job_id="j-00000001",
        attempt=1,
        price=60.0,
        est_start_ms=0,
        est_duration_ms=600_000,
        score_gflops=100.0,
    )
    bids = {"slow": slow, "fast": fast}
    assert (
        rank_bids(bids, "cheap", {}, {}, {})[0] == "slow"
    )  # bounds compared: the slow one looks cheap
    assert rank_bids(bids, "cheap", {}, {"slow": 1}, {}, per_gflop=True)[0] == "fast"
    assert rank_bids(bids, "cheap", {}, {"fast": 1}, {}, per_gflop=True)[0] == "slow"


def test_a_long_queue_is_not_capped_by_the_spread_of_the_bids() -> None:
    # Finish is scaled against the best bid, not min-max over the bids: the
    # cheapest worker loses once its queue of our runs makes it much later,
    # however far apart the prices are (min-max: a tie at any queue length).
    cheap = bid(5.0, 5_000)
    dear = bid(50.0, 5_000)
    assert rank_bids({"cheap": cheap, "dear": dear}, "balanced", {}, {}, {})[0] == "cheap"
    assert rank_bids({"cheap": cheap, "dear": dear}, "balanced", {}, {"cheap": 3}, {})[0] == "dear"


def test_a_near_tie_weighs_by_its_size_not_as_a_queued_run() -> None:
    # Finishes 3.0 s and 3.1 s (scores 6 % apart): min-max made the 0.1 s the
    # whole range, worth as much as one run of ours queued at the quicker
    # worker, so it took one run more than its share of a burst.
    bids = {"quick": bid(5.0, 3_000), "close": bid(5.0, 3_100)}
    assert rank_bids(bids, "balanced", {}, {}, {}) == ["quick", "close"]
    assert rank_bids(bids, "balanced", {}, {"quick": 1}, {}) == ["close", "quick"]
    assert rank_bids(bids, "fast", {}, {"quick": 1}, {}) == ["close", "quick"]
    # Prices too: 1 % cheaper is not worth a queued run.
    cheaper = {"cheap": bid(5.0, 3_000), "dear": bid(5.05, 3_000)}
    assert rank_bids(cheaper, "cheap", {}, {"cheap": 1}, {}) == ["dear", "cheap"]
    # A spread wider than the best value is still the whole range (as before).
    assert spread_scaled(3_100, 3_000, 3_100) == pytest.approx(0.1 / 3)
    assert spread_scaled(10_000, 1_000, 10_000) == 1.0
    assert spread_scaled(5.0, 5.0, 5.0) == 0.0


def test_inflight_awards_push_a_worker_down() -> None:
    bids = {"a": bid(5.0, 5_000), "b": bid(5.0, 5_000)}
    assert rank_bids(bids, "balanced", {}, {"a": 2}, {}) == ["b", "a"]
    assert rank_bids(bids, "balanced", {}, {"b": 1}, {}) == ["a", "b"]


def test_tiebreak_decides_only_exact_ties() -> None:
    bids = {"a": bid(5.0, 5_000), "b": bid(5.0, 5_000)}
    assert rank_bids(bids, "balanced", {}, {}, {"a": 0.9, "b": 0.1}) == ["b", "a"]
    assert rank_bids(bids, "balanced", {}, {}, {"a": 0.1, "b": 0.9}) == ["a", "b"]
    assert rank_bids({}, "fast", {}, {}, {}) == []


def test_an_origin_reads_a_peers_newest_advert() -> None:
    """The origin builds each peer's capacity once per advert
    (``Origin._capacity``): when the peer advertises anew, the estimate and
    the offer's candidates follow what the new advert says."""
    node = Node(CoreParams(), Identity.from_seed_int(1), random.Random(1), ADVERT_NOW)
    peer = Identity.from_seed_int(2)

    def advertise(seq: int, cpus: int) -> None:
        a = Advert(
            seq=seq,
            ttl_ms=60_000,
            cores=cpus,
            ram_mb=4096,
            runtimes=["docker"],
            images=["meshd/busybox:1"],
            score_gflops=50.0,
            price=0.001,
            capacity=cpus,
            warm=True,
        )
        data = seal(peer, a, ADVERT_NOW + seq, seq.to_bytes(8, "big"))
        node.step(GossipReceived(TOPIC_ADVERTS, peer.peer_id, data), ADVERT_NOW + seq)

    job = parse_job_spec(
        {"image": "meshd/busybox:1", "command": ["x"], "requirements": {"cpus": 8}}
    )
    offer_ = offer(requirements=req(cpus=8))
    advertise(1, cpus=4)
    assert node.origin.estimate(job)["candidates"] == 0
    assert node.origin._candidate_ids(offer_) == []
    advertise(2, cpus=16)
    assert node.origin.estimate(job)["candidates"] == 1
    assert node.origin._candidate_ids(offer_) == [peer.peer_id]
    advertise(3, cpus=2)
    assert node.origin.estimate(job)["candidates"] == 0
