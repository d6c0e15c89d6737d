"""In-process cluster of real daemons: real libp2p on loopback, LevelDB in temp dirs,
process executor. Checks that the mesh forms and that jobs run across it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import trio

from meshd.core.origin import job_view
from meshd.testing.clock import SkewedClock
from meshd.testing.cluster import Cluster


def _tar_files(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


async def test_five_daemons_see_each_other_and_run_a_job(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 5) as c:
        for i in range(5):
            for j in range(5):
                if i != j:
                    assert c.sees(i, j), f"node {i} has no advert of node {j}"
        job_id = await c.submit(
            2,
            {
                "image": "meshd/busybox:1",
                "command": ["sh", "-c", "echo out-$((6*7)) > $MESH_OUTPUTS/answer.txt"],
            },
        )
        job = await c.wait_job(2, job_id, timeout_s=60)
        assert job.state == "succeeded", job.reason
        workers = {r.worker for r in job.runs.values() if r.state == "done"}
        assert c.peer_id(2) not in workers  # ran elsewhere
        data = c.daemon(2).blobs.get(job.canonical.split(":", 1)[1])
        assert _tar_files(data) == {"answer.txt": b"out-42\n"}


SLEEP_JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "sleep 2; echo ok > $MESH_OUTPUTS/ok.txt"],
    "replicas": 1,
}


def _records(c: Cluster, i: int, job_id: str, kind: str) -> list:
    return [
        r
        for r in c.daemon(i).log.iter()
        if r.kind == kind and isinstance(r.body, dict) and r.body.get("job_id") == job_id
    ]


async def test_worker_killed_mid_job_finishes_elsewhere(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 4) as c:
        job_id = await c.submit(0, SLEEP_JOB)
        job = await c.wait_job(0, job_id, "running", timeout_s=60)
        victim_id = next(r.worker for r in job.runs.values() if r.state == "active")
        victim = next(i for i in c.running() if c.peer_id(i) == victim_id)
        await c.kill(victim)
        job = await c.wait_job(0, job_id, timeout_s=90)
        assert job.state == "succeeded", job.reason
        winner = next(r.worker for r in job.runs.values() if r.state == "done")
        assert winner != victim_id
        assert victim_id in job.excluded
        assert len(_records(c, 0, job_id, "job_finished")) == 1


async def test_origin_restarted_mid_job_completes_once(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 3) as c:
        job_id = await c.submit(
            0, {**SLEEP_JOB, "command": ["sh", "-c", "sleep 3; echo ok > $MESH_OUTPUTS/ok"]}
        )
        await c.wait_job(0, job_id, "running", timeout_s=60)
        before = c.job(0, job_id)
        history_before = list(before.history)
        submitted_ms, estimate = before.submitted_ms, before.cost_estimate
        bids_before = job_view(before)["bids"]
        assert bids_before and all(b["ts_ms"] >= submitted_ms for b in bids_before)
        await c.restart(0)
        restored = c.job(0, job_id)
        # The history survives with its original times (issue 12), the estimate,
        # and the bids (each with when it arrived).
        assert restored.submitted_ms == submitted_ms
        assert restored.history[: len(history_before)] == history_before
        assert restored.cost_estimate == estimate
        assert job_view(restored)["bids"] == bids_before
        job = await c.wait_job(0, job_id, timeout_s=90)
        assert job.state == "succeeded", job.reason
        assert len(_records(c, 0, job_id, "job_finished")) == 1
        assert len(_records(c, 0, job_id, "job_submitted")) == 1
        assert len(_records(c, 0, job_id, "job_verdict")) == 1


async def test_impossible_job_is_queued_with_reasons(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with Cluster.started(nursery, tmp_path, 3) as c:
        job_id = await c.submit(
            1, {"image": "meshd/busybox:1", "command": ["true"], "requirements": {"gpus": 1}}
        )
        await c.wait_for(lambda: len(c.job(1, job_id).declines) >= 2, 30, "decline reasons")
        job = c.job(1, job_id)
        assert job.state in ("queued", "offered")
        reasons = {r for _, r in job.declines}
        assert any("GPU" in r for r in reasons), reasons


async def test_a_job_no_known_peer_can_run_is_refused_at_submit_unless_queued(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Issue 12 "No silent wait": the refusal names each failed requirement and
    how many peers fail it; ``--queue`` accepts the job, and its queue timeout
    fails it with that reason."""
    from meshd.api.client import ApiClient, ApiHttpError

    async with Cluster.started(nursery, tmp_path, 3) as c:
        await c.wait_mesh()
        client = ApiClient.from_data_dir(c.members[0].data_dir)
        cores = c.daemon(1).node.worker.caps.cores  # type: ignore[union-attr]
        spec = {
            "image": "meshd/busybox:1",
            "command": ["true"],
            "requirements": {"gpus": 1, "cpus": 1024, "runtime": "process"},
        }

        def submit(queue: bool, queue_timeout_s: float | None = None) -> dict[str, Any]:
            return client.submit(spec, queue=queue, queue_timeout_s=queue_timeout_s)

        try:
            await trio.to_thread.run_sync(submit, False)
        except ApiHttpError as exc:
            assert exc.status == 409 and exc.code == "no_capable_peer", exc
            assert "node has no GPU (2 of 2)" in exc.message, exc.message
            assert f"needs 1024 CPUs, node has {cores} (2 of 2)" in exc.message, exc.message
            assert sorted(exc.fields, key=lambda f: f["loc"]) == [
                {"loc": f"needs 1024 CPUs, node has {cores}", "msg": "2 of 2 peers"},
                {"loc": "node has no GPU", "msg": "2 of 2 peers"},
            ]
            assert "--queue" in exc.message
        else:
            raise AssertionError("a job no peer can run was accepted")
        assert not c.daemon(0).node.origin.jobs  # type: ignore[union-attr]
        answer = await trio.to_thread.run_sync(submit, True, 1.0)
        assert answer["estimate"]["candidates"] == 0 and answer["estimate"]["known"] == 2
        job = await c.wait_job(0, answer["job_id"], timeout_s=30)
        assert job.state == "failed"
        assert job.reason.startswith("no worker took the job within its queue timeout (1 s)")
        assert "needs 1024 CPUs" in job.reason, job.reason  # the declines it derived


async def test_a_lone_daemon_runs_its_own_job_with_its_inputs_and_outputs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Issue 12 "Anyone can take part" (specs/PROTOCOL.md §8.5): one daemon,
    no peers. ``submit`` is accepted (its own worker counts as capable), the
    job runs on the node itself, in-process, and succeeds with its outputs;
    nobody is paid and nothing about it went over the network."""
    from meshd.api.client import ApiClient

    async with Cluster.started(nursery, tmp_path, 1) as c:
        d = c.daemon(0)
        await c.wait_for(lambda: d.node.worker.capacity() is not None, 30, "capabilities")  # type: ignore[union-attr]
        client = ApiClient.from_data_dir(c.members[0].data_dir)
        data = await trio.to_thread.run_sync(d.blobs.put, b"six times seven\n")
        spec = {
            "image": "meshd/busybox:1",
            "inputs": [{"path": "in.txt", "digest": "sha256:" + data}],
            "command": [
                "sh",
                "-c",
                "cp $MESH_INPUTS/in.txt $MESH_OUTPUTS/in.txt; echo $((6*7)) > $MESH_OUTPUTS/a",
            ],
            "requirements": {"runtime": "process"},
        }
        answer = await trio.to_thread.run_sync(lambda: client.submit(spec))
        assert answer["estimate"]["candidates"] == 1 and answer["estimate"]["known"] == 0
        job = await c.wait_job(0, answer["job_id"], timeout_s=60)
        assert job.state == "succeeded", job.reason
        assert [r.worker for r in job.runs.values()] == [c.peer_id(0)]
        assert job.verdict["run_by_origin"] is True and job.cost_actual == 0
        outputs = _tar_files(d.blobs.get(job.canonical.split(":", 1)[1]))
        assert outputs == {"in.txt": b"six times seven\n", "a": b"42\n"}
        assert not _records(c, 0, answer["job_id"], "receipt")
        counters = d.node.counters  # type: ignore[union-attr]
        assert counters["local_award"] == 1 and counters["local_result"] >= 1
        assert counters["send_failed"] == 0


async def test_budget_below_estimate_is_refused_with_the_estimate(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from meshd.api.client import ApiClient, ApiHttpError

    async with Cluster.started(nursery, tmp_path, 3) as c:
        client = ApiClient.from_data_dir(c.members[0].data_dir)
        spec = {
            "image": "meshd/busybox:1",
            "command": ["true"],
            "estimated_flops": 1e15,
            "max_budget": 0.001,
            "requirements": {"runtime": "process"},
        }

        def submit() -> None:
            client.submit(spec)

        try:
            await trio.to_thread.run_sync(submit)
        except ApiHttpError as exc:
            assert exc.status == 400 and exc.code == "budget_exceeded", exc
            assert "estimated cost" in exc.message
        else:
            raise AssertionError("a job over budget was accepted")
        assert not c.daemon(0).node.origin.jobs  # type: ignore[union-attr]


def _client_first(i: int, overrides: dict[str, Any]) -> None:
    """Node 0 runs no jobs (no Docker engine, the process executor not opted
    in: a client), so none of its own either (specs/PROTOCOL.md §8.5)."""
    if i == 0:
        overrides["executor"] = "auto"
        overrides["allow_process_executor"] = False


async def test_partition_queues_the_job_and_heal_lets_it_finish(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: Any
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-engine.sock")
    async with Cluster.started(nursery, tmp_path, 3, configure=_client_first) as c:
        await _partition_queues_the_job_and_heal_lets_it_finish(c)


async def _partition_queues_the_job_and_heal_lets_it_finish(c: Cluster) -> None:
    c.partition([0], [1, 2])
    # Node 0 sees no worker once their adverts expire (advert_ttl_ms = 4 s).
    await c.wait_for(lambda: not c.sees(0, 1) and not c.sees(0, 2), 20, "node 0 to lose its peers")
    job_id = await c.submit(0, {**SLEEP_JOB, "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/ok"]})
    await c.wait_for(lambda: c.job(0, job_id).attempt >= 2, 20, "a second offer round")
    job = c.job(0, job_id)
    assert job.state in ("queued", "offered") and not job.runs
    assert any("no peers known" in r for _, r in job.declines), list(job.declines)
    c.heal()
    job = await c.wait_job(0, job_id, timeout_s=60)
    assert job.state == "succeeded", job.reason


async def test_blobs_are_served_only_to_the_peers_a_job_entitles(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """specs/PROTOCOL.md §5 (blobs): an origin serves a job's inputs to the
    workers holding its runs, a worker serves a run's output to that run's
    origin, and nobody gets anything else (answered like a missing blob);
    each peer may make at most ``blob_request_burst`` requests at once."""
    from meshd.core.events import BLOB_PROTOCOL
    from meshd.net import RemoteError
    from meshd.runtime.transfer import SIZE_HEADER_BYTES, encode_blob_request

    clock = SkewedClock()
    async with Cluster.started(nursery, tmp_path, 3, clock=clock) as c:
        secret = c.daemon(0).blobs.put(b"the submitter's private input\n")
        job_id = await c.submit(
            0,
            {
                "image": "meshd/busybox:1",
                "replicas": 1,
                "inputs": [{"path": "in.txt", "digest": "sha256:" + secret}],
                "command": ["sh", "-c", "sleep 1; cp $MESH_INPUTS/in.txt $MESH_OUTPUTS/o"],
            },
        )
        job = await c.wait_job(0, job_id, timeout_s=60)
        assert job.state == "succeeded", job.reason
        (run,) = [r for r in job.runs.values() if r.state == "done"]
        worker = next(i for i in (1, 2) if c.peer_id(i) == run.worker)
        bystander = 3 - worker
        output = job.canonical

        async def fetch(i: int, from_i: int, digest: str) -> bytes:
            request = encode_blob_request(digest, 0, c.daemon(i).rp.blob_chunk_bytes)
            answer = await c.daemon(i).host.request(c.peer_id(from_i), BLOB_PROTOCOL, request)
            return answer[SIZE_HEADER_BYTES:]  # the blob's size, then the (whole) range

        # The output: its origin may fetch it again from the worker; the bystander may not.
        assert _tar_files(await fetch(0, worker, output)) == {
            "o": b"the submitter's private input\n"
        }
        # From here to the end of the burst below the daemons' clock stands
        # still, so no token of the per-peer bucket refills meanwhile.
        clock.pause()
        try:
            await fetch(bystander, worker, output)
            raise AssertionError("a bystander fetched another origin's output")
        except RemoteError as exc:
            assert "no blob" in str(exc)
        # The input: nobody may fetch it once no run of the job is live, not
        # even the worker that ran it; and the bystander never could.
        for i in (worker, bystander):
            try:
                await fetch(i, 0, "sha256:" + secret)
                raise AssertionError("an input was served without a live run")
            except RemoteError as exc:
                assert "no blob" in str(exc)
        refused = c.daemon(0).transfer.refused
        assert refused["not_entitled"] == 2
        # The per-peer bucket, at the handler: a burst beyond
        # blob_request_burst is refused as busy before any look-up.
        w = c.daemon(worker)
        burst = int(w.rp.blob_request_burst)
        answers = []
        for _ in range(burst + 10):
            try:
                await w.transfer.serve(c.peer_id(bystander), encode_blob_request(output, 0, 1))
            except LookupError as exc:
                answers.append("busy" if str(exc).startswith("busy") else "no blob")
        clock.resume()
        # The bystander spent one token on its network request above, and none
        # refilled since (the clock stood still).
        assert answers.count("busy") == 11, answers
        assert answers[: burst - 2] == ["no blob"] * (burst - 2)
        assert w.transfer.refused["rate"] == answers.count("busy")


async def test_a_node_without_an_executor_joins_as_a_client_and_its_job_runs_elsewhere(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: Any
) -> None:
    """Issue 12 "Roles": no Docker engine and the process executor not opted in:
    the node still starts, as a client; it runs nothing and says so; its job
    runs on a worker."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-engine.sock")

    async with Cluster.started(nursery, tmp_path, 3, configure=_client_first) as c:
        client = c.daemon(0)
        assert client.executor.name == "none"
        assert client.view is not None
        status = client.view.status()
        assert status["role"] == "client"
        assert "allow_process_executor = true" in status["executor"]["reason"]
        await c.wait_for(
            lambda: (
                c.daemon(1).view is not None
                and any(p["peer_id"] == c.peer_id(0) for p in c.daemon(1).view.peers()["peers"])
            ),
            30,
            "a worker to hear the client's advert",
        )
        assert c.daemon(1).view is not None
        seen = next(p for p in c.daemon(1).view.peers()["peers"] if p["peer_id"] == c.peer_id(0))
        assert (seen["role"], seen["sandbox"]) == ("client", "none")
        job_id = await c.submit(0, SLEEP_JOB)
        job = await c.wait_job(0, job_id, timeout_s=60)
        assert job.state == "succeeded", job.reason
        assert {r.worker for r in job.runs.values()} <= {c.peer_id(1), c.peer_id(2)}
