"""The protocol's part of `mesh logs` on real cores (``CoreNet``, virtual time):
live output reaches the origin in an early heartbeat within ``log_push_ms``,
labelled by stream and offset and never coalesced away; every result names its
run's stored log, which the origin fetches and only it may have."""

from __future__ import annotations

from typing import Any

from meshd.core.events import ExecutionProgress, Send
from meshd.core.jobspec import JobSpec, parse_job_spec
from meshd.core.lifecycle import TERMINAL
from meshd.core.params import CoreParams
from meshd.core.wire import MAX_HEARTBEAT_LOG_BYTES
from meshd.testing.corenet import CoreNet, FakeWorker

PARAMS = CoreParams(replication_fraction=0.0, untrusted_replication=0.0)


def spec(**extra: Any) -> JobSpec:
    return parse_job_spec({"image": "meshd/busybox:1", "command": ["sh", "-c", "x"], **extra})


def _running(net: CoreNet, job_id: str) -> tuple[str, tuple[str, int, int]]:
    job = net.job(0, job_id)
    run = next(r for r in job.runs.values() if r.started)
    return run.worker, (job_id, run.attempt, run.replica)


def test_live_output_reaches_the_origin_within_log_push_ms_labelled_and_in_order() -> None:
    workers = [FakeWorker(duration_ms=lambda s: 60_000) for _ in range(2)]
    net = CoreNet(2, seed=3, params=PARAMS, workers=workers)
    net.run_for(3_000)
    job_id = net.submit(0, spec())
    assert net.run_until(lambda: any(r.started for r in net.job(0, job_id).runs.values()))
    worker, key = _running(net, job_id)
    origin = net.slots[net.order[0]]
    sent: list[Send] = []
    slot = net.slots[worker]
    carry = slot.effects.carry_out

    def spy(effects: Any) -> None:
        effs = list(effects)
        sent.extend(e for e in effs if isinstance(e, Send) and e.kind == "heartbeat")
        carry(effs)

    slot.effects.carry_out = spy  # type: ignore[method-assign]
    net.run_for(PARAMS.heartbeat_interval_ms)  # past a periodic heartbeat
    before = len(origin.job_logs)
    net.input(worker, ExecutionProgress(*key, "stdout", 0, 111, b"hello\n"))
    net.input(worker, ExecutionProgress(*key, "stderr", 0, 112, b"oops\n"))
    net.input(worker, ExecutionProgress(*key, "stdout", 6, 113, b"world\n"))
    net.input(worker, ExecutionProgress(*key, "stdout", 12, 114, b"again\n"))
    t0 = net.now_ms
    assert net.run_until(lambda: len(origin.job_logs) > before, max_ms=10_000)
    # well before the next periodic heartbeat: within log_push_ms plus the link
    assert net.now_ms - t0 <= PARAMS.log_push_ms + 2 * max(net.latency_ms)
    assert net.now_ms - t0 < PARAMS.heartbeat_interval_ms
    got = origin.job_logs[-1]
    assert (got.job_id, got.attempt, got.replica) == key
    assert [(c.stream, c.offset, c.ts_ms, c.data) for c in got.chunks] == [
        ("stdout", 0, 111, b"hello\n"),  # in the order they were read
        ("stderr", 0, 112, b"oops\n"),
        ("stdout", 6, 113, b"world\nagain\n"),  # a contiguous chunk joins the last one
    ]
    with_log = [s for s in sent if not s.coalesce]
    assert len(with_log) == 1 and all(s.coalesce for s in sent if s is not with_log[0])


def test_live_output_beyond_a_heartbeat_is_dropped_live_only_and_leaves_a_visible_hole() -> None:
    workers = [FakeWorker(duration_ms=lambda s: 60_000) for _ in range(2)]
    net = CoreNet(2, seed=4, params=PARAMS, workers=workers)
    net.run_for(3_000)
    job_id = net.submit(0, spec())
    assert net.run_until(lambda: any(r.started for r in net.job(0, job_id).runs.values()))
    worker, key = _running(net, job_id)
    origin = net.slots[net.order[0]]
    big = b"x" * (MAX_HEARTBEAT_LOG_BYTES - 10)
    net.input(worker, ExecutionProgress(*key, "stdout", 0, 1, big))
    net.input(worker, ExecutionProgress(*key, "stdout", len(big), 2, b"y" * 100))
    net.run_for(PARAMS.log_push_ms + 100)
    net.input(worker, ExecutionProgress(*key, "stdout", len(big) + 100, 3, b"z\n"))
    net.run_for(PARAMS.log_push_ms + 100)
    chunks = [c for e in origin.job_logs for c in e.chunks]
    assert sum(len(c.data) for c in chunks[:1]) == MAX_HEARTBEAT_LOG_BYTES
    assert chunks[-1].offset == len(big) + 100  # the reader sees the hole by its offset


def test_a_failed_runs_stored_log_is_fetched_by_its_origin_and_served_only_to_it() -> None:
    workers = [FakeWorker(exit_code=lambda s: 3, writes_log=True) for _ in range(3)]
    net = CoreNet(3, seed=5, params=PARAMS, workers=workers)
    net.run_for(3_000)
    job_id = net.submit(0, spec())
    assert net.run_until(lambda: net.job(0, job_id).state in TERMINAL)
    job = net.job(0, job_id)
    assert job.state == "failed"
    origin = net.slots[net.order[0]]
    runs = [r for r in job.runs.values() if r.result]
    assert runs and all(r.result["log_digest"] for r in runs)  # type: ignore[index]
    fetched = {(f.attempt, f.replica, f.from_peer, f.digest) for f in origin.log_fetches}
    assert fetched == {
        (r.attempt, r.replica, r.worker, r.result["log_digest"])  # type: ignore[index]
        for r in runs
    }
    run = runs[0]
    digest = run.result["log_digest"]  # type: ignore[index]
    other = next(p for p in net.order if p not in (run.worker, net.order[0]))
    worker_node = net.node(run.worker)
    assert worker_node.may_serve_blob(net.order[0], digest)
    assert not worker_node.may_serve_blob(other, digest)
