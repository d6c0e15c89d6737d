"""Signed result manifests (issue 13 "Signed result archives", specs/JOB.md §3.1):
the worker signs, the origin countersigns once the result is accepted, and
``mesh result --verify`` checks both signatures and every file offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.core.identity import Identity
from meshd.core.manifest import (
    ManifestError,
    countersign,
    manifest_body,
    verify_document,
    worker_payload,
)
from meshd.store.blobs import pack_dir
from meshd.testing.cluster import Cluster

REPO = Path(__file__).resolve().parents[1]
VERDICT = {"state": "succeeded", "verdict": "agreed", "replicas": 2, "needed": 2, "valid": []}


def _archive(tmp: Path) -> bytes:
    (tmp / "out/sub").mkdir(parents=True)
    (tmp / "out/a.txt").write_text("1.0 2.0\n")
    (tmp / "out/sub/b.npy").write_bytes(b"\x93NUMPY" + bytes(range(40)))
    return pack_dir(tmp / "out")


def _document(tmp: Path) -> tuple[dict[str, Any], Identity, Identity]:
    worker, origin = Identity.generate(), Identity.generate()
    body = manifest_body(
        job_id="j1", attempt=1, replica=0, worker=worker.peer_id, archive=_archive(tmp)
    )
    sig = worker.sign(worker_payload(body)).hex()
    doc = countersign(body, sig, VERDICT, peer_id=origin.peer_id, sign=origin.sign)
    return doc, worker, origin


def test_a_countersigned_manifest_verifies_and_lists_every_file(tmp_path: Path) -> None:
    doc, worker, origin = _document(tmp_path)
    checked = verify_document(json.loads(json.dumps(doc)))
    assert (checked.worker, checked.origin) == (worker.peer_id, origin.peer_id)
    assert [f["path"] for f in checked.files] == ["a.txt", "sub/b.npy"]
    assert checked.files[0]["size"] == 8


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["body"]["files"][0].update(size=9),
        lambda d: d["body"].update(job_id="j2"),
        lambda d: d["origin"]["verdict"].update(verdict="unverified"),
        lambda d: d.update(worker_sig="00" * 64),
        lambda d: d["origin"].update(sig="ab" * 64),
        lambda d: d["origin"].update(peer_id=Identity.generate().peer_id),
        lambda d: d["body"].update(worker=Identity.generate().peer_id),
        lambda d: d.pop("origin"),
        lambda d: d["origin"].update(sig="xyz"),
    ],
)
def test_any_change_breaks_a_signature(tmp_path: Path, tamper: Any) -> None:
    doc, _, _ = _document(tmp_path)
    tamper(doc)
    with pytest.raises(ManifestError):
        verify_document(doc)


def test_the_origin_will_not_countersign_a_signature_of_another_archive(tmp_path: Path) -> None:
    worker, origin = Identity.generate(), Identity.generate()
    body = manifest_body(
        job_id="j", attempt=1, replica=0, worker=worker.peer_id, archive=_archive(tmp_path)
    )
    other = {**body, "archive": {"sha256": "sha256:" + "0" * 64, "size": 1}}
    sig = worker.sign(worker_payload(other)).hex()
    with pytest.raises(ManifestError, match="does not match the accepted archive"):
        countersign(body, sig, VERDICT, peer_id=origin.peer_id, sign=origin.sign)


async def _mesh(data_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await trio.run_process(
        [sys.executable, "-m", "mesh_cli.main", "--data-dir", str(data_dir), *map(str, args)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    return proc


async def test_mesh_result_saves_and_verifies_the_manifest_offline(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 2) as c:
        job_id = await c.submit(
            0,
            {
                "image": "meshd/busybox:1",
                "command": [
                    "sh",
                    "-c",
                    'mkdir -p "$MESH_OUTPUTS/d" && echo 0.125 > "$MESH_OUTPUTS/x.txt"'
                    ' && echo hi > "$MESH_OUTPUTS/d/y.txt"',
                ],
            },
        )
        await c.wait_job(0, job_id, "succeeded")
        data = c.members[0].data_dir
        out = tmp_path / "out"
        got = await _mesh(data, "result", job_id, "-o", out)
        assert got.returncode == 0, got.stderr.decode()
        assert "verified 2 file(s)" in got.stdout.decode()
        tar = tmp_path / "r.tar"
        got = await _mesh(data, "result", job_id, "--tar", tar)
        assert got.returncode == 0, got.stderr.decode()
        worker = next(r.worker for r in c.job(0, job_id).runs.values() if r.result)
        origin = c.peer_id(0)
    # offline: the daemons are gone
    ok = await _mesh(tmp_path / "nowhere", "result", "--verify", out)
    assert ok.returncode == 0, ok.stderr.decode()
    assert f"worker {worker[-12:]}" in ok.stdout.decode()
    assert f"origin {origin[-12:]}" in ok.stdout.decode()
    ok = await _mesh(tmp_path / "nowhere", "result", "--verify", tar)
    assert ok.returncode == 0, ok.stderr.decode()

    (out / "x.txt").write_text("0.126\n")
    (out / "extra").write_text("")
    bad = await _mesh(tmp_path / "nowhere", "result", "--verify", out)
    assert bad.returncode == 1
    assert "x.txt: content differs" in bad.stderr.decode()
    assert "extra: not in the manifest" in bad.stderr.decode()

    tar.write_bytes(tar.read_bytes()[:-1] + b"\x01")
    bad = await _mesh(tmp_path / "nowhere", "result", "--verify", tar)
    assert bad.returncode == 1 and "the archive is sha256:" in bad.stderr.decode()

    manifest = tmp_path / "r.tar.manifest.json"
    doc = json.loads(manifest.read_text())
    doc["origin"]["verdict"]["valid"] = ["someone else"]
    manifest.write_text(json.dumps(doc))
    bad = await _mesh(tmp_path / "nowhere", "result", "--verify", tar)
    assert bad.returncode == 1 and "countersignature does not match" in bad.stderr.decode()

    usage = await _mesh(tmp_path / "nowhere", "result")
    assert usage.returncode == 2 and "either JOB_ID" in usage.stderr.decode()


async def test_the_origin_stores_the_countersigned_manifest_beside_the_archive(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Once a job succeeds its origin stores the document as a blob, names it
    in a ``result_manifest`` record and serves that one, also after a restart."""
    from meshd.api.client import ApiClient

    async with Cluster.started(nursery, tmp_path, 2) as c:
        job_id = await c.submit(
            0, {"image": "meshd/busybox:1", "command": ["sh", "-c", 'echo 1 > "$MESH_OUTPUTS/x"']}
        )
        await c.wait_job(0, job_id, "succeeded")
        await c.wait_for(lambda: c.job(0, job_id).manifest is not None, 30, "the stored manifest")
        digest = c.job(0, job_id).manifest
        stored = json.loads(c.daemon(0).blobs.get(digest.removeprefix("sha256:")))
        assert verify_document(stored).job_id == job_id
        assert stored["body"]["archive"]["sha256"] == c.job(0, job_id).canonical
        await c.restart(0)
        assert c.job(0, job_id).manifest == digest  # from the result_manifest record
        client = ApiClient.from_data_dir(c.members[0].data_dir)
        served = await trio.to_thread.run_sync(client.result_manifest, job_id)
        assert served == stored
