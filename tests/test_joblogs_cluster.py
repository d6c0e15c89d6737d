"""Stored job logs on real in-process daemons (``meshd.testing.cluster``): a
log whose fetch a restart cut short is fetched again when the origin comes back."""

from __future__ import annotations

from pathlib import Path

import trio

from meshd.runtime.joblogs import LogQuery, follow_logs
from meshd.testing.cluster import Cluster


async def test_a_finished_jobs_log_missing_at_restart_is_fetched_again(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Two workers besides the origin and one replica: the job's fault is
    # confirmed on the second worker, not on the origin's own (whose log
    # never travels, specs/PROTOCOL.md §8.5).
    async with Cluster.started(nursery, tmp_path, 3) as c:
        await c.wait_mesh()
        job_id = await c.submit(
            0,
            {
                "image": "meshd/busybox:1",
                "command": ["sh", "-c", "echo one; echo two >&2; exit 3"],
                "replicas": 1,
            },
        )
        job = await c.wait_job(0, job_id, timeout_s=60)
        assert job.state == "failed"
        assert c.peer_id(0) not in {r.worker for r in job.runs.values()}
        origin = c.daemon(0)
        digests = {
            r.result["log_digest"].removeprefix("sha256:")  # type: ignore[index]
            for r in job.runs.values()
            if r.result
        }
        for d in digests:
            await c.wait_for(lambda d=d: origin.blobs.has(d), what="stored log fetched")
        for d in digests:  # as if the daemon had died before the fetch completed
            assert origin.blobs.delete(d)
        assert origin.view.missing_logs()
        origin = await c.restart(0)
        for d in digests:
            await c.wait_for(lambda d=d: origin.blobs.has(d), what="stored log fetched again")
        assert origin.view.missing_logs() == []
        records = [r async for r in follow_logs(origin.view, job_id, LogQuery())]
        assert {(r["stream"], r["data"]) for r in records[:-1]} == {
            ("stdout", "one"),
            ("stderr", "two"),
        }
        assert records[-1]["incomplete"] == []
