"""Job images that travel: served as blobs by the origin and by the workers
that loaded them, fetched, checked and loaded by workers, kept in a bounded
local cache.

Theory of operation
-------------------
*Origin* (:meth:`ImageCache.attach`, called on every submit): when the local
engine has the job's image and the descriptor carries no ``image_blob``, the
image is saved (``docker save``) into the blob store, at most
``CoreParams.max_image_bytes``; the archive's own image id
(:func:`archive_image_id`) must equal the engine's id, so what is pinned is
what a worker will check. While it is saved, its *piece list* is built (the
sha256 of each ``image_piece_bytes`` piece, :class:`~.transfer.PieceHasher`)
and stored as a blob of its own. The descriptor gets ``image_blob`` (id,
digest, size, pieces, piece_bytes), the offer pins the id and carries the
size, and ``Node.may_serve_blob`` lets a worker holding a live run of the
job fetch the archive and its piece list. One archive per
image id is made per daemon run (later submits reuse it while it is stored).

*Worker* (:meth:`ImageCache.ensure`, before a run's inputs are fetched):
nothing to do when the engine has the image under the job's name with the
pinned id. Otherwise, with ``pull_images`` on and a name that pins a digest
(``name@sha256:…``), the engine may pull it; else the archive is fetched
through the blob protocol (from its holders, below) and refused — counted
``image_refused_<reason>`` and logged, the image never loaded — when

- ``size``: it is larger than ``max_image_bytes`` or than the descriptor says
  (the fetch stops as soon as the holder's first range says so);
- ``digest``: its bytes do not hash to the digest (the blob transfer's check);
- ``image_id``: the archive's image id (the sha256 of the config it names)
  is not the pinned id;
- ``load``: the engine refuses it (``docker load`` itself checks each layer
  against the config's diff ids), or what it loaded under the job's name is
  not the pinned id (then it is removed again).

With a piece list (whose pieces are single ranges here), the worker fetches
the piece list first (checked against its pinned digest, exactly one hash
per piece), then the archive's ranges, each checked against its hash on
arrival (a bad one refused and asked of another holder,
:mod:`~meshd.runtime.transfer`); the checked bytes, in order, go both into
the blob store's temporary file (kept to serve) and, through a bounded
:class:`_LoadFeed` (``image_load_buffer_pieces``), into ``docker load``
running in a thread, so the load overlaps the fetch. The stream ends only
after the whole archive's sha256 is checked; a failed fetch breaks it (the
engine refuses a truncated archive). Then the stored archive's image id and
what the job's name names are checked; on any failure the image is removed
and the archive and piece list deleted. Without a piece list (or with
pieces larger than a range) the archive is fetched and checked whole, then
its image id, then it is loaded.

The archive is fetched from the origin and the *holders* the core names
(``FetchInputs.image_holders``: peers whose advert lists the archive), its
ranges spread over them all; a holder that answers it has no such blob is
asked no more in that fetch.

A loaded image is recorded in ``images.json`` in the data dir (id, names,
size, last use, and the archive's digest, size and piece list); the archive
and its piece list stay in the blob store, and this node serves them to any
peer (the piece lists through ``LocalCapabilities.image_pieces``, not advertised) (:meth:`ImageCache.archives`
goes into the advert, ``Advert.image_archives``; the collector keeps it,
:meth:`ImageCache.pinned`). At most ``RuntimeParams.image_archives_max_bytes``
of archives are kept: beyond it those of the least recently used images are
deleted (the images stay). The cache holds at most
``RuntimeParams.image_cache_max_bytes`` of images meshd loaded itself:
beyond it the least recently used are removed, with their archives, never
one a live run uses (``in_use``) nor one meshd did not load (an archive
this node also saved as an origin is only forgotten, never deleted: its jobs
need it). Each use of a cached image refreshes its place. Fetches of one
image id are serialized. ``on_archives`` is called (in the trio thread)
whenever the set of archives kept changes, so the advert follows at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from meshd.config import write_atomic
from meshd.core.jobspec import ImageBlob, JobSpec, piece_list_bytes
from meshd.store.blobs import BlobCorruptError, BlobError, BlobLimitError, BlobStore

from .jobio import bare
from .params import RuntimeParams
from .transfer import BadPiece, PieceHasher, Pieces

log = logging.getLogger("meshd.images")

_MAX_MANIFEST_BYTES = 1 << 20
_MAX_CONFIG_BYTES = 16 << 20
_RP = RuntimeParams()


class ImageRefused(Exception):
    """A travelling image was not loaded; ``code`` is the counted reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"image refused ({code}): {detail}")
        self.code = code


def archive_image_id(path: Path) -> str:
    """The image id a ``docker save`` archive holds: ``sha256:`` and the hash
    of the config its ``manifest.json`` names (legacy and OCI layouts alike).
    Exactly one image per archive; anything else raises ValueError."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            manifest = _member_bytes(tar, "manifest.json", _MAX_MANIFEST_BYTES)
            entries = json.loads(manifest)
            if not isinstance(entries, list) or len(entries) != 1:
                raise ValueError("the archive must hold exactly one image")
            config = entries[0].get("Config") if isinstance(entries[0], dict) else None
            if not isinstance(config, str) or not config:
                raise ValueError("manifest.json names no config")
            body = _member_bytes(tar, config, _MAX_CONFIG_BYTES)
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an image archive: {exc}") from None
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _member_bytes(tar: tarfile.TarFile, name: str, limit: int) -> bytes:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise ValueError(f"the archive has no {name}") from None
    if not info.isfile() or info.size > limit:
        raise ValueError(f"{name} is not a file of at most {limit} bytes")
    f = tar.extractfile(info)
    assert f is not None
    return f.read()


def _blob_digests(blob: ImageBlob) -> tuple[str, ...]:
    """The blobs an image travels as: its archive and its piece list, if any."""
    return (blob.digest,) if blob.pieces is None else (blob.digest, blob.pieces)


class _LoadFeed:
    """Checked pieces on their way from the fetch (:meth:`put`, in the
    writer's thread) to ``docker load`` (iterating, in the loading thread):
    at most ``max_pieces`` wait; ``put`` blocks beyond that. The iteration
    ends when :meth:`finish` says the fetch is complete (after the whole
    archive's check) and raises when it says it failed, so the engine gets
    a truncated archive, which it refuses. Once the loader is gone
    (:meth:`close`), ``put`` raises: the fetch stops."""

    def __init__(self, max_pieces: int) -> None:
        self._max = max(1, max_pieces)
        self._pieces: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._over: bool | None = None  # None: fetching; True: complete; False: failed

    @property
    def aborted(self) -> bool:
        return self._over is False

    def put(self, data: bytes) -> None:
        with self._cond:
            while len(self._pieces) >= self._max and not self._closed:
                self._cond.wait()
            if self._closed:
                raise BlobError("the image load stopped")
            self._pieces.append(data)
            self._cond.notify_all()

    def finish(self, complete: bool) -> None:
        """The fetch is over: complete (and checked), or failed. Never blocks."""
        with self._cond:
            self._over = complete
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._pieces and self._over is None:
                    self._cond.wait()
                if self._over is False:
                    raise BlobError("the archive's fetch failed")
                if not self._pieces:
                    return
                data = self._pieces.popleft()
                self._cond.notify_all()
            yield data


class ImageCache:
    """The images this node serves (as an origin) and loads (as a worker)."""

    def __init__(
        self,
        executor: Any,
        blobs: BlobStore,
        index_path: Path,
        *,
        fetch_blob: Callable[..., Awaitable[None]],
        in_use: Callable[[], set[str]],
        counts: Counter[str],
        max_image_bytes: int,
        cache_max_bytes: int,
        pull_images: bool,
        archives_max_bytes: int = 0,
        on_count: Callable[[str], None] | None = None,
        on_archives: Callable[[], Awaitable[None]] | None = None,
        piece_bytes: int = _RP.image_piece_bytes,
        fetch_piece_max: int = _RP.blob_chunk_bytes,
        load_buffer_pieces: int = _RP.image_load_buffer_pieces,
    ) -> None:
        self.executor = executor
        self.blobs = blobs
        self.index_path = index_path
        self._fetch_blob = fetch_blob
        self._in_use = in_use
        self.counts = counts
        """What happened to images here (``image_loaded``, ``image_refused_<reason>``...)."""
        self._on_count = on_count
        """Told each count too (the daemon's metrics registry, ``meshd_images_total``)."""
        self._on_archives = on_archives
        """Told when the archives kept change (the daemon re-advertises)."""
        self.max_image_bytes = max_image_bytes
        self.cache_max_bytes = cache_max_bytes
        self.archives_max_bytes = archives_max_bytes
        self.pull_images = pull_images
        self.piece_bytes = piece_bytes
        """Piece size of the piece lists of archives saved here (``image_piece_bytes``)."""
        self.fetch_piece_max = fetch_piece_max
        """Largest piece the fetcher asks as one range (its ``blob_chunk_bytes``);
        a descriptor with larger pieces is fetched whole, then checked."""
        self.load_buffer_pieces = load_buffer_pieces
        self._exported: dict[str, ImageBlob] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.index: dict[str, dict[str, Any]] = {}
        """Images meshd loaded itself: id -> {names, size, used}."""
        self._seq = 0
        self._read_index()

    def _count(self, name: str) -> None:
        self.counts[name] += 1
        if self._on_count is not None:
            self._on_count(name)

    @property
    def enabled(self) -> bool:
        """Only a Docker executor saves and loads images."""
        return callable(getattr(self.executor, "load_image", None))

    # ------------------------------------------------------------ origin

    async def attach(self, spec: JobSpec) -> JobSpec:
        """``spec`` with ``image_blob`` set when our engine has its image (and
        it fits ``max_image_bytes``); unchanged otherwise."""
        if spec.image_blob is not None or not self.enabled:
            return spec
        ex = self.executor
        image_id = await trio.to_thread.run_sync(ex.image_id, spec.image)
        if not image_id:
            return spec
        made = self._exported.get(image_id)
        if made is None or not all(self.blobs.has(bare(d)) for d in _blob_digests(made)):
            try:
                made = await trio.to_thread.run_sync(self._export, spec.image, image_id)
            except (BlobLimitError, ValueError, RuntimeError, OSError) as exc:
                self._count("image_export_failed")
                log.warning("image %s will not travel: %s", spec.image, exc)
                return spec
            self._exported[image_id] = made
            self._count("image_exported")
            log.info("image %s (%s) saved for workers: %d bytes", spec.image, image_id, made.size)
        return spec.model_copy(update={"image_blob": made})

    def _export(self, image: str, image_id: str) -> ImageBlob:
        chunks = self.executor.save_image(image)
        hasher = PieceHasher(self.piece_bytes)

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                hasher.update(chunk)
                yield chunk

        try:
            # like an upload: a full store refuses it (the image then does not travel)
            digest = self.blobs.put_stream(
                hashed(), max_bytes=self.max_image_bytes, essential=False
            )
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()
        got = archive_image_id(self.blobs.path_of(digest))
        if got != image_id:
            raise ValueError(f"its archive holds image {got}, the engine says {image_id}")
        pieces = self.blobs.put(hasher.piece_list(), essential=False)
        return ImageBlob(
            id=image_id,
            digest="sha256:" + digest,
            size=self.blobs.size(digest),
            pieces="sha256:" + pieces,
            piece_bytes=self.piece_bytes,
        )

    # ------------------------------------------------------------ worker

    async def ensure(self, origin: str, spec: JobSpec, holders: tuple[str, ...] = ()) -> None:
        """Make the job's pinned image present under its name, or raise
        ImageRefused; its archive comes from ``origin`` and ``holders``."""
        blob = spec.image_blob
        if blob is None or not self.enabled:
            return
        lock = self._locks.setdefault(blob.id, trio.Lock())
        async with lock:
            try:
                await self._ensure(origin, spec, blob, holders)
            except ImageRefused as exc:
                self._count("image_refused_" + exc.code)
                log.warning("job %s: %s", spec.job_id, exc)
                raise
            finally:
                if not lock.statistics().tasks_waiting:
                    self._locks.pop(blob.id, None)

    async def _ensure(
        self, origin: str, spec: JobSpec, blob: ImageBlob, holders: tuple[str, ...]
    ) -> None:
        ex = self.executor
        if await trio.to_thread.run_sync(ex.image_id, spec.image) == blob.id:
            self._touch(blob.id)
            return
        if self.pull_images and "@sha256:" in spec.image:
            if await trio.to_thread.run_sync(ex.pull_image, spec.image) == blob.id:
                self._count("image_pulled")
                return
        if blob.size > self.max_image_bytes:
            raise ImageRefused(
                "size", f"{blob.size} bytes is over max_image_bytes ({self.max_image_bytes})"
            )
        digest = bare(blob.digest)
        sources = [origin, *(h for h in holders if h != origin)]
        stored = self.blobs.has(digest)
        try:
            if self._pieced(blob) and not stored:
                await self._fetch_streaming(sources, spec.image, blob)
            else:
                await self._fetch_whole(sources, blob)
                await trio.to_thread.run_sync(self._check_and_load, spec.image, blob, digest)
        except BaseException:
            self._drop_fetched(blob)
            raise
        self._count("image_loaded")
        log.info("loaded image %s (%s) from %s", spec.image, blob.id, ", ".join(sources))
        size = await trio.to_thread.run_sync(ex.image_size, blob.id) or blob.size
        self._record(blob.id, spec.image, size, blob)
        busy = self._in_use() | {blob.id}  # read here: the core's state is not for threads
        await trio.to_thread.run_sync(self._evict, busy)
        await self._archives_changed()

    def _pieced(self, blob: ImageBlob) -> bool:
        """Whether the archive can travel checked piece by piece, streamed
        into the engine (it has a piece list whose pieces are single ranges)."""
        return blob.piece_bytes is not None and blob.piece_bytes <= self.fetch_piece_max

    async def _fetch_whole(self, sources: list[str], blob: ImageBlob, **kw: Any) -> None:
        """Fetch the archive (checked piece by piece when ``kw`` has them,
        whole in any case); a bad digest or size is an ImageRefused."""
        try:
            await self._fetch_blob(sources, blob.digest, max_bytes=blob.size, **kw)
        except (BlobCorruptError, BadPiece) as exc:
            raise ImageRefused("digest", str(exc)) from None
        except BlobLimitError as exc:
            raise ImageRefused("size", str(exc)) from None

    async def _fetch_pieces(self, sources: list[str], blob: ImageBlob) -> Pieces:
        """The archive's piece list, fetched from its holders (at most the
        size it must have) and checked against the pinned digest."""
        assert blob.pieces is not None and blob.piece_bytes is not None
        want = piece_list_bytes(blob.size, blob.piece_bytes)
        try:
            await self._fetch_blob(sources, blob.pieces, max_bytes=want)
            data = await trio.to_thread.run_sync(self.blobs.get, bare(blob.pieces))
            return Pieces.parse(data, blob.size, blob.piece_bytes)
        except (BlobCorruptError, BlobLimitError, ValueError) as exc:
            raise ImageRefused("digest", f"piece list: {exc}") from None

    async def _fetch_streaming(self, sources: list[str], image: str, blob: ImageBlob) -> None:
        """Fetch the archive with its piece list and feed each checked piece,
        in order, into ``docker load`` while the fetch goes on; the engine
        sees the end of the archive only after its whole sha256 is checked.
        Then the archive's image id and what was loaded are checked."""
        pieces = await self._fetch_pieces(sources, blob)
        ex = self.executor
        had = await trio.to_thread.run_sync(ex.image_id, blob.id)  # under another name
        named = await trio.to_thread.run_sync(ex.image_id, image)  # another id under the name
        feed = _LoadFeed(self.load_buffer_pieces)
        loaded: list[BaseException] = []

        async def load() -> None:
            try:
                await trio.to_thread.run_sync(self._load_stream, feed)
            except ImageRefused as exc:
                loaded.append(exc)

        fetched: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            complete = False
            try:
                await self._fetch_whole(sources, blob, pieces=pieces, on_data=feed.put)
                complete = True
            except Exception as exc:
                fetched = exc
            finally:
                feed.finish(complete)
        try:
            if loaded:
                raise loaded[0]
            if fetched is not None:
                raise fetched
            await trio.to_thread.run_sync(self._check_loaded, image, blob)
        except BaseException:
            with trio.CancelScope(shield=True):  # nothing refused stays loaded
                await trio.to_thread.run_sync(self._unload, image, blob.id, {had, named})
            raise

    def _unload(self, image: str, pinned: str, before: set[str | None]) -> None:
        """Remove what a refused load left: the pinned id and what the job's
        name names now, unless the engine had them before. Blocking."""
        for image_id in {pinned, self.executor.image_id(image)} - before - {None}:
            assert image_id is not None
            why = self.executor.remove_image(image_id)
            if why is not None:
                log.warning("could not remove refused image %s: %s", image_id, why)

    def _load_stream(self, feed: _LoadFeed) -> None:
        """``docker load`` of the bytes ``feed`` yields. Blocking."""
        try:
            self.executor.load_image(iter(feed))
        except Exception as exc:  # the engine's refusal, or the feed's end
            if feed.aborted:  # the fetch failed: that is the reason, not the engine's
                return
            raise ImageRefused("load", f"the engine refused the archive: {exc}") from None
        finally:
            feed.close()

    def _check_loaded(self, image: str, blob: ImageBlob) -> None:
        """After a streamed load: the stored archive's image id and what the
        job's name names now must be the pinned id. Blocking."""
        try:
            got = archive_image_id(self.blobs.path_of(bare(blob.digest)))
        except ValueError as exc:
            raise ImageRefused("image_id", str(exc)) from None
        if got != blob.id:
            raise ImageRefused("image_id", f"archive holds {got}, the job pins {blob.id}")
        loaded = self.executor.image_id(image)
        if loaded != blob.id:
            raise ImageRefused("load", f"{image} is {loaded} after loading, not {blob.id}")

    def _drop_fetched(self, blob: ImageBlob) -> None:
        """A refused or failed fetch keeps nothing: the archive and its piece
        list go (unless this node saved them as an origin). Blocking."""
        for d in _blob_digests(blob):
            if all(d not in _blob_digests(b) for b in self._exported.values()):
                self.blobs.delete(bare(d))

    def _check_and_load(self, image: str, blob: ImageBlob, digest: str) -> None:
        size = self.blobs.size(digest)
        if size != blob.size:
            raise ImageRefused("size", f"archive has {size} bytes, the job says {blob.size}")
        try:
            got = archive_image_id(self.blobs.path_of(digest))
        except ValueError as exc:
            raise ImageRefused("image_id", str(exc)) from None
        if got != blob.id:
            raise ImageRefused("image_id", f"archive holds {got}, the job pins {blob.id}")
        with open(self.blobs.path_of(digest), "rb") as f:
            try:
                self.executor.load_image(f)
            except RuntimeError as exc:
                raise ImageRefused("load", f"the engine refused the archive: {exc}") from None
        loaded = self.executor.image_id(image)
        if loaded != blob.id:
            self.executor.remove_image(blob.id)
            raise ImageRefused("load", f"{image} is {loaded} after loading, not {blob.id}")

    # ------------------------------------------------------------ the cache

    def _read_index(self) -> None:
        try:
            data = json.loads(self.index_path.read_text())
            self.index = {str(k): dict(v) for k, v in data.get("images", {}).items()}
            self._seq = int(data.get("seq", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            self.index, self._seq = {}, 0

    def _write_index(self) -> None:
        body = {"seq": self._seq, "images": self.index}
        write_atomic(self.index_path, json.dumps(body, sort_keys=True).encode(), mode=0o644)

    def _touch(self, image_id: str) -> None:
        entry = self.index.get(image_id)
        if entry is not None:
            self._seq += 1
            entry["used"] = self._seq
            self._write_index()

    def _record(self, image_id: str, name: str, size: int, blob: ImageBlob) -> None:
        self._seq += 1
        entry = self.index.setdefault(image_id, {"names": [], "size": 0, "used": 0})
        entry["names"] = sorted(set(entry["names"]) | {name})
        entry["size"], entry["used"] = int(size), self._seq
        entry["archive"], entry["archive_size"] = blob.digest, int(blob.size)
        if blob.pieces is not None and self.blobs.has(bare(blob.pieces)):
            entry["pieces"] = blob.pieces
        else:
            entry.pop("pieces", None)
        self._write_index()

    def cached_bytes(self) -> int:
        return sum(int(e.get("size", 0)) for e in self.index.values())

    def _kept(self, entry: dict[str, Any]) -> str | None:
        """The bare digest of the archive kept for a cache entry, if stored."""
        d = entry.get("archive")
        if not isinstance(d, str):
            return None
        d = d.removeprefix("sha256:")
        return d if self.blobs.has(d) else None

    def _kept_pieces(self, entry: dict[str, Any]) -> str | None:
        """The bare digest of the piece list kept with an entry's archive, if stored."""
        d = entry.get("pieces")
        if not isinstance(d, str) or self._kept(entry) is None:
            return None
        d = d.removeprefix("sha256:")
        return d if self.blobs.has(d) else None

    def _forget_archive(self, entry: dict[str, Any]) -> None:
        """Stop keeping an entry's archive and its piece list: delete them,
        unless this node saved them as an origin too (its jobs reference
        them). Blocking."""
        mine = {bare(d) for b in self._exported.values() for d in _blob_digests(b)}
        for d in (self._kept_pieces(entry), self._kept(entry)):
            if d is not None and d not in mine:
                self.blobs.delete(d)
        for key in ("archive", "archive_size", "pieces"):
            entry.pop(key, None)

    def _drop_archives(self) -> None:
        """Forget the archives of the least recently used images until those
        kept are within ``archives_max_bytes``. Blocking."""
        kept = 0
        for entry in sorted(self.index.values(), key=lambda e: -int(e.get("used", 0))):
            if self._kept(entry) is None:
                continue
            kept += int(entry.get("archive_size", 0))
            if kept > self.archives_max_bytes:
                self._forget_archive(entry)
                self._count("image_archive_dropped")

    def archives(self) -> tuple[str, ...]:
        """Digests (``sha256:…``) of the archives we keep and serve, most
        recently used first (the advert lists the first ones)."""
        entries = sorted(self.index.values(), key=lambda e: -int(e.get("used", 0)))
        return tuple("sha256:" + d for e in entries if (d := self._kept(e)) is not None)

    def piece_lists(self) -> tuple[str, ...]:
        """Digests (``sha256:…``) of the piece lists of the archives we keep:
        served to any peer with their archive, not advertised (§5.1)."""
        return tuple(
            "sha256:" + d for e in self.index.values() if (d := self._kept_pieces(e)) is not None
        )

    def pinned(self) -> set[str]:
        """Bare digests of the archives we keep and their piece lists (the
        blob collector keeps them)."""
        kept = {d for e in self.index.values() if (d := self._kept(e)) is not None}
        return kept | {bare(d) for d in self.piece_lists()}

    async def _archives_changed(self) -> None:
        if self._on_archives is not None:
            await self._on_archives()

    def _evict(self, busy: set[str]) -> None:
        """Remove least recently used images meshd loaded until the cache is
        within ``cache_max_bytes``; never one named or identified in ``busy``
        (what live runs use, and the image just loaded). Blocking."""
        for image_id, entry in sorted(self.index.items(), key=lambda kv: kv[1].get("used", 0)):
            if self.cached_bytes() <= self.cache_max_bytes:
                break
            if image_id in busy or busy & set(entry.get("names", ())):
                continue
            why = self.executor.remove_image(image_id)
            if why is not None:
                log.warning("could not evict image %s: %s", image_id, why)
                continue
            self._forget_archive(entry)
            del self.index[image_id]
            self._count("image_evicted")
            log.info("evicted image %s (%s)", ",".join(entry.get("names", ())), image_id)
        self._drop_archives()
        self._write_index()
