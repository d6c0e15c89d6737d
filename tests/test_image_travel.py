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
  never loaded.

Skipped with the reason when not root, without dockerd, or without the
first engine (like the other Docker tests).
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from meshd.exec.health_image import find_static_busybox
from meshd.testing.images import (
    engine_problem,
    import_marker_image,
    save_archive,
    second_engine,
    tamper_archive,
)
from meshd.testing.procs import DaemonProcess, stop_all, wait_mesh

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
