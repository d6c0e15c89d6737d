"""Content-addressed blob store (sha256) and deterministic tar pack/unpack.

Rules:
- A blob's name is the lowercase hex sha256 of its bytes. A name is checked
  against ``[0-9a-f]{64}`` before it touches a path, so no name can escape
  the store directory.
- Writes are atomic and durable: bytes go to a temporary file in the store,
  are fsynced, renamed into place, and the directory is fsynced. A crash
  leaves either the whole blob or only a stray temporary file (swept on open).
- Every read re-hashes the bytes; a mismatch raises BlobCorruptError and the
  bytes are never handed out. Putting the right bytes again repairs the blob.
- Every size has a bound (``BlobParams`` and the ``max_*`` arguments); bad
  input gets a clear error and leaves nothing behind.
- The store keeps a running total of its bytes and files (counted on open,
  kept by ``put``/``delete``). With ``max_total_bytes`` set, a write marked
  non-essential (``essential=False``: an upload nobody needs yet) that would
  take the total over it raises BlobStoreFullError; writes the protocol needs
  to finish accepted work (outputs, fetched inputs and results) always go
  through. What is deleted, and when, is the shell's decision
  (``meshd.runtime.diskgc``): the store only counts, lists and deletes.
- A blob may also arrive in pieces, out of order (``writer``, a
  :class:`BlobWriter`: ranges fetched in parallel): they go straight to the
  temporary file, hashed as the contiguous prefix grows, and the blob is
  installed only when whole and matching its digest.
- A blob written again while already stored has its mtime refreshed, so its
  age (``entries``) is the time of its latest write.
- ``pack_dir`` is deterministic: the same tree (names, contents, exec bits)
  gives the same bytes, hence the same digest, on any machine.
- ``unpack_tar`` accepts only what ``pack_dir`` can produce — regular files
  and directories with relative, ``..``-free names — and builds the tree in
  a temporary sibling that is renamed to ``dest`` only when complete.

Layout: ``<root>/sha256/<first 2 hex>/<64 hex>`` and ``<root>/tmp/``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DIGEST_RE = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 1 << 20
DEFAULT_MAX_TAR_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_TAR_FILES = 10_000


class BlobError(Exception):
    """Base of blob-store errors."""


class BlobNotFoundError(BlobError, KeyError):
    """No blob with that digest is stored."""


class BlobCorruptError(BlobError):
    """Stored or received bytes do not hash to their digest."""


class BlobLimitError(BlobError):
    """A size or count bound was exceeded."""


class BlobStoreFullError(BlobLimitError):
    """A non-essential write would take the store over ``max_total_bytes``."""


class UnsafeArchiveError(BlobError):
    """A tar archive (or a directory to pack) holds something not allowed."""


@dataclass(frozen=True)
class BlobParams:
    """Bounds of the blob store."""

    max_blob_bytes: int = 1024 * 1024 * 1024
    """Largest blob accepted by ``put`` / ``put_stream`` (1 GiB)."""
    chunk_bytes: int = CHUNK_BYTES
    """Read/write granularity when streaming."""
    max_total_bytes: int | None = None
    """Cap on the bytes of all blobs for non-essential writes (None: no cap)."""


@dataclass(frozen=True)
class BlobEntry:
    """One stored blob as listed by :meth:`BlobStore.entries`."""

    digest: str
    size: int
    mtime_ms: int
    """Wall-clock time of its latest write."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """``digest`` if it is 64 lowercase hex characters, else BlobError."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise BlobError(f"not a sha256 hex digest: {str(digest)[:80]!r}")
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs on disk under ``root``, named by their sha256."""

    def __init__(self, root: str | os.PathLike[str], params: BlobParams = BlobParams()) -> None:
        self.root = Path(root)
        self.params = params
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for stray in self._tmp.iterdir():  # left by a crash mid-write
            stray.unlink()
        self._lock = threading.Lock()  # puts and deletes run in worker threads
        self.total_bytes = 0
        """Bytes of all stored blobs (counted on open, kept by put/delete)."""
        self.file_count = 0
        """Stored blobs."""
        for entry in self.entries():
            self.total_bytes += entry.size
            self.file_count += 1

    def path_of(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it exists)."""
        check_digest(digest)
        return self._objects / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path_of(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None

    def put(self, data: bytes, *, essential: bool = True) -> str:
        """Store ``data``; return its digest. Durable on return."""
        return self.put_stream([data], essential=essential)

    def put_stream(
        self,
        chunks: Iterable[bytes],
        expected_digest: str | None = None,
        max_bytes: int | None = None,
        *,
        essential: bool = True,
    ) -> str:
        """Store bytes arriving in chunks (e.g. from a peer); return the digest.

        With ``expected_digest`` the bytes must hash to it (BlobCorruptError
        otherwise). More than ``max_bytes`` (default ``max_blob_bytes``) raises
        BlobLimitError. A non-essential write of a new blob that would take
        the store over ``max_total_bytes`` raises BlobStoreFullError. On any
        error nothing is stored.
        """
        with self.writer(expected_digest, max_bytes, essential=essential) as w:
            for chunk in chunks:
                w.write_at(w.size, chunk)
            return w.commit()

    def writer(
        self,
        expected_digest: str | None = None,
        max_bytes: int | None = None,
        *,
        essential: bool = True,
        on_data: Callable[[bytes], None] | None = None,
    ) -> BlobWriter:
        """A :class:`BlobWriter` for a blob arriving in pieces (same rules as
        :meth:`put_stream`); use it as a context manager so an unfinished
        blob leaves nothing behind. ``on_data`` is given the bytes of the
        contiguous prefix as it grows, in order (see :class:`BlobWriter`)."""
        if expected_digest is not None:
            check_digest(expected_digest)
        limit = self.params.max_blob_bytes if max_bytes is None else max_bytes
        return BlobWriter(self, expected_digest, limit, essential, on_data)

    def _install(self, tmp: Path, digest: str, size: int, essential: bool) -> None:
        final = self.path_of(digest)
        intact = final.is_file() and self._hashes_to(final, digest)
        with self._lock:  # the refresh and a collector's delete do not interleave
            if intact:
                try:
                    os.utime(final)  # already stored intact: it is young again
                    return
                except FileNotFoundError:
                    pass  # deleted meanwhile: install it again (as a corrupt copy is)
            try:
                old = final.stat().st_size
            except FileNotFoundError:
                old = None
            cap = self.params.max_total_bytes
            grows = size - (old or 0)
            if not essential and cap is not None and self.total_bytes + grows > cap:
                raise BlobStoreFullError(
                    f"blob store is full: {self.total_bytes} of {cap} bytes used, "
                    f"a {size}-byte blob does not fit (unreferenced blobs are collected "
                    "over time; raise blob_store_max_bytes to allow more)"
                )
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            self.total_bytes += grows
            self.file_count += old is None
        _fsync_dir(final.parent)
        _fsync_dir(self._objects)

    def _hashes_to(self, path: Path, digest: str) -> bool:
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(self.params.chunk_bytes):
                hasher.update(chunk)
        return hasher.hexdigest() == digest

    def get(self, digest: str, max_bytes: int | None = None) -> bytes:
        """The blob's bytes, re-hashed; BlobCorruptError if they do not match."""
        path = self.path_of(digest)
        limit = self.params.max_blob_bytes if max_bytes is None else max_bytes
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None
        if len(data) > limit:
            raise BlobLimitError(f"blob {digest} is over the {limit}-byte read limit")
        actual = sha256_hex(data)
        if actual != digest:
            raise BlobCorruptError(f"blob {digest} on disk hashes to {actual}: corrupt")
        return data

    def read_range(self, digest: str, offset: int, length: int) -> tuple[int, bytes]:
        """The blob's size and its bytes ``[offset, offset + length)`` (fewer
        at its end), unchecked: a range cannot be checked against the digest,
        so its receiver hashes the whole. BlobError if ``offset`` is past the
        end, BlobNotFoundError if there is no such blob."""
        try:
            fd = os.open(self.path_of(digest), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None
        try:
            size = os.fstat(fd).st_size
            if not 0 <= offset <= size or length < 0:
                raise BlobError(f"range {offset}+{length} is outside the {size}-byte blob")
            return size, os.pread(fd, min(length, size - offset), offset)
        finally:
            os.close(fd)

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        """Stream a blob (for sending). The digest is checked at the end:
        a corrupt blob raises BlobCorruptError after its last chunk, so the
        receiver, which hashes too, must discard what it got."""
        hasher = hashlib.sha256()
        try:
            f = open(self.path_of(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None
        with f:
            while chunk := f.read(self.params.chunk_bytes):
                hasher.update(chunk)
                yield chunk
        if hasher.hexdigest() != digest:
            raise BlobCorruptError(f"blob {digest} on disk is corrupt")

    def delete(self, digest: str, *, unless_written_after_ms: int | None = None) -> bool:
        """Remove a blob; True if it existed and was removed. With
        ``unless_written_after_ms``, a blob written again after that time (its
        mtime moved on since it was listed) is kept."""
        path = self.path_of(digest)
        with self._lock:
            try:
                st = path.stat()
                if (
                    unless_written_after_ms is not None
                    and st.st_mtime_ns // 1_000_000 > unless_written_after_ms
                ):
                    return False
                size = st.st_size
                path.unlink()
            except FileNotFoundError:
                return False
            self.total_bytes -= size
            self.file_count -= 1
        _fsync_dir(path.parent)
        return True

    def entries(self) -> Iterator[BlobEntry]:
        """Every stored blob with its size and the time of its latest write
        (unchecked), in digest order. A blob deleted meanwhile is skipped."""
        for sub in sorted(self._objects.iterdir()):
            for blob in sorted(sub.iterdir()):
                if not DIGEST_RE.fullmatch(blob.name):
                    continue
                try:
                    st = blob.stat()
                except FileNotFoundError:
                    continue
                yield BlobEntry(blob.name, st.st_size, st.st_mtime_ns // 1_000_000)

    def digests(self) -> Iterator[str]:
        """Every stored digest (unchecked), in sorted order."""
        for sub in sorted(self._objects.iterdir()):
            for blob in sorted(sub.iterdir()):
                if DIGEST_RE.fullmatch(blob.name):
                    yield blob.name


class BlobWriter:
    """One blob arriving in pieces, perhaps out of order (ranges fetched in
    parallel), straight into a temporary file of its store.

    :meth:`write_at` puts a piece at its offset; the sha256 runs over the
    contiguous prefix as it grows, so a piece that arrives ahead of a gap is
    held in memory until the gap is filled (the caller bounds how far ahead
    it asks). More than ``max_bytes`` in all raises BlobLimitError at once.
    ``on_data``, if given, receives each piece as it joins the prefix, in
    order and in the writing thread (e.g. to stream checked bytes on; it may
    block, and what it raises fails that write).
    :meth:`commit` checks that nothing is missing, fsyncs, checks the digest
    and installs the blob as :meth:`BlobStore.put_stream` does. Writes may
    come from several threads (a lock orders them). Leaving the context
    without a commit removes the temporary file.
    """

    def __init__(
        self,
        store: BlobStore,
        expected: str | None,
        max_bytes: int,
        essential: bool,
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        self._store = store
        self._expected = expected
        self.max_bytes = max_bytes
        self._essential = essential
        fd, name = tempfile.mkstemp(dir=store._tmp)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hasher = hashlib.sha256()
        self.size = 0
        """Bytes of the contiguous prefix written and hashed so far."""
        self._ahead: dict[int, bytes] = {}  # offset -> piece beyond a gap
        self._on_data = on_data
        self._lock = threading.Lock()

    def write_at(self, offset: int, data: bytes) -> None:
        """Put ``data`` at ``offset``. A piece overlapping what is written,
        or reaching past ``max_bytes``, raises BlobLimitError (nothing is
        written then)."""
        end = offset + len(data)
        if end > self.max_bytes:
            raise BlobLimitError(f"blob is over the {self.max_bytes}-byte limit")
        with self._lock:
            if offset < self.size or offset in self._ahead:
                raise BlobLimitError(f"a piece at offset {offset} was already written")
            self._ahead[offset] = data
            while (piece := self._ahead.pop(self.size, None)) is not None:
                self._hasher.update(piece)
                self._file.write(piece)
                self.size += len(piece)
                if self._on_data is not None:
                    self._on_data(piece)

    def commit(self) -> str:
        """Install the blob; its digest. BlobError if a piece is missing,
        BlobCorruptError if the bytes do not hash to the expected digest."""
        with self._lock:
            if self._ahead:
                raise BlobError(f"blob has a gap at offset {self.size}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            digest = self._hasher.hexdigest()
            if self._expected is not None and digest != self._expected:
                raise BlobCorruptError(
                    f"received bytes hash to {digest}, expected {self._expected}"
                )
            self._store._install(self._tmp, digest, self.size, self._essential)
            return digest

    def abort(self) -> None:
        """Drop what was written (idempotent; after a commit, a no-op)."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


# ----------------------------------------------------------------------------
# Deterministic tar


def _mode_for(is_dir: bool, st_mode: int) -> int:
    if is_dir or st_mode & 0o111:
        return 0o755
    return 0o644


def _tarinfo(name: str, *, is_dir: bool, size: int, st_mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = _mode_for(is_dir, st_mode)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _walk(root: Path, max_files: int) -> list[tuple[str, Path, os.stat_result]]:
    """(relative posix name, path, lstat) of every entry under root, sorted by name."""
    found: list[tuple[str, Path, os.stat_result]] = []
    stack = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                if len(found) >= max_files:
                    raise BlobLimitError(f"{root} holds more than {max_files} entries")
                name = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                found.append((name, Path(entry.path), st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((name + "/", Path(entry.path)))
    found.sort(key=lambda e: e[0].encode("utf-8", "surrogateescape"))
    return found


def _selected(name: str, only: Sequence[str]) -> bool:
    """Whether entry ``name`` is one of the ``only`` paths, inside one, or a
    directory on the way to one."""
    for p in only:
        p = p.strip("/")
        if name == p or name.startswith(p + "/") or p.startswith(name + "/"):
            return True
    return False


def pack_dir(
    path: str | os.PathLike[str],
    max_bytes: int = DEFAULT_MAX_TAR_BYTES,
    max_files: int = DEFAULT_MAX_TAR_FILES,
    only: Sequence[str] = (),
) -> bytes:
    """A deterministic uncompressed tar (PAX) of the tree under ``path``.

    ``only``: relative paths to keep (a file, or a directory with everything
    under it, and the directories leading to them); empty keeps everything.

    Entries are sorted by path; mtime 0, uid/gid 0, no owner names, mode 0o755
    for directories and executables, 0o644 otherwise. Symlinks and special
    files raise UnsafeArchiveError; more than ``max_files`` entries or
    ``max_bytes`` of file content raises BlobLimitError.
    """
    root = Path(path)
    if not root.is_dir():
        raise BlobError(f"{root} is not a directory")
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    total = 0
    for name, entry_path, st in _walk(root, max_files):
        if only and not _selected(name, only):
            continue
        if stat.S_ISDIR(st.st_mode):
            entries.append((_tarinfo(name, is_dir=True, size=0, st_mode=st.st_mode), None))
            continue
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeArchiveError(f"{entry_path} is not a regular file or directory")
        if total + st.st_size > max_bytes:
            raise BlobLimitError(f"{root} holds more than {max_bytes} bytes of files")
        with open(entry_path, "rb") as f:
            data = f.read(max_bytes - total + 1)
        total += len(data)
        if total > max_bytes:
            raise BlobLimitError(f"{root} holds more than {max_bytes} bytes of files")
        entries.append((_tarinfo(name, is_dir=False, size=len(data), st_mode=st.st_mode), data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for info, payload in entries:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _safe_member_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name or name.startswith("/") or "\\" in name:
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute or invalid path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if not parts or any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"archive member {name!r} escapes the destination")
    return PurePosixPath(*parts)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tmp: Path, budget: int) -> int:
    """Write one checked member under ``tmp``; return the file bytes written."""
    rel = _safe_member_name(member.name)
    target = tmp.joinpath(*rel.parts)
    if member.isdir():
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        return 0
    if not member.isreg():
        raise UnsafeArchiveError(
            f"archive member {member.name!r} is not a regular file or directory"
        )
    if member.size > budget:
        raise BlobLimitError(f"archive content is over the byte limit at {member.name!r}")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    mode = 0o755 if member.mode & 0o111 else 0o644
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise UnsafeArchiveError(f"archive member {member.name!r} appears twice") from None
    source = tar.extractfile(member)
    assert source is not None
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(min(CHUNK_BYTES, budget - written + 1)):
            written += len(chunk)
            if written > budget:
                raise BlobLimitError(f"archive content is over the byte limit at {member.name!r}")
            out.write(chunk)
    return written


def unpack_tar(
    data: bytes,
    dest: str | os.PathLike[str],
    max_bytes: int = DEFAULT_MAX_TAR_BYTES,
    max_files: int = DEFAULT_MAX_TAR_FILES,
) -> int:
    """Unpack an uncompressed tar into the new directory ``dest``; return entries.

    Only regular files and directories with relative names free of ``..`` are
    accepted (UnsafeArchiveError otherwise), at most ``max_files`` entries and
    ``max_bytes`` of file content (BlobLimitError). ``dest`` must not exist;
    the tree is built beside it and renamed into place only when complete, so
    on error nothing is left behind.
    """
    target = Path(dest)
    if target.exists() or target.is_symlink():
        raise BlobError(f"unpack destination {target} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        count = 0
        budget = max_bytes
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                while (member := tar.next()) is not None:
                    count += 1
                    if count > max_files:
                        raise BlobLimitError(f"archive holds more than {max_files} entries")
                    budget -= _extract_member(tar, member, tmp, budget)
        except tarfile.TarError as exc:
            raise UnsafeArchiveError(f"not a valid uncompressed tar archive: {exc}") from None
        except OSError as exc:  # e.g. a member nested under a file member
            raise UnsafeArchiveError(f"archive cannot be unpacked: {exc}") from None
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count
