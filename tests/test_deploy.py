"""Deployment files (issue 15 "Deployment"): the Kubernetes manifests pass the
API's schemas, the systemd unit parses, and the container image, built here
with deploy/build-image.sh, runs a three-node compose mesh that runs a job.

The compose test needs root, a Docker engine (tests/run.sh starts one) and
Debian's docker-compose; it is skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"
"""The oldest Kubernetes release the manifests target (StatefulSet, probes)."""


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        out += [(name, d) for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return out


def test_every_kubernetes_manifest_passes_the_api_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = _k8s_docs()
    assert {d["kind"] for _, d in docs} == {"ConfigMap", "Service", "StatefulSet"}
    for name, doc in docs:
        assert kv.validate(doc, K8S_VERSION, strict=True), name  # raises naming the field
    # a schema violation is caught (so the check above can fail)
    broken = json.loads(json.dumps(dict(docs)["statefulset.yaml"]))
    broken["spec"]["template"]["spec"]["containers"][0]["port"] = 7700
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_the_manifests_refer_to_each_other_consistently() -> None:
    docs = {d["kind"]: d for _, d in _k8s_docs()}
    sts, svc, cm = docs["StatefulSet"], docs["Service"], docs["ConfigMap"]
    pod = sts["spec"]["template"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"  # headless: stable per-pod names
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) <= volumes | claims
    env = {e["name"]: e for e in container["env"]}
    assert mounts["data"] == env["MESH_DATA_DIR"]["value"]  # key and log persist
    ref = env["MESHD_BOOTSTRAP_ID"]["valueFrom"]["configMapKeyRef"]
    assert ref["name"] == cm["metadata"]["name"] and ref["key"] in cm["data"]
    assert env["MESHD_BOOTSTRAP_HOST"]["value"].startswith(f"{sts['metadata']['name']}-0.")
    assert env["MESHD_NODE_KEY_FOR_HOST"]["value"] == f"{sts['metadata']['name']}-0"
    config_path = Path(env["MESHD_CONFIG_FILE"]["value"])
    assert mounts["config"] == str(config_path.parent)
    # the config the ConfigMap carries is one meshd accepts
    import tomllib

    from meshd.config import NodeConfig

    NodeConfig.model_validate(tomllib.loads(cm["data"]["config.toml"]))
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0


def test_the_systemd_unit_parses() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(REPO / "deploy" / "meshd.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    # The unit names /opt/meshd, not installed here; anything else is an error in it.
    problems = [
        line
        for line in proc.stderr.splitlines()
        if "meshd.service" in line
        and "/opt/meshd" not in line
        and "is not executable" not in line
        and "No such file" not in line
    ]
    assert problems == [], proc.stderr


# ------------------------------------------------------------------ the compose mesh


def _compose_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the workers' data dirs are chowned to the image's user)"
    if not os.environ.get("DOCKER_HOST", "").startswith("unix://"):
        return "no private Docker engine (DOCKER_HOST unset: run tests/run.sh as root)"
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install docker.io docker-compose)"
    return None


def _run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def compose(tmp_path: Path) -> Iterator[Any]:
    problem = _compose_problem()
    if problem:
        pytest.skip(problem)
    image = _run("bash", "deploy/build-image.sh").strip().splitlines()[-1]
    data = tmp_path / "compose-data"
    for node in ("node1", "node2"):
        (data / node).mkdir(parents=True)
        os.chown(data / node, 10001, 10001)
    data.chmod(0o755)
    tmp_path.chmod(0o755)
    sock = os.environ["DOCKER_HOST"].removeprefix("unix://")
    project = f"meshdci{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "MESHD_IMAGE": image,
        "MESHD_COMPOSE_DATA": str(data),
        "DOCKER_SOCK": sock,
        "DOCKER_GID": str(os.stat(sock).st_gid),
        "COMPOSE_PROJECT_NAME": project,
    }
    base = ("docker-compose", "-f", REPO / "deploy" / "compose.yaml")

    def dc(*args: str | Path, timeout: float = 300) -> str:
        return _run(*base, *args, env=env, timeout=timeout)

    try:
        dc("up", "-d")
        yield dc
    finally:
        try:
            logs = dc("logs", "--no-color", "--tail", "40", timeout=60)
            print(logs)  # shown by pytest when the test failed
        except AssertionError as exc:
            print(exc)
        dc("down", "-v", "--remove-orphans", timeout=120)


@pytest.mark.docker
@pytest.mark.slow
def test_the_compose_mesh_runs_a_job_submitted_in_a_container(compose: Any) -> None:
    def mesh(node: str, *args: str, timeout: float = 120) -> str:
        return compose("exec", "-T", node, "mesh", *args, timeout=timeout)

    # node0 (the bootstrap, a client) sees both workers
    deadline = time.monotonic() + 120
    while True:
        try:
            peers = json.loads(mesh("node0", "peers", "--json"))
            workers = [p for p in peers["peers"] if p.get("role") == "worker"]
            if len(workers) >= 2:
                break
        except (AssertionError, ValueError):
            pass
        assert time.monotonic() < deadline, "the compose mesh did not form within 120 s"
        time.sleep(2)
    out = mesh(
        "node0",
        "submit",
        "--wait",
        "--image",
        "meshd/busybox:1",
        "-o",
        "/data/out",
        "--",
        "sh",
        "-c",
        'echo "hello from $(hostname)" > "$MESH_OUTPUTS/greeting.txt"',
        timeout=240,
    )
    job_id = out.strip().splitlines()[-1]
    assert job_id
    text = compose("exec", "-T", "node0", "cat", "/data/out/greeting.txt", timeout=60)
    assert text.startswith("hello from ")
    job = json.loads(mesh("node0", "job", job_id, "--json"))
    assert job["state"] == "succeeded"
    # the job ran on a worker container, not on the client that submitted it
    status = json.loads(mesh("node0", "status", "--json"))
    assert job["result"]["worker"] != status["peer_id"], job
