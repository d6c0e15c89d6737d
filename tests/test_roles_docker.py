"""Issue 12 "Anyone can take part", multi-process: a node with no Docker engine
reachable and the process executor not enabled starts as a *client*, and a job
it submits runs in the Docker sandbox of another peer (real `meshd start`
processes; the Docker peer needs an engine, see tests/docker_env.sh)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from meshd.testing.procs import DaemonProcess, mesh_cli, stop_all

pytestmark = pytest.mark.docker


def test_a_node_without_docker_is_a_client_and_its_job_runs_on_a_docker_peer(
    tmp_path: Path, docker_api: Any
) -> None:
    worker = DaemonProcess(tmp_path / "worker", executor="docker")
    client = DaemonProcess(
        tmp_path / "client",
        executor="auto",
        config={},  # no allow_process_executor: nothing to fall back to
        env={"DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}"},
    )
    procs = [worker, client]
    try:
        for p in procs:
            p.init()
        worker.start()
        client.bootstrap = [worker.addr]
        client.start()
        st = client.wait_for(
            lambda: (s := client.status()) and s["peers"] >= 1 and s,
            60,
            "the client to see the worker",
        )
        assert st["role"] == "client" and st["executor"]["name"] == "none", st
        assert "allow_process_executor" in st["executor"]["reason"], st["executor"]
        worker.wait_for(lambda: (worker.status() or {}).get("warm"), 60, "the worker to be warm")
        out = tmp_path / "out"
        cp = mesh_cli(
            client.data_dir,
            "submit",
            "--image",
            "meshd/busybox:1",
            "--wait",
            "-o",
            str(out),
            "--",
            "sh",
            "-c",
            "id -u > $MESH_OUTPUTS/uid; (touch /etc/x 2>/dev/null && echo rw || echo ro)"
            " > $MESH_OUTPUTS/root",
        )
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert (out / "uid").read_text().strip() != "0"  # the sandbox's non-root user
        assert (out / "root").read_text().strip() == "ro"  # its read-only root
        job_id = cp.stdout.strip().splitlines()[0]
        job = json.loads(mesh_cli(client.data_dir, "job", job_id, "--json").stdout)
        assert job["state"] == "succeeded"
        assert job["result"]["worker"] == worker.status()["peer_id"]  # type: ignore[index]
        # The client advertises no runtime: the worker's view says so.
        peers = json.loads(mesh_cli(worker.data_dir, "peers", "--json").stdout)["peers"]
        assert [p["role"] for p in peers] == ["client"], peers
        assert os.environ.get("DOCKER_HOST") != client.env["DOCKER_HOST"]
    finally:
        stop_all(procs)
