"""Wrap a root filesystem tarball as a one-layer image for ``docker load``.

    python3 docker_archive.py ROOTFS.tar OUT.tar --tag meshd/sci:1 \
        --created 1735689600 --env PATH=/usr/bin:/bin --cmd /mesh/run

No registry and no builder: the archive is the format ``docker save``
writes (``manifest.json``, the image config, the layer as an uncompressed
tar). Everything in it is a function of the arguments and the rootfs's
bytes — the creation time is ``--created`` (SOURCE_DATE_EPOCH), keys are
sorted — so the image id (the sha256 of the config) is the same wherever the
same rootfs is wrapped; ``docker import`` would stamp the current time and
give a new id each run. Prints the image id (``sha256:…``) on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def image_config(diff_id: str, created: int, env: list[str], cmd: list[str], arch: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    config = {
        "architecture": arch,
        "os": "linux",
        "created": stamp,
        "config": {"Env": env, "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        "history": [{"created": stamp, "created_by": "examples/build-images.sh"}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes, created: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), created, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_archive(
    rootfs: Path, out: Path, tag: str, config: bytes, diff_id: str, created: int
) -> str:
    config_id = hashlib.sha256(config).hexdigest()
    manifest = [
        {"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}
    ]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{config_id}.json", config, created)
        info = tarfile.TarInfo(f"{diff_id}/layer.tar")
        info.size, info.mtime, info.mode = rootfs.stat().st_size, created, 0o644
        with open(rootfs, "rb") as f:
            tar.addfile(info, f)
        _add(tar, "manifest.json", json.dumps(manifest, sort_keys=True).encode(), created)
    return "sha256:" + config_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rootfs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--created", type=int, required=True, help="SOURCE_DATE_EPOCH")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("--arch", default="amd64")
    args = ap.parse_args()
    diff_id = sha256_file(args.rootfs)
    config = image_config(diff_id, args.created, args.env, args.cmd, args.arch)
    print(write_archive(args.rootfs, args.out, args.tag, config, diff_id, args.created))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
