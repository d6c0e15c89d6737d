"""The pure parts of the self-built health-check image and of archive checks,
without an engine (``meshd/exec/health_image.py``, ``meshd/runtime/images.py``).

Rules checked: only a static ELF will do (one with a ``PT_INTERP`` program
header is refused); with no usable candidate the reason starts with the fix
and names each candidate; the image root holds busybox, its applets and the
mount points; an archive's image id is the sha256 of the config its manifest
names, and an archive with no or several images is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path

import pytest

from meshd.exec.health_image import (
    APPLETS,
    HealthImageUnavailable,
    find_static_busybox,
    health_root_tar,
    is_static_elf,
)
from meshd.runtime.images import archive_image_id

PT_LOAD, PT_INTERP = 1, 3


def elf64(*ptypes: int) -> bytes:
    """A minimal little-endian ELF64 header with the given program header types."""
    phoff, phentsize = 64, 56
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", head, 0x20, phoff)
    struct.pack_into("<HH", head, 0x36, phentsize, len(ptypes))
    phdrs = b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in ptypes)
    return bytes(head) + phdrs


def test_only_a_static_elf_is_taken(tmp_path: Path) -> None:
    static, dynamic, text = tmp_path / "static", tmp_path / "dynamic", tmp_path / "text"
    static.write_bytes(elf64(PT_LOAD, PT_LOAD))
    dynamic.write_bytes(elf64(PT_LOAD, PT_INTERP, PT_LOAD))
    text.write_text("#!/bin/sh\n")
    assert is_static_elf(static) is None
    assert "dynamically linked" in (is_static_elf(dynamic) or "")
    assert "not an ELF" in (is_static_elf(text) or "")
    assert find_static_busybox([str(dynamic), str(static)]) == static


def test_without_a_static_busybox_the_reason_starts_with_the_fix(tmp_path: Path) -> None:
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(elf64(PT_INTERP))
    with pytest.raises(HealthImageUnavailable) as err:
        find_static_busybox([str(dynamic), str(tmp_path / "missing")])
    msg = str(err.value)
    assert msg.startswith("fix: `apt-get install busybox-static`"), msg
    assert str(dynamic) in msg and str(tmp_path / "missing") in msg


def test_the_health_root_holds_busybox_its_applets_and_the_mount_points(tmp_path: Path) -> None:
    bb = tmp_path / "busybox"
    bb.write_bytes(elf64(PT_LOAD) + b"payload")
    with tarfile.open(fileobj=io.BytesIO(health_root_tar(bb))) as tar:
        names = {m.name: m for m in tar.getmembers()}
        f = tar.extractfile("bin/busybox")
        assert f is not None and f.read() == bb.read_bytes()
    assert names["bin/busybox"].mode & 0o111
    assert all(names[f"bin/{a}"].linkname == "busybox" for a in APPLETS)
    assert {"tmp", "mesh/inputs", "mesh/outputs", "etc/passwd"} <= set(names)
    assert names["tmp"].mode == 0o1777


def _archive(path: Path, manifest: object, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, body in {"manifest.json": json.dumps(manifest).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def test_an_archives_image_id_is_the_hash_of_the_config_it_names(tmp_path: Path) -> None:
    config = b'{"architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}'
    want = "sha256:" + hashlib.sha256(config).hexdigest()
    for cfg_name in ("abc.json", "blobs/sha256/" + want[7:]):  # legacy and OCI layouts
        arch = _archive(
            tmp_path / "a.tar", [{"Config": cfg_name, "Layers": []}], {cfg_name: config}
        )
        assert archive_image_id(arch) == want
    two = [{"Config": "abc.json"}, {"Config": "abc.json"}]
    for bad in (two, [{"Layers": []}], {"Config": "abc.json"}):
        with pytest.raises(ValueError):
            archive_image_id(_archive(tmp_path / "b.tar", bad, {"abc.json": config}))
    with pytest.raises(ValueError):
        archive_image_id(_archive(tmp_path / "c.tar", [{"Config": "gone.json"}], {}))
    (tmp_path / "d.tar").write_bytes(b"not a tar at all")
    with pytest.raises(ValueError):
        archive_image_id(tmp_path / "d.tar")
