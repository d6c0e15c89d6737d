"""Moving job data: inputs to a worker, outputs back, and comparing two outputs.

Rules:
- Inputs named by digest come from the origin's blob store over the blob
  protocol and are sha256-checked before use; inputs named by URI are fetched
  by :mod:`.inputs` (public addresses only unless allow-listed, size cap,
  timeout, ``s3://`` and ``ipfs://`` through the operator's endpoints), and
  checked against their pinned digest when they carry one.
- Every input lands at ``inputs/<path>`` (paths were validated by the job
  descriptor: relative, no ``..``). A URI input that cannot be fetched or
  does not match its pin raises :class:`.inputs.InputError`: the submitter
  named it, so the run fails by the job's fault (specs/PROTOCOL.md §10).
- Output archives are deterministic tars (``meshd.store.blobs.pack_dir``);
  comparing two of them "within tolerance" is :mod:`.compare`'s (specs/CREDITS.md §5).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from meshd.config import InputsConfig
from meshd.core.jobspec import JobSpec, Tolerance
from meshd.exec.base import Executor
from meshd.store.blobs import BlobStore

from .compare import archives_close
from .inputs import check_pin, fetch_uri

DIGEST_PREFIX = "sha256:"


def bare(digest: str) -> str:
    """The blob store's key of a protocol digest (``sha256:<hex>`` → ``<hex>``)."""
    return digest[len(DIGEST_PREFIX) :] if digest.startswith(DIGEST_PREFIX) else digest


def prefixed(hex_digest: str) -> str:
    return hex_digest if hex_digest.startswith(DIGEST_PREFIX) else DIGEST_PREFIX + hex_digest


async def fetch_inputs(
    fetch_blob: Callable[[str, str], Awaitable[None]],
    blobs: BlobStore,
    origin: str,
    spec: JobSpec,
    dest: Path,
    cfg: InputsConfig | None = None,
) -> None:
    """Place every input of ``spec`` under ``dest`` (raises with a reason on
    failure); inputs named by digest alone are fetched from ``origin`` into
    ``blobs`` by ``fetch_blob(peer, digest)`` first; URI inputs are fetched by
    :func:`.inputs.fetch_uri` unless their pinned digest is in ``blobs``."""
    if not spec.inputs:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for ref in spec.inputs:
        target = dest / ref.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if ref.uri is None:
            assert ref.digest is not None
            await fetch_blob(origin, ref.digest)
        elif ref.digest is None or not blobs.has(bare(ref.digest)):
            data = await trio.to_thread.run_sync(partial(fetch_uri, ref.uri, cfg or InputsConfig()))
            check_pin(ref.uri, data, ref.digest)
            if ref.digest is None:  # unpinned: used once, not cached
                await trio.to_thread.run_sync(target.write_bytes, data)
                target.chmod(0o444)
                continue
            await trio.to_thread.run_sync(blobs.put, data)  # the cache, by digest
        assert ref.digest is not None
        src = blobs.path_of(bare(ref.digest))
        await trio.to_thread.run_sync(shutil.copyfile, src, target)
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
