"""Result manifests: what a job produced, signed by its worker and countersigned
by its origin, checkable offline by anyone (specs/JOB.md §3.1).

A manifest names every file of a run's output archive (path, size, sha256)
and the archive itself. The worker signs it when it packs the outputs and
sends the signature in its ``result`` message (``manifest_sig``); the origin,
once the job's result is accepted, checks that signature against the archive
it holds and countersigns the manifest with its verdict. ``mesh result``
stores the document beside the outputs and ``mesh result --verify`` checks
both signatures and every file without asking any node: a peer id names its
Ed25519 public key.

Pure functions over bytes; no I/O.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

from .identity import public_key_from_peer_id, verify_signature

KIND = "meshd-result-manifest"
VERSION = 1
WORKER_DOMAIN = b"meshd/result-manifest/1\n"
ORIGIN_DOMAIN = b"meshd/result-manifest-countersign/1\n"
MAX_FILES = 10_000
"""Most files a manifest lists (an archive with more cannot be manifested)."""


class ManifestError(ValueError):
    """A manifest that does not verify, or an archive it cannot describe."""


def canonical(obj: Any) -> bytes:
    """The signed form: JSON, keys sorted, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_prefixed(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def archive_files(archive: bytes) -> list[dict[str, Any]]:
    """Each regular file of a tar archive: ``{path, size, sha256}``, sorted by path."""
    files: list[dict[str, Any]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if len(files) >= MAX_FILES:
                    raise ManifestError(f"the archive has more than {MAX_FILES} files")
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                files.append(
                    {"path": member.name, "size": len(data), "sha256": sha256_prefixed(data)}
                )
    except tarfile.TarError as exc:
        raise ManifestError(f"not a tar archive: {exc}") from None
    return sorted(files, key=lambda e: e["path"])


def manifest_body(
    *, job_id: str, attempt: int, replica: int, worker: str, archive: bytes
) -> dict[str, Any]:
    """What the worker signs for one run's output archive."""
    return {
        "kind": KIND,
        "version": VERSION,
        "job_id": job_id,
        "attempt": attempt,
        "replica": replica,
        "worker": worker,
        "archive": {"sha256": sha256_prefixed(archive), "size": len(archive)},
        "files": archive_files(archive),
    }


def worker_payload(body: dict[str, Any]) -> bytes:
    return WORKER_DOMAIN + canonical(body)


def origin_payload(body: dict[str, Any], worker_sig: str, verdict: dict[str, Any]) -> bytes:
    return ORIGIN_DOMAIN + canonical({"body": body, "worker_sig": worker_sig, "verdict": verdict})


@dataclass(frozen=True)
class Checked:
    """What :func:`verify_document` established."""

    job_id: str
    worker: str
    origin: str
    verdict: dict[str, Any]
    files: list[dict[str, Any]]
    archive_sha256: str


def _sig(hex_sig: Any, who: str) -> bytes:
    try:
        sig = bytes.fromhex(hex_sig)
    except (TypeError, ValueError):
        raise ManifestError(f"the {who} signature is not hex") from None
    if len(sig) != 64:
        raise ManifestError(f"the {who} signature is not 64 bytes")
    return sig


def _key(peer_id: Any, who: str) -> bytes:
    key = public_key_from_peer_id(peer_id) if isinstance(peer_id, str) else None
    if key is None:
        raise ManifestError(f"the {who} {peer_id!r} is not an Ed25519 peer id")
    return key


def verify_document(doc: Any) -> Checked:
    """Check both signatures of a manifest document (the files are checked by
    the caller against :attr:`Checked.files`). Raises :class:`ManifestError`."""
    if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
        raise ManifestError("not a manifest document (no 'body')")
    body = doc["body"]
    if body.get("kind") != KIND or body.get("version") != VERSION:
        raise ManifestError(f"not a {KIND} version {VERSION}")
    worker_sig = doc.get("worker_sig")
    if not verify_signature(
        _key(body.get("worker"), "worker"), _sig(worker_sig, "worker"), worker_payload(body)
    ):
        raise ManifestError("the worker's signature does not match the manifest")
    countersign = doc.get("origin")
    if not isinstance(countersign, dict):
        raise ManifestError("the manifest is not countersigned by an origin")
    verdict = countersign.get("verdict")
    if not isinstance(verdict, dict):
        raise ManifestError("the countersignature carries no verdict")
    if not verify_signature(
        _key(countersign.get("peer_id"), "origin"),
        _sig(countersign.get("sig"), "origin"),
        origin_payload(body, str(worker_sig), verdict),
    ):
        raise ManifestError("the origin's countersignature does not match the manifest")
    files = body.get("files")
    archive = body.get("archive")
    if not isinstance(files, list) or not isinstance(archive, dict):
        raise ManifestError("the manifest lists no files")
    return Checked(
        job_id=str(body.get("job_id")),
        worker=str(body["worker"]),
        origin=str(countersign["peer_id"]),
        verdict=verdict,
        files=files,
        archive_sha256=str(archive.get("sha256")),
    )


def countersign(
    body: dict[str, Any],
    worker_sig: str,
    verdict: dict[str, Any],
    *,
    peer_id: str,
    sign: Any,
) -> dict[str, Any]:
    """The origin's document for an accepted result: the worker's signature
    is checked against ``body`` (built from the archive the origin holds), then
    the origin signs body, worker signature and ``verdict`` together."""
    if not verify_signature(
        _key(body["worker"], "worker"), _sig(worker_sig, "worker"), worker_payload(body)
    ):
        raise ManifestError("the worker's signature does not match the accepted archive")
    sig = sign(origin_payload(body, worker_sig, verdict)).hex()
    return {
        "body": body,
        "worker_sig": worker_sig,
        "origin": {"peer_id": peer_id, "verdict": verdict, "sig": sig},
    }
