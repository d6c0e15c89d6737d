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
what a worker will check. The descriptor gets ``image_blob`` (id, digest,
size), the offer pins the id and carries the size, and ``Node.may_serve_blob``
lets a worker holding a live run of the job fetch the blob. One archive per
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

The archive is fetched from the origin and the *holders* the core names
(``FetchInputs.image_holders``: peers whose advert lists the archive), its
ranges spread over them all; a holder that answers it has no such blob is
asked no more in that fetch.

A loaded image is recorded in ``images.json`` in the data dir (id, names,
size, last use, and the archive's digest and size); the archive stays in the
blob store, and this node serves it to any peer (:meth:`ImageCache.archives`
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
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from meshd.config import write_atomic
from meshd.core.jobspec import ImageBlob, JobSpec
from meshd.store.blobs import BlobCorruptError, BlobLimitError, BlobStore

from .jobio import bare

log = logging.getLogger("meshd.images")

_MAX_MANIFEST_BYTES = 1 << 20
_MAX_CONFIG_BYTES = 16 << 20


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
        if made is None or not self.blobs.has(made.digest.removeprefix("sha256:")):
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
        try:
            # like an upload: a full store refuses it (the image then does not travel)
            digest = self.blobs.put_stream(chunks, max_bytes=self.max_image_bytes, essential=False)
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()
        got = archive_image_id(self.blobs.path_of(digest))
        if got != image_id:
            raise ValueError(f"its archive holds image {got}, the engine says {image_id}")
        return ImageBlob(id=image_id, digest="sha256:" + digest, size=self.blobs.size(digest))

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
        digest = blob.digest.removeprefix("sha256:")
        sources = [origin, *(h for h in holders if h != origin)]
        try:
            await self._fetch_blob(sources, blob.digest, max_bytes=blob.size)
        except BlobCorruptError as exc:
            raise ImageRefused("digest", str(exc)) from None
        except BlobLimitError as exc:
            raise ImageRefused("size", str(exc)) from None
        try:
            await trio.to_thread.run_sync(self._check_and_load, spec.image, blob, digest)
        except BaseException:
            self.blobs.delete(digest)
            raise
        self._count("image_loaded")
        log.info("loaded image %s (%s) from %s", spec.image, blob.id, ", ".join(sources))
        size = await trio.to_thread.run_sync(ex.image_size, blob.id) or blob.size
        self._record(blob.id, spec.image, size, blob)
        busy = self._in_use() | {blob.id}  # read here: the core's state is not for threads
        await trio.to_thread.run_sync(self._evict, busy)
        await self._archives_changed()

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

    def _forget_archive(self, entry: dict[str, Any]) -> None:
        """Stop keeping an entry's archive: delete it, unless this node saved
        it as an origin too (its jobs reference it). Blocking."""
        d = self._kept(entry)
        if d is not None and all(bare(b.digest) != d for b in self._exported.values()):
            self.blobs.delete(d)
        entry.pop("archive", None)
        entry.pop("archive_size", None)

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

    def pinned(self) -> set[str]:
        """Bare digests of the archives we keep (the blob collector keeps them)."""
        return {d for e in self.index.values() if (d := self._kept(e)) is not None}

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
