"""Determinism-aware verification on ``CoreNet`` (specs/CREDITS.md §5).

An exact-hash job's replicas are compared within a *determinism class*
(executor; GPU models and driver for a GPU job): honest workers on different
GPUs may disagree without lying. Everything runs in virtual time.
"""

from __future__ import annotations

import hashlib
from typing import Any

from meshd.core.jobspec import JobSpec, parse_job_spec
from meshd.core.lifecycle import TERMINAL
from meshd.core.params import CoreParams
from meshd.core.placement import determinism_class, local_image_id
from meshd.core.wire import MAX_DET_CLASS, Bid, Result
from meshd.testing.corenet import CoreNet, FakeWorker, default_caps, honest_output

SINGLE = CoreParams(replication_fraction=0.0, untrusted_replication=0.0)
A100 = (("NVIDIA A100", 40_000),)
H100 = (("NVIDIA H100", 80_000),)


def gpu_spec(**extra: Any) -> JobSpec:
    return parse_job_spec(
        {
            "image": "meshd/busybox:1",
            "command": ["train"],
            "requirements": {"gpus": 1},
            "replicas": 2,
            "estimated_flops": 1e12,
            **extra,
        }
    )


def per_model_output(model: str) -> Any:
    """An honest output that depends on the GPU model (float reduction order)."""

    def out(spec: JobSpec) -> str:
        return "sha256:" + hashlib.sha256((honest_output(spec) + model).encode()).hexdigest()

    return out


def gpu_worker(gpus: tuple[tuple[str, int], ...], score: float, **kw: Any) -> FakeWorker:
    caps = default_caps(gpus=gpus, score=score, gpu_driver="550.54")
    return FakeWorker(caps=caps, output=per_model_output(gpus[0][0]), **kw)


def run_to_end(net: CoreNet, job_id: str) -> Any:
    assert net.run_until(lambda: net.job(0, job_id).state in TERMINAL, max_ms=300_000)
    return net.job(0, job_id)


def verdict_of(net: CoreNet, job_id: str) -> dict[str, Any]:
    (v,) = [b for k, b in net.slots[net.order[0]].log if k == "job_verdict"]
    assert v["job_id"] == job_id
    return v


def test_determinism_class_separates_gpu_models_only_for_gpu_jobs() -> None:
    a = determinism_class(("docker",), ("NVIDIA A100",), "550.54", uses_gpu=True)
    h = determinism_class(("docker",), ("NVIDIA H100",), "550.54", uses_gpu=True)
    d = determinism_class(("docker",), ("NVIDIA A100",), "535.10", uses_gpu=True)
    assert len({a, h, d}) == 3
    assert determinism_class(
        ("docker",), ("NVIDIA A100",), "550.54", uses_gpu=False
    ) == determinism_class(("docker",), (), "", uses_gpu=False)
    assert determinism_class(("docker",), (), "", uses_gpu=False) != determinism_class(
        ("process",), (), "", uses_gpu=False
    )
    assert len(a) <= MAX_DET_CLASS


def test_old_peers_without_a_class_still_parse() -> None:
    bid = Bid.model_validate(
        {
            "job_id": "job-12345678",
            "attempt": 1,
            "price": 1.0,
            "est_start_ms": 0,
            "est_duration_ms": 1,
            "score_gflops": 1.0,
        }
    )
    assert bid.det_class == ""
    res = Result.model_validate({"job_id": "job-12345678", "attempt": 1, "status": "failed"})
    assert res.det_class == ""


def test_honest_workers_of_two_classes_are_not_penalised_and_a_same_class_pair_settles() -> None:
    """Two honest workers on different GPU models disagree on an exact job:
    nobody is judged invalid; a replica in one of their classes settles it."""
    workers = [
        FakeWorker(),  # the origin: no GPU, does not bid
        gpu_worker(A100, score=100.0),
        gpu_worker(H100, score=90.0),
        gpu_worker(A100, score=10.0),
    ]
    net = CoreNet(4, seed=7, params=SINGLE, workers=workers)
    late = net.order[3]
    net.isolate(late)  # only one A100 and one H100 are there for the first pair
    net.run_for(3_000)
    job_id = net.submit(0, gpu_spec())
    assert net.run_until(lambda: sum(1 for r in net.job(0, job_id).runs.values() if r.fetched) == 2)
    first = {r.worker for r in net.job(0, job_id).runs.values()}
    assert first == {net.order[1], net.order[2]}, "the first pair spans two classes"
    net.heal()
    job = run_to_end(net, job_id)
    assert job.state == "succeeded"
    v = verdict_of(net, job_id)
    assert sorted(v["valid"]) == sorted([net.order[1], late])
    assert v["invalid"] == []
    assert v["other_class"] == [net.order[2]]
    trust = net.node(0).trust
    assert trust.reputation(net.order[2], net.now_ms) >= 0


def test_second_replica_is_awarded_within_the_first_ones_class() -> None:
    """With a same-class bidder in the round, the pair is formed in one class
    (homogeneous redundancy) even when a faster worker of another class bids."""
    workers = [
        FakeWorker(),
        gpu_worker(A100, score=100.0),
        gpu_worker(H100, score=90.0),
        gpu_worker(A100, score=10.0),
    ]
    net = CoreNet(4, seed=7, params=SINGLE, workers=workers)
    net.run_for(3_000)
    job_id = net.submit(0, gpu_spec())
    job = run_to_end(net, job_id)
    assert job.state == "succeeded"
    assert sorted(r.worker for r in job.runs.values()) == sorted([net.order[1], net.order[3]])
    v = verdict_of(net, job_id)
    assert v["replicas"] == 2 and v["invalid"] == [] and v["other_class"] == []


def test_a_liar_within_a_class_is_still_caught() -> None:
    workers = [
        FakeWorker(),
        gpu_worker(A100, score=100.0),
        gpu_worker(A100, score=90.0, lie_rate=1.0),
        gpu_worker(A100, score=10.0),
    ]
    net = CoreNet(4, seed=7, params=SINGLE, workers=workers)
    net.run_for(3_000)
    liar = net.order[2]
    job_id = net.submit(0, gpu_spec())
    job = run_to_end(net, job_id)
    assert job.state == "succeeded"
    v = verdict_of(net, job_id)
    assert v["invalid"] == [liar]
    assert v["other_class"] == []
    assert net.node(0).trust.reputation(liar, net.now_ms) < 0


def test_a_tolerance_job_compares_across_classes() -> None:
    """Classes matter only for exact-hash jobs: with a tolerance the checker
    judges, and a result it rejects is invalid whatever its class."""
    workers = [
        FakeWorker(),
        gpu_worker(A100, score=100.0),
        gpu_worker(H100, score=90.0),
        gpu_worker(A100, score=10.0),
    ]
    net = CoreNet(4, seed=7, params=SINGLE, workers=workers)
    net.checker = lambda eff: False
    late = net.order[3]
    net.isolate(late)
    net.run_for(3_000)
    job_id = net.submit(0, gpu_spec(tolerance={"rel": 1e-6, "abs": 0.0}))
    assert net.run_until(lambda: sum(1 for r in net.job(0, job_id).runs.values() if r.fetched) == 2)
    net.heal()
    job = run_to_end(net, job_id)
    assert job.state == "succeeded"
    v = verdict_of(net, job_id)
    assert v["invalid"] == [net.order[2]] and v["other_class"] == []


def test_image_id_is_part_of_the_class() -> None:
    base = determinism_class(("docker",), (), "", uses_gpu=False, image_id="sha256:" + "a" * 64)
    other = determinism_class(("docker",), (), "", uses_gpu=False, image_id="sha256:" + "b" * 64)
    assert base != other
    ids = (("ubuntu:latest", "sha256:" + "c" * 64), ("meshd/busybox:1", "sha256:" + "d" * 64))
    assert local_image_id("ubuntu", ids) == "sha256:" + "c" * 64
    assert local_image_id("meshd/busybox:1", ids) == "sha256:" + "d" * 64
    assert local_image_id("meshd/busybox:2", ids) == ""


def test_one_tag_two_builds_are_two_classes_and_results_state_the_bid_class() -> None:
    """A CPU job whose image tag names different builds on different workers:
    the honest disagreement penalises nobody, a same-build pair settles, and
    every result states the class its worker bid with."""
    build = {"x": "sha256:" + "1" * 64, "y": "sha256:" + "2" * 64}

    def worker(b: str, score: float) -> FakeWorker:
        caps = default_caps(score=score, image_ids=(("meshd/busybox:1", build[b]),))
        return FakeWorker(caps=caps, output=per_model_output(b))

    no_image = default_caps(images=())  # the origin cannot run the job
    workers = [FakeWorker(caps=no_image), worker("x", 100.0), worker("y", 90.0), worker("x", 10.0)]
    net = CoreNet(4, seed=7, params=SINGLE, workers=workers)
    late = net.order[3]
    net.isolate(late)
    net.run_for(3_000)
    job_id = net.submit(
        0,
        parse_job_spec(
            {"image": "meshd/busybox:1", "command": ["x"], "replicas": 2, "estimated_flops": 1e12}
        ),
    )
    assert net.run_until(lambda: sum(1 for r in net.job(0, job_id).runs.values() if r.fetched) == 2)
    net.heal()
    job = run_to_end(net, job_id)
    assert job.state == "succeeded"
    v = verdict_of(net, job_id)
    assert v["invalid"] == [] and v["other_class"] == [net.order[2]]
    for run in job.runs.values():
        assert run.result is not None and run.result["det_class"] == run.det_class != ""
