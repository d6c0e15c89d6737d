"""Real daemons running jobs in the real Docker sandbox (skipped, with the reason,
when no engine is reachable: see tests/docker_env.sh)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.core.placement import determinism_class
from meshd.runtime.daemon import now_ms
from meshd.testing.cluster import Cluster
from meshd.testing.faults import tar_members

pytestmark = pytest.mark.docker


async def test_jobs_run_sandboxed_in_docker_across_the_mesh(
    tmp_path: Path, nursery: trio.Nursery, docker_api: Any
) -> None:
    async with Cluster.started(nursery, tmp_path, 3, executor="docker") as c:
        for i in range(3):
            d = c.daemon(i)
            assert d.executor.name == "docker" and d.executor.sandboxed
            # advertised, so origins know who can run it
            assert "meshd/busybox:1" in d.capabilities.images
        # The job sees: no network, a read-only root, a non-root user.
        script = (
            "id -u > $MESH_OUTPUTS/uid; (touch /etc/x 2>/dev/null && echo rw || echo ro) > $MESH_OUTPUTS/root;"
            " (nc -w 1 127.0.0.1 9 </dev/null 2>/dev/null && echo net || echo nonet) > $MESH_OUTPUTS/net"
        )
        job_id = await c.submit(
            0, {"image": "meshd/busybox:1", "command": ["sh", "-c", script], "replicas": 2}
        )
        job = await c.wait_job(0, job_id, timeout_s=90)
        assert job.state == "succeeded", job.reason
        files = tar_members(c.daemon(0).blobs.get(job.canonical.split(":", 1)[1]))
        assert files["uid"].strip() != b"0"
        assert files["root"].strip() == b"ro"
        assert files["net"].strip() == b"nonet"
        assert job.verdict["verdict"] == "agreed"  # both sandboxed runs produced the same archive
        # Bid and result state one determinism class: docker and this image's id.
        image_id = dict(c.daemon(0).capabilities.image_ids)["meshd/busybox:1"]
        want = determinism_class(("docker",), (), "", uses_gpu=False, image_id=image_id)
        done = [r for r in job.runs.values() if r.result is not None]
        assert done and all(r.det_class == want == r.result["det_class"] for r in done)


async def test_gpu_job_on_gpu_less_mesh_is_declined_with_the_reason(
    tmp_path: Path, nursery: trio.Nursery, docker_api: Any
) -> None:
    async with Cluster.started(nursery, tmp_path, 3, executor="docker") as c:
        job_id = await c.submit(
            0, {"image": "meshd/busybox:1", "command": ["true"], "requirements": {"gpus": 1}}
        )
        await c.wait_for(lambda: len(c.job(0, job_id).declines) >= 2, 30, "decline reasons")
        job = c.job(0, job_id)
        assert job.state in ("queued", "offered") and not job.runs  # never awarded, so never failed
        assert all("GPU" in r for _, r in job.declines), list(job.declines)


def _build_checker(api: Any, tag: str, script: str) -> None:
    """A checker image made locally (no registry): the test busybox image plus
    an executable ``/mesh/check``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", b"FROM meshd/busybox:1\nCOPY check /mesh/check\n", 0o644),
            ("check", script.encode(), 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    for chunk in api.build(fileobj=buf, custom_context=True, tag=tag, rm=True, decode=True):
        assert "error" not in chunk, chunk


async def test_checker_container_judges_outputs_that_differ_byte_for_byte(
    tmp_path: Path, nursery: trio.Nursery, docker_api: Any
) -> None:
    # The checker calls two outputs equivalent when their first lines match;
    # the job's second line is random, so the exact rule could never agree.
    _build_checker(
        docker_api,
        "meshd/checker-test:1",
        '#!/bin/sh\n[ "$(head -n 1 /mesh/inputs/a/out)" = "$(head -n 1 /mesh/inputs/b/out)" ]\n',
    )
    script = (
        "echo answer 42 > $MESH_OUTPUTS/out; cat /proc/sys/kernel/random/uuid >> $MESH_OUTPUTS/out"
    )
    async with Cluster.started(nursery, tmp_path, 3, executor="docker") as c:
        job_id = await c.submit(
            0,
            {
                "image": "meshd/busybox:1",
                "command": ["sh", "-c", script],
                "replicas": 2,
                "checker_image": "meshd/checker-test:1",
            },
        )
        job = await c.wait_job(0, job_id, timeout_s=120)
        assert job.state == "succeeded", job.reason
        assert job.verdict["verdict"] == "agreed" and len(job.verdict["valid"]) == 2
        assert not job.verdict["invalid"]
        digests = {r.result["output_digest"] for r in job.runs.values() if r.result}
        assert len(digests) == 2  # the replicas really differed; the checker judged them equal
        files = tar_members(c.daemon(0).blobs.get(job.canonical.split(":", 1)[1]))
        assert files["out"].startswith(b"answer 42\n")
        node = c.daemon(0).node
        assert node is not None
        snap = node.trust.snapshot(now_ms())
        # the origin may have run a replica itself (§8.5): it keeps no trust about itself
        assert all(snap[w]["invalid"] == 0 for w in job.verdict["valid"] if w != c.peer_id(0))
