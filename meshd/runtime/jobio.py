"""Moving job data: inputs to a worker, outputs back, and comparing two outputs.

Rules:
- Inputs named by digest come from the origin's blob store over the blob
  protocol and are sha256-checked before use; inputs named by URI are fetched
  with a size cap and a timeout (``s3://`` and ``ipfs://`` through the
  gateways in :class:`GatewayParams`).
- Every input lands at ``inputs/<path>`` (paths were validated by the job
  descriptor: relative, no ``..``).
- Output archives are deterministic tars (``meshd.store.blobs.pack_dir``);
  comparing two of them "within tolerance" is :mod:`.compare`'s (specs/CREDITS.md §5).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from meshd.core.jobspec import JobSpec, Tolerance
from meshd.exec.base import Executor
from meshd.store.blobs import BlobStore

from .compare import archives_close

DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class GatewayParams:
    ipfs_gateway: str = "http://127.0.0.1:8080"
    """HTTP gateway for ipfs:// inputs (``{gateway}/ipfs/<cid>``)."""
    s3_endpoint: str = "http://127.0.0.1:9000"
    """Endpoint for s3:// inputs (``{endpoint}/<bucket>/<key>``, unsigned GET)."""
    max_uri_bytes: int = 256 * 1024 * 1024
    """Largest input fetched from a URI."""
    uri_timeout_s: float = 60.0
    """Timeout of one URI fetch."""


def bare(digest: str) -> str:
    """The blob store's key of a protocol digest (``sha256:<hex>`` → ``<hex>``)."""
    return digest[len(DIGEST_PREFIX) :] if digest.startswith(DIGEST_PREFIX) else digest


def prefixed(hex_digest: str) -> str:
    return hex_digest if hex_digest.startswith(DIGEST_PREFIX) else DIGEST_PREFIX + hex_digest


def resolve_uri(uri: str, gw: GatewayParams) -> str:
    if uri.startswith("ipfs://"):
        return f"{gw.ipfs_gateway.rstrip('/')}/ipfs/{uri[len('ipfs://') :]}"
    if uri.startswith("s3://"):
        return f"{gw.s3_endpoint.rstrip('/')}/{uri[len('s3://') :]}"
    return uri


def fetch_uri(uri: str, gw: GatewayParams) -> bytes:
    """GET a URI with a size cap (blocking; run in a thread)."""
    url = resolve_uri(uri, gw)
    with urllib.request.urlopen(url, timeout=gw.uri_timeout_s) as resp:  # noqa: S310 (schemes validated)
        data = resp.read(gw.max_uri_bytes + 1)
    if len(data) > gw.max_uri_bytes:
        raise ValueError(f"{uri} is larger than {gw.max_uri_bytes} bytes")
    return data


async def fetch_inputs(
    fetch_blob: Callable[[str, str], Awaitable[None]],
    blobs: BlobStore,
    origin: str,
    spec: JobSpec,
    dest: Path,
    gw: GatewayParams = GatewayParams(),
) -> None:
    """Place every input of ``spec`` under ``dest`` (raises with a reason on
    failure); inputs named by digest are fetched from ``origin`` into
    ``blobs`` by ``fetch_blob(peer, digest)`` first."""
    if not spec.inputs:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for ref in spec.inputs:
        target = dest / ref.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if ref.digest is not None:
            await fetch_blob(origin, ref.digest)
            src = blobs.path_of(bare(ref.digest))
            await trio.to_thread.run_sync(shutil.copyfile, src, target)
        else:
            assert ref.uri is not None
            data = await trio.to_thread.run_sync(fetch_uri, ref.uri, gw)
            target.write_bytes(data)
        target.chmod(0o444)


def compare_outputs(blobs: BlobStore, a: str, b: str, tolerance: Tolerance) -> bool:
    """Two output archives are equivalent within the job's tolerance (specs/CREDITS.md §5)."""
    if a == b:
        return True
    return archives_close(blobs.get(bare(a)), blobs.get(bare(b)), tolerance)


def _readable_by_sandbox(top: Path) -> None:
    """Unpacked trees are private (0700 dirs); the sandbox's unprivileged user
    must read them: directories 0755, files 0444."""
    os.chmod(top, 0o755)
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o444)


async def run_checker_container(
    executor: Executor, blobs: BlobStore, work_dir: Path, image: str, a: str, b: str, job_id: str
) -> bool:
    """Run the user's checker with the two outputs at /mesh/inputs/a and
    /mesh/inputs/b (unpacked under a temporary dir in ``work_dir``)."""
    from meshd.exec.base import ExecRequest
    from meshd.store.blobs import unpack_tar

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        (root / "inputs").mkdir()
        for name, digest in (("a", a), ("b", b)):
            data = await trio.to_thread.run_sync(blobs.get, bare(digest))
            await trio.to_thread.run_sync(unpack_tar, data, root / "inputs" / name)
        await trio.to_thread.run_sync(_readable_by_sandbox, root / "inputs")
        (root / "outputs").mkdir()
        os.chmod(root / "outputs", 0o777)  # the checker runs as an unprivileged user
        req = ExecRequest(
            job_id=f"check-{job_id}"[:120],
            image=image,
            command=("/mesh/check",),
            input_dir=root / "inputs",
            output_dir=root / "outputs",
            timeout_s=300.0,
        )
        result = await executor.run(req)
        return result.status == "succeeded"
