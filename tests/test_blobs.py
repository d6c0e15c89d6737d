"""Blob store on a real directory, and deterministic, safe tar pack/unpack."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from meshd.store.blobs import (
    BlobCorruptError,
    BlobError,
    BlobLimitError,
    BlobNotFoundError,
    BlobParams,
    BlobStore,
    UnsafeArchiveError,
    pack_dir,
    unpack_tar,
)

# ---------------------------------------------------------------- store


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"hello mesh" * 1000
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.has(digest) and store.size(digest) == len(data)
    assert store.get(digest) == data
    assert b"".join(store.iter_chunks(digest)) == data
    assert store.put(data) == digest  # idempotent
    assert list(store.digests()) == [digest]
    assert BlobStore(tmp_path / "blobs").get(digest) == data  # survives a new handle


def test_missing_blob_and_bad_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(BlobNotFoundError):
        store.get("0" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, "", "0" * 64 + "/x"):
        with pytest.raises(BlobError, match="not a sha256"):
            store.get(bad)


def test_corrupt_file_on_disk_is_detected(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"precious result bytes")
    path = store.path_of(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"precious result byteZ")
    with pytest.raises(BlobCorruptError, match="corrupt"):
        store.get(digest)
    with pytest.raises(BlobCorruptError):
        b"".join(store.iter_chunks(digest))
    assert store.put(b"precious result bytes") == digest  # a good copy repairs it
    assert store.get(digest) == b"precious result bytes"


def test_size_limit_refuses_and_stores_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, BlobParams(max_blob_bytes=1000))
    store.put(b"x" * 1000)
    with pytest.raises(BlobLimitError, match="1000-byte limit"):
        store.put(b"y" * 1001)
    with pytest.raises(BlobLimitError):
        store.put_stream(iter([b"z" * 600, b"z" * 600]))
    assert list(store.digests()) == [hashlib.sha256(b"x" * 1000).hexdigest()]
    assert list((tmp_path / "tmp").iterdir()) == []
    digest = store.put(b"q" * 500)
    with pytest.raises(BlobLimitError, match="read limit"):
        store.get(digest, max_bytes=499)


def test_stream_with_wrong_expected_digest_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = [b"part one, ", b"part two"]
    good = hashlib.sha256(b"".join(data)).hexdigest()
    with pytest.raises(BlobCorruptError, match="expected"):
        store.put_stream(iter(data), expected_digest="f" * 64)
    assert not store.has("f" * 64) and not store.has(good)
    assert store.put_stream(iter(data), expected_digest=good) == good


def test_stray_temp_files_are_swept(tmp_path: Path) -> None:
    BlobStore(tmp_path)
    (tmp_path / "tmp" / "half-written").write_bytes(b"partial")
    BlobStore(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []


# ---------------------------------------------------------------- pack


def make_tree(root: Path, order: list[str]) -> None:
    files = {
        "a.txt": b"alpha",
        "sub/b.bin": bytes(range(256)),
        "sub/deep/c": b"",
        "run.sh": b"#!/bin/sh\necho hi\n",
        "\u00e9t\u00e9.txt": b"summer",
    }
    root.mkdir()
    (root / "empty").mkdir()
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])
    os.chmod(root / "run.sh", 0o700)


def test_pack_is_deterministic(tmp_path: Path) -> None:
    names = ["a.txt", "sub/b.bin", "sub/deep/c", "run.sh", "\u00e9t\u00e9.txt"]
    make_tree(tmp_path / "one", names)
    make_tree(tmp_path / "two", list(reversed(names)))
    os.utime(tmp_path / "two" / "a.txt", (1, 1))
    os.chmod(tmp_path / "two" / "a.txt", 0o600)
    first = pack_dir(tmp_path / "one")
    assert pack_dir(tmp_path / "one") == first
    assert hashlib.sha256(pack_dir(tmp_path / "two")).digest() == hashlib.sha256(first).digest()
    (tmp_path / "two" / "a.txt").write_bytes(b"alphA")
    assert pack_dir(tmp_path / "two") != first


def test_pack_then_unpack_round_trips(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", ["a.txt", "sub/b.bin", "sub/deep/c", "run.sh", "\u00e9t\u00e9.txt"])
    data = pack_dir(tmp_path / "src")
    count = unpack_tar(data, tmp_path / "dst")
    assert count == 8  # 5 files, 3 directories
    for rel in ["a.txt", "sub/b.bin", "sub/deep/c", "run.sh", "\u00e9t\u00e9.txt"]:
        assert (tmp_path / "dst" / rel).read_bytes() == (tmp_path / "src" / rel).read_bytes()
    assert (tmp_path / "dst" / "empty").is_dir()
    assert os.stat(tmp_path / "dst" / "run.sh").st_mode & 0o111
    assert not os.stat(tmp_path / "dst" / "a.txt").st_mode & 0o111
    assert pack_dir(tmp_path / "dst") == data


def test_pack_keeps_only_the_named_outputs(tmp_path: Path) -> None:
    """``--output PATH`` (JobSpec.outputs): only those paths come back (issue 12)."""
    src = tmp_path / "src"
    for name in ["keep.txt", "drop.txt", "sub/deep/c", "sub/other", "subx/y"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode())
    names = tarfile.open(fileobj=io.BytesIO(pack_dir(src, only=["keep.txt"]))).getnames()
    assert names == ["keep.txt"]
    data = pack_dir(src, only=["sub/deep", "keep.txt"])
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert names == ["keep.txt", "sub", "sub/deep", "sub/deep/c"]  # not subx/ nor sub/other
    assert pack_dir(src, only=[]) == pack_dir(src)


def test_pack_refuses_symlinks_and_limits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100)
    (src / "g").write_bytes(b"y" * 100)
    with pytest.raises(BlobLimitError, match="bytes"):
        pack_dir(src, max_bytes=150)
    with pytest.raises(BlobLimitError, match="entries"):
        pack_dir(src, max_files=1)
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="link"):
        pack_dir(src)


# ---------------------------------------------------------------- unpack


def evil_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, data


@pytest.mark.parametrize(
    "archive, error, match",
    [
        (evil_tar(member("ok"), member("../escape")), UnsafeArchiveError, "escapes"),
        (evil_tar(member("a/../../escape")), UnsafeArchiveError, "escapes"),
        (evil_tar(member("/etc/cron.d/evil")), UnsafeArchiveError, "absolute"),
        (
            evil_tar(member("link", tarfile.SYMTYPE, linkname="/etc/passwd")),
            UnsafeArchiveError,
            "not a regular",
        ),
        (
            evil_tar(member("hard", tarfile.LNKTYPE, linkname="ok")),
            UnsafeArchiveError,
            "not a regular",
        ),
        (evil_tar(member("dev", tarfile.CHRTYPE)), UnsafeArchiveError, "not a regular"),
        (evil_tar(member("fifo", tarfile.FIFOTYPE)), UnsafeArchiveError, "not a regular"),
        (evil_tar(member("dup"), member("dup")), UnsafeArchiveError, "twice"),
        (evil_tar(member("f"), member("f/under-a-file")), UnsafeArchiveError, "cannot be unpacked"),
        (evil_tar(*[member(f"f{i}") for i in range(11)]), BlobLimitError, "more than 10 entries"),
        (
            evil_tar(member("big", data=b"b" * 600), member("big2", data=b"b" * 600)),
            BlobLimitError,
            "byte limit",
        ),
        (b"this is not a tar archive" * 40, UnsafeArchiveError, "not a valid"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "device",
        "fifo",
        "duplicate",
        "file-as-dir",
        "too-many-files",
        "too-many-bytes",
        "garbage",
    ],
)
def test_unpack_refuses_unsafe_archives_and_leaves_nothing(
    tmp_path: Path, archive: bytes, error: type[Exception], match: str
) -> None:
    outer = tmp_path / "work"
    outer.mkdir()
    with pytest.raises(error, match=match):
        unpack_tar(archive, outer / "dest", max_bytes=1000, max_files=10)
    assert list(outer.iterdir()) == []  # no dest, no partial directory
    assert not (tmp_path / "escape").exists()


def test_unpack_refuses_an_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_bytes(b"mine")
    with pytest.raises(BlobError, match="already exists"):
        unpack_tar(evil_tar(member("keep", data=b"theirs")), tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_bytes() == b"mine"


def test_unpack_bounds_a_lying_size_header(tmp_path: Path) -> None:
    data = bytearray(evil_tar(member("f", data=b"a" * 512)))
    # Claim a huge size in the ustar header (octal, 11 digits + NUL); the data is short.
    header_index = data.index(b"f\x00") // 512 * 512
    data[header_index + 124 : header_index + 136] = b"77777777777\x00"
    chksum = (
        sum(data[header_index : header_index + 148])
        + 8 * 32
        + sum(data[header_index + 156 : header_index + 512])
    )
    data[header_index + 148 : header_index + 156] = f"{chksum:06o}\x00 ".encode()
    with pytest.raises((BlobLimitError, UnsafeArchiveError)):
        unpack_tar(bytes(data), tmp_path / "dest", max_bytes=10_000)
    assert not (tmp_path / "dest").exists()
