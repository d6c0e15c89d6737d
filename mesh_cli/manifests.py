"""Signed result manifests for ``mesh result``: saving one beside the outputs,
and checking outputs against one offline (specs/JOB.md §3.1).

Where the manifest goes: unpacked outputs in ``DIR`` get ``DIR/.meshd-manifest.json``
(a name no output may take: it is refused if the archive has it); a tar
saved with ``--tar FILE`` gets ``FILE.manifest.json``. ``mesh result
--verify PATH`` finds it there (or takes ``--manifest FILE``), checks the
worker's signature and the origin's countersignature (a peer id names its
Ed25519 key, so no node is asked), then every file: for a directory, each
listed file's size and sha256 and that no other file is present; for a tar,
the archive's sha256 and its file list, both of which the signatures cover.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = ".meshd-manifest.json"
TAR_SUFFIX = ".manifest.json"
HASH_CHUNK_BYTES = 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
"""Largest manifest document read (10,000 files fit well within it)."""


class VerifyError(Exception):
    """The outputs do not match their manifest, or the manifest does not verify."""


def manifest_path_for(path: Path) -> Path:
    """Where the manifest of unpacked outputs (a directory) or of a tar lives."""
    return path / MANIFEST_NAME if path.is_dir() else path.with_name(path.name + TAR_SUFFIX)


def save_manifest(doc: dict[str, Any], target: Path) -> Path:
    """Write ``doc`` beside the outputs at ``target`` (a directory or a tar)."""
    where = manifest_path_for(target)
    where.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return where


def _sha256_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def verify_outputs(path: Path, manifest: Path | None = None) -> tuple[Any, int]:
    """Check the manifest's signatures and every file at ``path``; returns what
    the manifest established and the number of files checked. Raises
    :class:`VerifyError` naming each problem."""
    from meshd.core.manifest import ManifestError, archive_files, verify_document

    if not path.exists():
        raise VerifyError(f"{path} does not exist")
    where = manifest or manifest_path_for(path)
    try:
        if where.stat().st_size > MAX_MANIFEST_BYTES:
            raise VerifyError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
        doc = json.loads(where.read_bytes())
    except FileNotFoundError:
        raise VerifyError(f"no manifest at {where} (give one with --manifest FILE)") from None
    except (OSError, ValueError) as exc:
        raise VerifyError(f"cannot read the manifest {where}: {exc}") from None
    try:
        checked = verify_document(doc)
    except ManifestError as exc:
        raise VerifyError(f"{where}: {exc}") from None
    problems: list[str] = []
    if path.is_dir():
        listed: dict[str, Any] = {}
        for entry in checked.files:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise VerifyError(f"{where}: a file entry without a path")
            listed[entry["path"]] = entry
        present = {
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and not (p.parent == path and p.name == MANIFEST_NAME)
        }
        for name in sorted(present - listed.keys()):
            problems.append(f"{name}: not in the manifest")
        for name, entry in sorted(listed.items()):
            file = path / name
            if name not in present:
                problems.append(f"{name}: missing")
                continue
            digest, size = _sha256_file(file)
            if size != entry.get("size"):
                problems.append(f"{name}: {size} bytes, the manifest says {entry.get('size')}")
            elif digest != entry.get("sha256"):
                problems.append(f"{name}: content differs ({digest})")
        count = len(listed)
    else:
        digest, _ = _sha256_file(path)
        if digest != checked.archive_sha256:
            problems.append(f"{path.name}: the archive is {digest}, not {checked.archive_sha256}")
        else:
            try:
                if archive_files(path.read_bytes()) != checked.files:
                    problems.append(f"{path.name}: its files differ from the manifest's list")
            except ManifestError as exc:
                problems.append(f"{path.name}: {exc}")
        count = len(checked.files)
    if problems:
        raise VerifyError("; ".join(problems))
    return checked, count
