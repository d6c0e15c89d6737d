"""Bounded disk: the blob store's cap, the blob collector and the run-dir sweep.

Real parts: a real ``BlobStore`` on disk for the collector's rules, and real
daemons (``meshd.testing.cluster``) for the store staying under its cap while
jobs stream through, a killed worker's run dirs being removed at its restart,
and a referenced blob surviving every pass.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import trio

from meshd.api.client import ApiClient, ApiHttpError
from meshd.runtime.diskgc import BlobRefs, DiskGC
from meshd.runtime.params import RuntimeParams
from meshd.store.blobs import BlobParams, BlobStore, BlobStoreFullError
from meshd.testing.cluster import Cluster

NOW_MS = 1_800_000_000_000


def _age(store: BlobStore, digest: str, mtime_ms: int) -> None:
    os.utime(store.path_of(digest), ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))


def _gc(store: BlobStore, tmp_path: Path, refs: BlobRefs, **rp: object) -> DiskGC:
    params = dataclasses.replace(RuntimeParams(), blob_grace_s=60.0, **rp)  # type: ignore[arg-type]
    gc = DiskGC(store, tmp_path / "work", tmp_path / "log", params, wall_ms=lambda: NOW_MS)
    gc.set_references(lambda: refs)
    return gc


def test_store_counts_bytes_and_refuses_non_essential_writes_over_its_cap(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs", BlobParams(max_total_bytes=100))
    a = store.put(b"a" * 60, essential=False)
    assert (store.total_bytes, store.file_count) == (60, 1)
    with pytest.raises(BlobStoreFullError, match="blob store is full"):
        store.put(b"b" * 50, essential=False)
    assert store.file_count == 1
    store.put(b"a" * 60, essential=False)  # already stored: takes no room
    b = store.put(b"b" * 50)  # essential (an output, a fetched input): written anyway
    assert (store.total_bytes, store.file_count) == (110, 2)
    assert store.delete(a) and not store.delete(a)
    assert (store.total_bytes, store.file_count) == (50, 1)
    reopened = BlobStore(tmp_path / "blobs", BlobParams(max_total_bytes=100))
    assert (reopened.total_bytes, reopened.file_count) == (50, 1)
    assert reopened.has(b)


def test_a_blob_written_again_after_it_was_listed_is_not_deleted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"uploaded twice")
    _age(store, digest, time.time_ns() // 1_000_000 - 3_600_000)
    (listed,) = store.entries()
    store.put(b"uploaded twice")  # the user uploads it again: it is young again
    assert not store.delete(digest, unless_written_after_ms=listed.mtime_ms)
    assert store.has(digest) and store.file_count == 1
    assert store.delete(digest) and store.file_count == 0


async def test_collector_keeps_pinned_young_and_retained_blobs_under_the_cap(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs")
    pinned, retained, young, old1, old2 = (store.put(bytes([i]) * 10) for i in range(5))
    for i, d in enumerate((pinned, retained, old1, old2)):
        _age(store, d, NOW_MS - 3_600_000 + i)
    _age(store, young, NOW_MS - 1_000)  # inside the 60 s grace
    refs = BlobRefs(frozenset({pinned}), frozenset({retained}))
    gc = _gc(store, tmp_path, refs, blob_store_max_bytes=1_000)
    assert await gc.collect() == 2
    assert set(store.digests()) == {pinned, retained, young}
    assert gc.collected_bytes == 20 and store.total_bytes == 30


async def test_collector_removes_retained_blobs_oldest_first_only_over_the_cap(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs")
    kept = [store.put(bytes([i]) * 10) for i in range(4)]
    for i, d in enumerate(kept):
        _age(store, d, NOW_MS - 3_600_000 + i)
    refs = BlobRefs(frozenset({kept[0]}), frozenset(kept[1:]))
    gc = _gc(store, tmp_path, refs, blob_store_max_bytes=20)
    assert await gc.collect() == 2  # 40 bytes → 20: the two oldest retained go
    assert set(store.digests()) == {kept[0], kept[3]}
    gc = _gc(store, tmp_path, refs, blob_store_max_bytes=5)
    await gc.collect()
    assert set(store.digests()) == {kept[0]}  # pinned stays, even over the cap


async def test_collector_makes_room_for_an_upload_from_retained_blobs(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs", BlobParams(max_total_bytes=40))
    kept = [store.put(bytes([i]) * 10) for i in range(4)]
    for i, d in enumerate(kept):
        _age(store, d, NOW_MS - 3_600_000 + i)
    gc = _gc(store, tmp_path, BlobRefs(frozenset(), frozenset(kept)), blob_store_max_bytes=40)
    assert await gc.collect() == 0  # at the cap, not over it: all retained stay
    with pytest.raises(BlobStoreFullError):
        store.put(b"new" * 5, essential=False)
    assert await gc.collect(room=15) == 2  # the two oldest make room for 15 bytes
    assert set(store.digests()) == set(kept[2:])
    store.put(b"new" * 5, essential=False)


async def test_collector_pass_is_bounded(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    for i in range(7):
        _age(store, store.put(bytes([i])), NOW_MS - 3_600_000)
    gc = _gc(store, tmp_path, BlobRefs(frozenset(), frozenset()), blob_gc_max_deletes=3)
    assert [await gc.collect() for _ in range(4)] == [3, 3, 1, 0]
    assert store.file_count == 0


def test_sweep_removes_every_run_dir_but_the_live_ones(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for name in ("j1-0-0", "j2-0-0", "tmpchecker"):
        (work / name / "inputs").mkdir(parents=True)
        (work / name / "inputs" / "x").write_bytes(b"x")
    gc = _gc(BlobStore(tmp_path / "blobs"), tmp_path, BlobRefs(frozenset(), frozenset()))
    assert gc.sweep_run_dirs({"j2-0-0"}) == 2
    assert sorted(p.name for p in work.iterdir()) == ["j2-0-0"]
    assert gc.status()["run_dirs"] == {"count": 1, "orphans_removed": 2}


# ---------------------------------------------------------------- real daemons

FAST_GC = dataclasses.replace(
    RuntimeParams(),
    blob_retention_s=0.0,
    blob_grace_s=2.0,
    blob_gc_interval_s=0.2,
)


async def test_blob_store_stays_under_its_cap_under_a_stream_of_jobs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    cap = 128 * 1024
    # A short grace (still far longer than an upload takes to be submitted),
    # so that only a job or two's blobs are young at any time; a retention
    # longer than a few jobs take, so the cap, not the retention, bounds the
    # store (the oldest retained blobs go when an upload finds it full).
    rp = dataclasses.replace(
        FAST_GC, blob_store_max_bytes=cap, blob_grace_s=0.5, blob_retention_s=30.0
    )
    async with Cluster.started(nursery, tmp_path, 2, runtime_params=rp) as c:
        peak = 0
        for k in range(20):
            digest = await c.daemon(0).put_blob(os.urandom(8 * 1024))  # 8 KiB each
            job_id = await c.submit(
                0,
                {
                    "image": "meshd/busybox:1",
                    "command": ["sh", "-c", f"cat $MESH_INPUTS/in.bin > $MESH_OUTPUTS/out-{k}.bin"],
                    "inputs": [{"path": "in.bin", "digest": "sha256:" + digest}],
                },
            )
            job = await c.wait_job(0, job_id, timeout_s=60)
            assert job.state == "succeeded", job.reason
            peak = max(peak, *(c.daemon(i).blobs.total_bytes for i in range(2)))
            # a stream, not a burst: a job every grace, so that however fast
            # jobs run only about one job's blobs are young (uncollectable)
            await trio.sleep(rp.blob_grace_s)
        await trio.sleep(3 * rp.blob_grace_s)  # past the grace, a few passes
        await c.daemon(0).disk.collect()
        await c.daemon(1).disk.collect()
        for i in range(2):
            d = c.daemon(i)
            on_disk = sum(p.stat().st_size for p in d.dirs.blobs.rglob("*") if p.is_file())
            assert on_disk == d.blobs.total_bytes
            assert on_disk <= cap, f"node {i}: {on_disk} bytes in its blob store"
        assert peak <= cap + 32 * 1024  # essential writes may pass it, briefly
        st = c.daemon(0).view.status()["disk"]  # type: ignore[union-attr]
        assert st["blobs"]["collected_blobs"] > 0 and st["blobs"]["max_bytes"] == cap


SLEEP_JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "sleep 3; cat $MESH_INPUTS/in.txt > $MESH_OUTPUTS/ok.txt"],
    "replicas": 1,
}


async def test_a_killed_workers_run_dirs_are_removed_at_its_restart(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 3) as c:
        job_id = await c.submit(0, {**SLEEP_JOB, "command": ["sh", "-c", "sleep 30"]})
        job = await c.wait_job(0, job_id, "running", timeout_s=60)
        victim_id = next(r.worker for r in job.runs.values() if r.state == "active")
        victim = next(i for i in c.running() if c.peer_id(i) == victim_id)
        work = c.daemon(victim).dirs.work
        await c.wait_for(lambda: any(work.iterdir()), timeout_s=30)
        left = [p.name for p in work.iterdir()]
        assert any(name.startswith(job_id) for name in left)
        await c.kill(victim)
        assert [p.name for p in work.iterdir()] == left  # a kill leaves them behind
        d = await c.restart(victim)
        assert list(work.iterdir()) == []
        disk = d.view.status()["disk"]  # type: ignore[union-attr]
        assert disk["run_dirs"] == {"count": 0, "orphans_removed": len(left)}


async def test_an_input_of_a_running_job_is_never_collected(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # A 1-byte cap: every pass removes all it may, retained blobs included.
    rp = dataclasses.replace(FAST_GC, blob_store_max_bytes=1)
    async with Cluster.started(nursery, tmp_path, 2, runtime_params=rp) as c:
        origin = c.daemon(0)
        digest = origin.blobs.put(b"keep me\n")  # as an essential write: over the cap
        job_id = await c.submit(
            0,
            {
                **SLEEP_JOB,
                "command": ["sh", "-c", "sleep 6; cat $MESH_INPUTS/in.txt > $MESH_OUTPUTS/ok.txt"],
                "inputs": [{"path": "in.txt", "digest": "sha256:" + digest}],
            },
        )
        job = await c.wait_job(0, job_id, "running", timeout_s=60)
        worker_id = next(r.worker for r in job.runs.values() if r.state == "active")
        worker = c.daemon(next(i for i in c.running() if c.peer_id(i) == worker_id))
        await c.wait_for(lambda: worker.blobs.has(digest), timeout_s=30, what="input fetched")
        # Past the grace on both nodes: only the references keep them now.
        for d in (origin, worker):
            _age(d.blobs, digest, d.clock.wall_ms() - 3_600_000)
        passes = (origin.disk.passes, worker.disk.passes)
        await c.wait_for(
            lambda: origin.disk.passes >= passes[0] + 5 and worker.disk.passes >= passes[1] + 5,
            what="collector passes",
        )
        assert c.job(0, job_id).state == "running"
        assert origin.blobs.has(digest) and worker.blobs.has(digest)
        job = await c.wait_job(0, job_id, timeout_s=60)
        assert job.state == "succeeded", job.reason
        # Finished, retention 0: nothing references them now, and they go.
        for d in (origin, worker):
            await c.wait_for(lambda d=d: d.blobs.file_count == 0, what="blobs collected")


async def test_an_upload_over_the_configured_cap_is_refused_with_507(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    def configure(i: int, overrides: dict[str, object]) -> None:
        overrides["blob_store_max_bytes"] = 20_000  # the config.toml key

    async with Cluster.started(nursery, tmp_path, 2, configure=configure) as c:
        client = ApiClient.from_data_dir(c.members[0].data_dir)
        first = await trio.to_thread.run_sync(client.upload_blob, os.urandom(16_000))
        assert first["size"] == 16_000
        with pytest.raises(ApiHttpError) as err:
            await trio.to_thread.run_sync(client.upload_blob, os.urandom(16_000))
        assert (err.value.status, err.value.code) == (507, "blob_store_full")
        assert "blob store is full" in str(err.value)
        disk = (await trio.to_thread.run_sync(client.status))["disk"]
        assert disk["blobs"]["max_bytes"] == 20_000 and disk["blobs"]["refused_uploads"] == 1
        assert disk["blobs"]["files"] == 1 and disk["blobs"]["gc_passes"] >= 1


async def test_a_finished_jobs_stored_log_is_kept_for_log_retention_and_counted(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Outputs of finished jobs go at once (blob retention 0); their logs stay
    # for log_retention_s, retained (not pinned: over the cap they would go).
    rp = dataclasses.replace(FAST_GC, blob_grace_s=0.5, log_retention_s=3600.0)
    async with Cluster.started(nursery, tmp_path, 2, runtime_params=rp) as c:
        job_id = await c.submit(
            0,
            {
                "image": "meshd/busybox:1",
                "command": ["sh", "-c", "echo out; echo err >&2; echo x > $MESH_OUTPUTS/o.txt"],
            },
        )
        job = await c.wait_job(0, job_id, timeout_s=60)
        assert job.state == "succeeded", job.reason
        origin = c.daemon(0)
        run = next(r for r in job.runs.values() if r.result)
        log_digest = run.result["log_digest"].removeprefix("sha256:")  # type: ignore[index]
        out_digest = run.result["output_digest"].removeprefix("sha256:")  # type: ignore[index]
        await c.wait_for(lambda: origin.blobs.has(log_digest), what="stored log fetched")
        refs = origin.view.blob_references()
        assert log_digest in refs.retained and log_digest in refs.logs
        assert log_digest not in refs.pinned
        await trio.sleep(3 * rp.blob_grace_s)
        await c.wait_for(lambda: not origin.blobs.has(out_digest), what="output collected")
        await origin.disk.collect()
        assert origin.blobs.has(log_digest)
        disk = origin.view.status()["disk"]["blobs"]  # type: ignore[index]
        assert disk["log_blobs"] == 1 and disk["log_bytes"] == len(origin.blobs.get(log_digest))
