"""A node's own worker runs the node's own jobs when nobody else can (§8.5).

Rules checked (``meshd/core/origin.py`` "Self-runs", specs/PROTOCOL.md §8.5):
the own worker is a candidate only when no other live peer's advert fits the
round and the node has been up ``self_run_grace_ms``; the messages between the node's roles never become ``Send`` or
``Publish`` effects to itself; a self-run earns no receipt or credits, moves
no trust, and never verifies itself (a replicated job still needs a second,
distinct worker; the verdict says ``run_by_origin``). All on ``CoreNet``, in
virtual time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from meshd.core.events import (
    TOPIC_OFFERS,
    Effect,
    ExecutorHealth,
    JobSubmitted,
    Publish,
    Send,
    Tick,
)
from meshd.core.identity import Identity
from meshd.core.jobspec import JobSpec, parse_job_spec
from meshd.core.lifecycle import TERMINAL
from meshd.core.params import CoreParams
from meshd.testing.corenet import CoreNet, FakeWorker

SINGLE = CoreParams(replication_fraction=0.0, untrusted_replication=0.0)
WARMUP_MS = SINGLE.self_run_grace_ms
"""Up this long, a node has heard the mesh and may count its own worker (§8.5)."""


def spec(**extra: Any) -> JobSpec:
    return parse_job_spec({"image": "meshd/busybox:1", "command": ["echo", "hi"], **extra})


def spy(net: CoreNet) -> list[tuple[str, Effect]]:
    """Every effect each node returns, with the node's peer id."""
    seen: list[tuple[str, Effect]] = []
    apply = net._apply

    def recording(peer: str, effects: list[Any]) -> None:
        seen.extend((peer, e) for e in effects)
        apply(peer, effects)

    net._apply = recording  # type: ignore[method-assign]
    return seen


def run_to_end(net: CoreNet, job_id: str, max_ms: int = 60_000) -> Any:
    assert net.run_until(lambda: net.job(0, job_id).state in TERMINAL, max_ms=max_ms)
    return net.job(0, job_id)


def test_a_lone_origin_runs_its_own_job_in_process_for_nothing() -> None:
    net = CoreNet(1, params=SINGLE)
    net.run_for(WARMUP_MS)
    me = net.order[0]
    node = net.node(0)
    assert node.origin.estimate(spec())["candidates"] == 1  # not refused at submit
    effects = spy(net)
    job = run_to_end(net, net.submit(0, spec()))
    assert job.state == "succeeded", job.reason
    assert [r.worker for r in job.runs.values()] == [me]
    assert job.verdict["run_by_origin"] is True and job.verdict["verdict"] == "unverified"
    # Offer, bid, award, its reply, heartbeats, result and its ack went in-process.
    for kind in ("offer", "bid", "award", "award_reply", "heartbeat", "result", "result_ack"):
        assert node.counters["local_" + kind] >= 1, kind
    assert not [e for _, e in effects if isinstance(e, Send)]
    assert [e.topic for _, e in effects if isinstance(e, Publish)] == [TOPIC_OFFERS]
    # Nobody pays themselves, and a run of our own is no evidence about us.
    assert job.cost_actual == 0 and node.counters["receipts_issued"] == 0
    assert not node.ledger.entries
    assert me not in node.trust.snapshot(net.now_ms)
    assert node.origin.audits.noted(me) == 0  # nothing to audit on a conviction


def test_a_just_started_origin_leaves_its_job_to_a_peer_heard_within_the_grace() -> None:
    """Submitted at once after the start, before any advert arrived: the job
    is not run at home; a peer whose adverts arrive within the grace runs it."""
    net = CoreNet(1, params=SINGLE)
    me, node = net.order[0], net.node(0)
    assert node.origin.estimate(spec())["candidates"] == 1  # not refused at submit
    job_id = net.submit(0, spec())
    net.run_for(SINGLE.self_run_grace_ms // 2)
    assert not net.job(0, job_id).runs
    peer = net.add_node(Identity.from_seed_int(4242), FakeWorker())  # heard from now on
    job = run_to_end(net, job_id)
    assert job.state == "succeeded", job.reason
    assert [r.worker for r in job.runs.values()] == [peer] and peer != me
    assert node.counters["offers_to_self"] == 0 and node.counters["self_run_grace_waits"] >= 1


def test_a_just_started_lone_origin_runs_its_job_when_the_grace_ends() -> None:
    """Nobody is heard within the grace: the job runs at home as soon as the
    grace is over (not a back-off later), and the wait did not count against
    a queue timeout shorter than the grace."""
    net = CoreNet(1, params=SINGLE)
    me, node = net.order[0], net.node(0)
    grace_end = node.origin.self_run_from_ms
    assert grace_end == net.now_ms + SINGLE.self_run_grace_ms
    net.input(0, JobSubmitted(spec(), "job-000000000002", queue_timeout_ms=1_000))
    job = run_to_end(net, "job-000000000002")
    assert job.state == "succeeded", job.reason
    [run] = job.runs.values()
    assert run.worker == me
    assert grace_end <= run.awarded_ms <= grace_end + SINGLE.bid_window_ms
    assert node.counters["offers_to_self"] == 1


def test_a_cold_lone_origin_does_not_count_itself_and_waits() -> None:
    net = CoreNet(1, params=SINGLE, workers=[FakeWorker(healthy=False)])
    net.run_for(WARMUP_MS)
    assert net.node(0).origin.estimate(spec())["candidates"] == 0
    job_id = net.submit(0, spec())
    net.run_for(10_000)
    job = net.job(0, job_id)
    assert job.state in ("queued", "offered") and not job.runs
    assert net.node(0).counters["offers_to_self"] == 0


def test_with_a_capable_peer_the_peer_runs_it() -> None:
    net = CoreNet(3, params=SINGLE)
    net.run_for(WARMUP_MS)
    jobs = [net.submit(0, spec(command=["echo", str(i)])) for i in range(4)]
    assert net.run_until(lambda: all(net.job(0, j).state in TERMINAL for j in jobs))
    for j in jobs:
        job = net.job(0, j)
        assert job.state == "succeeded"
        assert {r.worker for r in job.runs.values()} <= set(net.order[1:])
        assert job.verdict["run_by_origin"] is False
    assert net.node(0).counters["offers_to_self"] == 0
    # The estimate prices the peers, not the free run at home.
    assert net.node(0).origin.estimate(spec())["credits"] > 0


def test_a_replicated_job_gets_its_second_run_elsewhere() -> None:
    """The origin runs the first replica; the second waits for another worker
    (a self-run does not verify itself), then both agree."""
    net = CoreNet(2, params=SINGLE, workers=[FakeWorker(), FakeWorker(healthy=False)])
    net.run_for(WARMUP_MS)
    me, peer = net.order
    job_id = net.submit(0, spec(replicas=2))
    net.run_for(20_000)
    job = net.job(0, job_id)
    assert job.state not in TERMINAL
    done = [r for r in job.runs.values() if r.result is not None]
    assert [r.worker for r in done] == [me]
    net.input(1, ExecutorHealth(True, ""))  # now the peer can run it
    job = run_to_end(net, job_id)
    assert job.state == "succeeded", job.reason
    assert sorted(r.worker for r in job.runs.values() if r.result) == sorted([me, peer])
    assert job.verdict["needed"] == 2 and job.verdict["run_by_origin"] is True
    node = net.node(0)
    assert node.counters["offers_to_self"] == 1  # never again once it held a run
    # The peer earned a receipt and trust; the origin neither, nor an attestation.
    assert node.counters["receipts_issued"] == 1
    assert node.counters["attestations_sent"] == 1
    assert job.cost_actual > 0
    snap = node.trust.snapshot(net.now_ms)
    assert me not in snap and snap[peer]["valid"] == 1


def test_a_self_run_is_free_so_a_budget_too_small_for_any_peer_does_not_stop_it() -> None:
    """A self-run is priced at nothing: a lone node's job with a budget no
    worker's price fits still runs, at home, and costs nothing."""
    net = CoreNet(1, params=SINGLE)
    net.run_for(WARMUP_MS)
    job = run_to_end(net, net.submit(0, spec(estimated_flops=1e13, max_budget=1e-6)))
    assert job.state == "succeeded", job.reason
    assert [r.price for r in job.runs.values()] == [0.0] and job.cost_actual == 0


def test_local_messages_per_step_bounds_one_step_and_the_rest_are_due_at_once() -> None:
    """``local_messages_per_step``: a step delivers at most that many of our
    own roles' messages; the next step is due at once and takes the rest."""
    params = dataclasses.replace(SINGLE, local_messages_per_step=1)
    net = CoreNet(1, params=params)
    net.run_for(WARMUP_MS)
    node = net.node(0)
    node.step(JobSubmitted(spec(), "job-000000000001"), net.now_ms)
    assert node.counters["local_offer"] == 1 and node.counters["local_bid"] == 0
    assert node.next_deadline() == node.now_ms
    node.step(Tick(), node.now_ms)
    assert node.counters["local_bid"] == 1 and node.counters["local_award"] == 0
    net.run_until(lambda: node.origin.jobs["job-000000000001"].state in TERMINAL)
    assert node.origin.jobs["job-000000000001"].state == "succeeded"


def test_a_lone_origin_whose_own_run_was_lost_runs_the_job_again_after_a_restart() -> None:
    """The lost lease excludes the worker — here the origin itself; as the only
    worker that fits it is asked again (``_all_fitting_ran`` counts it), not
    left waiting for a peer that does not exist."""
    net = CoreNet(1, params=SINGLE)
    net.run_for(WARMUP_MS)
    me = net.order[0]
    net.slots[me].worker.duration_ms = lambda s: 20_000
    job_id = net.submit(0, spec())
    assert net.run_until(lambda: net.job(0, job_id).state == "running")
    net.crash(me)
    net.run_for(1_000)
    net.restart(me)
    net.slots[me].worker.duration_ms = lambda s: 1_000
    job = run_to_end(net, job_id, max_ms=120_000)
    assert job.state == "succeeded", job.reason
    assert [(r.worker, r.state) for r in job.runs.values()] == [(me, "lost"), (me, "done")]


def test_when_no_other_worker_is_left_the_origin_breaks_a_tie_itself() -> None:
    """Two replicas disagree and no third peer exists: the origin's own run is
    the tie-breaker. Its vote counts, but it is no evidence about itself."""
    workers = [FakeWorker(), FakeWorker(), FakeWorker(lie_rate=1.0)]
    net = CoreNet(3, params=SINGLE, workers=workers)
    net.run_for(WARMUP_MS)
    me, honest, liar = net.order
    job = run_to_end(net, net.submit(0, spec(replicas=2)))
    assert job.state == "succeeded", job.reason
    assert sorted(job.verdict["valid"]) == sorted([me, honest])
    assert job.verdict["invalid"] == [liar] and job.verdict["run_by_origin"] is True
    snap = net.node(0).trust.snapshot(net.now_ms)
    assert me not in snap and snap[liar]["invalid"] == 1 and snap[honest]["valid"] == 1
