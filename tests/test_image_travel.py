"""Images that travel, end to end: real ``meshd start`` processes on two
separate Docker engines (issue 12, "Anyone can take part").

The origin's engine (the one ``DOCKER_HOST`` names, from
``tests/docker_env.sh``) has the job image; the workers share a second,
private engine that starts with no image at all. Checked:

- the workers become warm by themselves (each builds its health-check image
  from the host's static busybox);
- a job whose image only the origin has runs on a worker after the image
  travelled: its output is the marker only that image holds, and the
  worker's engine now has the image under its pinned id;
- a tampered image archive (its config changed, the pinned id kept) is
  refused by the workers — counted ``image_refused_image_id``, logged — and
  never loaded;
- any peer that has the image serves it: a worker that loaded it keeps the
  archive (and its piece list) and advertises it, and a second worker
  fetches both from that worker while the origin no longer has them
  (specs/PROTOCOL.md §5.1).

Skipped with the reason when not root, without dockerd, or without the
first engine (like the other Docker tests).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from meshd.exec.health_image import find_static_busybox
from meshd.store.blobs import BlobStore
from meshd.testing.images import (
    engine_problem,
    import_marker_image,
    save_archive,
    second_engine,
    tamper_archive,
)
from meshd.testing.procs import FAST_PARAMS, DaemonProcess, stop_all, wait_mesh

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _wait_job(p: DaemonProcess, job_id: str, timeout_s: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        j = p.client().job(job_id)
        return j if j["state"] in ("succeeded", "failed", "cancelled") else None

    return p.wait_for(done, timeout_s, f"job {job_id} to finish")  # type: ignore[no-any-return]


def test_a_job_image_travels_to_workers_whose_engine_has_none(
    docker_api: Any, tmp_path: Path
) -> None:
    problem = engine_problem()
    if problem is not None:
        pytest.skip(problem)
    try:
        busybox = find_static_busybox(("/bin/busybox", "/usr/bin/busybox"))
    except Exception as exc:
        pytest.skip(f"no static busybox: {exc}")
    token = secrets.token_hex(8)
    name = f"meshd/travel-{token[:8]}:1"
    image_id = import_marker_image(docker_api, name, token, busybox)
    procs: list[DaemonProcess] = []
    # A short path: the engine's socket path must fit a sun_path.
    engine_dir = Path(f"/tmp/mdw-{secrets.token_hex(3)}")
    try:
        with second_engine(engine_dir) as worker_host:
            wapi = docker.APIClient(base_url=worker_host, version="auto", timeout=60)
            assert wapi.images() == [], "the workers' engine starts with no image"
            # the origin keeps the first engine (DOCKER_HOST, or the default socket)
            origin = DaemonProcess(tmp_path / "origin", executor="docker")
            workers = [
                DaemonProcess(
                    tmp_path / f"w{i}", executor="docker", env={"DOCKER_HOST": worker_host}
                )
                for i in range(2)
            ]
            procs = [origin, *workers]
            for p in procs:
                p.init()
            origin.start()
            for w in workers:
                w.bootstrap = [origin.addr]
                w.start()
            # Warm by themselves: wait_mesh waits for every node to be warm.
            wait_mesh(procs, 120)
            assert wapi.inspect_image("meshd/busybox:1")["Id"]
            worker_ids = {w.status()["peer_id"] for w in workers}  # type: ignore[index]

            # 1. A tampered archive: the config changed, the pinned id kept.
            bad = tamper_archive(save_archive(docker_api, name), "config")
            up = origin.client().upload_blob(bad)
            spec = {
                "image": name,
                "command": ["sh", "-c", 'cat /etc/marker > "$MESH_OUTPUTS/marker"'],
                "image_blob": {"id": image_id, "digest": up["digest"], "size": up["size"]},
                "requirements": {"memory_mb": 64},
                "timeout_s": 60,
            }
            job = origin.client().submit(spec)["job_id"]
            view = _wait_job(origin, job, 120)
            assert view["state"] == "failed", view
            refused = sum(
                (w.status() or {}).get("counters", {}).get("image_refused_image_id", 0)
                for w in workers
            )
            assert refused >= 1
            assert any(
                "image refused (image_id)" in (w.data_dir / "daemon.log").read_text()
                for w in workers
            )
            assert not [i for i in wapi.images() if i["Id"] == image_id], "never loaded"

            # 2. The real image travels and the job runs on a worker.
            spec.pop("image_blob")
            job = origin.client().submit(spec)["job_id"]
            view = _wait_job(origin, job, 180)
            assert view["state"] == "succeeded", view
            assert view["result"]["worker"] in worker_ids
            assert view["spec"]["image_blob"]["id"] == image_id
            buf = io.BytesIO()
            origin.client().download_result(job, buf)
            with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
                member = tar.extractfile("marker")
                assert member is not None and member.read().decode().strip() == token
            assert wapi.inspect_image(name)["Id"] == image_id
            loaded = sum(
                (w.status() or {}).get("counters", {}).get("image_loaded", 0) for w in workers
            )
            assert loaded >= 1
            index = [
                json.loads((w.data_dir / "images.json").read_text())
                for w in workers
                if (w.data_dir / "images.json").exists()
            ]
            assert any(image_id in i["images"] for i in index)
            wapi.close()
            stop_all(procs)  # before their engine stops
            procs = []
    finally:
        stop_all(procs)
        try:
            docker_api.remove_image(name, force=True)
        except Exception:
            pass


def _served(p: DaemonProcess) -> float:
    """Blob ranges ``p`` served to peers (its ``/metrics``)."""
    m = re.search(r"^meshd_blob_ranges_served_total (\S+)$", p.client().metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def _marker(p: DaemonProcess, job: str) -> str:
    buf = io.BytesIO()
    p.client().download_result(job, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        member = tar.extractfile("marker")
        assert member is not None
        return member.read().decode().strip()


def test_a_worker_that_loaded_an_image_serves_it_when_the_origin_no_longer_has_it(
    docker_api: Any, tmp_path: Path
) -> None:
    """Origin O and worker W2 on the first engine, worker W1 on a second one.
    Job 1's image travels from O to W1, which keeps the archive. Then the
    image leaves the first engine, and O's blob store loses the archive just
    after job 2 (pinning the same archive, with a budget only W2's price
    fits) is accepted: W2 gets the image from W1 alone."""
    problem = engine_problem()
    if problem is not None:
        pytest.skip(problem)
    try:
        busybox = find_static_busybox(("/bin/busybox", "/usr/bin/busybox"))
    except Exception as exc:
        pytest.skip(f"no static busybox: {exc}")
    token = secrets.token_hex(8)
    name = f"meshd/held-{token[:8]}:1"
    image_id = import_marker_image(docker_api, name, token, busybox)
    procs: list[DaemonProcess] = []
    engine_dir = Path(f"/tmp/mdh-{secrets.token_hex(3)}")
    try:
        with second_engine(engine_dir) as w1_host:
            # one run per job: no second opinion to wait for (W1 declines job 2)
            single = {**FAST_PARAMS, "untrusted_replication": 0.0, "replication_fraction": 0.0}
            origin = DaemonProcess(tmp_path / "origin", executor="docker", params=single)
            w1 = DaemonProcess(
                tmp_path / "w1",
                executor="docker",
                env={"DOCKER_HOST": w1_host},
                config={"price_per_gflops_hour": 1e6},  # too dear for job 2's budget
            )
            procs = [origin, w1]
            for p in procs:
                p.init()
            origin.start()
            w1.bootstrap = [origin.addr]
            w1.start()
            wait_mesh(procs, 120)
            w1_id = w1.status()["peer_id"]  # type: ignore[index]
            spec: dict[str, Any] = {
                "image": name,
                "command": ["sh", "-c", 'cat /etc/marker > "$MESH_OUTPUTS/marker"'],
                "requirements": {"memory_mb": 64},
                "timeout_s": 60,
            }
            job1 = origin.client().submit(spec)["job_id"]
            view = _wait_job(origin, job1, 180)
            assert view["state"] == "succeeded", view
            assert view["result"]["worker"] == w1_id
            blob = view["spec"]["image_blob"]
            assert blob["id"] == image_id
            # W1 keeps the archive and says so in its advert.
            kept = json.loads((w1.data_dir / "images.json").read_text())["images"][image_id]
            assert kept["archive"] == blob["digest"] and kept["pieces"] == blob["pieces"]
            assert BlobStore(w1.data_dir / "blobs").has(blob["digest"].removeprefix("sha256:"))

            # The first engine loses the image; W2 joins on it.
            docker_api.remove_image(name, force=True)
            w2 = DaemonProcess(tmp_path / "w2", executor="docker")
            procs.append(w2)
            w2.init()
            w2.bootstrap = [origin.addr]
            w2.start()
            wait_mesh(procs, 120)
            served_before = _served(w1), _served(origin)

            spec2 = {**spec, "image_blob": blob, "estimated_flops": 1e9, "max_budget": 1.0}
            job2 = origin.client().submit(spec2)["job_id"]
            # Before any bid window closes: the origin no longer has the archive
            # (nor its piece list).
            for d in (blob["digest"], blob["pieces"]):
                assert BlobStore(origin.data_dir / "blobs").delete(d.removeprefix("sha256:"))
            view = _wait_job(origin, job2, 180)
            assert view["state"] == "succeeded", (
                view.get("reason"),
                (w2.data_dir / "daemon.log").read_text()[-3000:],
            )
            assert view["result"]["worker"] == w2.status()["peer_id"]  # type: ignore[index]
            assert _marker(origin, job2) == token
            assert docker_api.inspect_image(name)["Id"] == image_id
            ranges = -(-blob["size"] // (4 << 20))  # blob_chunk_bytes
            assert _served(w1) - served_before[0] >= ranges + 1  # and the piece list
            assert _served(origin) == served_before[1]  # it had nothing to serve
            stop_all(procs)  # before the second engine stops
            procs = []
    finally:
        stop_all(procs)
        try:
            docker_api.remove_image(name, force=True)
        except Exception:
            pass
