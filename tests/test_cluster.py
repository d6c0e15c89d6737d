"""In-process cluster of real daemons: real libp2p on loopback, LevelDB in temp dirs,
process executor. Checks that the mesh forms and that jobs run across it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import trio

from meshd.testing.cluster import Cluster


def _tar_files(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


async def test_five_daemons_see_each_other_and_run_a_job(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with Cluster.started(nursery, tmp_path, 5) as c:
        for i in range(5):
            for j in range(5):
                if i != j:
                    assert c.sees(i, j), f"node {i} has no advert of node {j}"
        job_id = await c.submit(2, {"image": "meshd/busybox:1",
                                    "command": ["sh", "-c", "echo out-$((6*7)) > $MESH_OUTPUTS/answer.txt"]})
        job = await c.wait_job(2, job_id, timeout_s=30)
        assert job.state == "succeeded", job.reason
        workers = {r.worker for r in job.runs.values() if r.state == "done"}
        assert c.peer_id(2) not in workers  # ran elsewhere
        data = c.daemon(2).blobs.get(job.canonical.split(":", 1)[1])
        assert _tar_files(data) == {"answer.txt": b"out-42\n"}
