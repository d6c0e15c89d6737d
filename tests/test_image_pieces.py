"""An image archive travels checked piece by piece and streams into the
engine while it is fetched (specs/PROTOCOL.md §5.1), against a real engine
(``eval "$(tests/docker_env.sh start)"``; skipped without one) and real
libp2p hosts on loopback: the origin's, a holder's and the worker's.

Checked: the origin saves a piece list with the archive and pins it; the
worker's ``docker load`` receives exactly the archive's bytes while a holder
serves a tampered piece (refused on arrival, counted, asked of the origin
instead, the job's image loaded with its pinned id); with only that holder
the image is refused (``image_refused_digest``), the engine received only
the checked pieces before the bad one, nothing is loaded, nothing is kept;
an archive whose pieces check but whose image is not the pinned one is
loaded, refused by the id check after it (``image_refused_image_id``) and
removed again.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.api.client import ApiClient, ApiHttpError
from meshd.core.events import BLOB_PROTOCOL
from meshd.core.jobspec import ImageBlob, JobSpec
from meshd.exec.health_image import find_static_busybox
from meshd.net import MeshHost
from meshd.runtime.images import ImageCache, ImageRefused
from meshd.runtime.jobio import bare
from meshd.runtime.transfer import BlobTransfer, PieceHasher
from meshd.store.blobs import BlobStore
from meshd.testing.cluster import Cluster
from meshd.testing.images import LoadRecorder, import_marker_image, tamper_archive
from meshd.testing.nethosts import FAST, blob_transfer, make_host, wait_until

PIECE = 64 << 10


def _cache(ex: Any, tmp: Path, fetch: Any = None) -> ImageCache:
    return ImageCache(
        ex,
        BlobStore(tmp / "blobs"),
        tmp / "images.json",
        fetch_blob=fetch,
        in_use=set,
        counts=Counter(),
        max_image_bytes=64 << 20,
        cache_max_bytes=1 << 30,
        archives_max_bytes=1 << 30,
        pull_images=False,
        piece_bytes=PIECE,
    )


@asynccontextmanager
async def _hosts(n: int) -> AsyncIterator[list[MeshHost]]:
    """``n`` serving hosts and, last, a fetching host connected to them all."""
    async with trio.open_nursery() as nursery:
        hosts = [make_host(FAST) for _ in range(n)]
        for h in hosts:
            await nursery.start(h.run)
        worker = make_host(FAST, [h.listen_addrs[0] for h in hosts])
        await nursery.start(worker.run)
        await wait_until(lambda: all(h.peer_id in worker.connected_peers() for h in hosts))
        yield [*hosts, worker]
        nursery.cancel_scope.cancel()


def _serve(host: MeshHost, blobs: BlobStore) -> None:
    host.handle(BLOB_PROTOCOL, blob_transfer(blobs, host).serve)


def _plant(blobs: BlobStore, digest: str, data: bytes) -> None:
    """Store ``data`` under ``digest`` as it is (a holder with bad bytes)."""
    path = blobs.path_of(bare(digest))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.docker
async def test_a_tampered_piece_never_reaches_the_engine(
    make_docker_executor: Any, docker_api: Any, tmp_path: Path
) -> None:
    try:
        bb = find_static_busybox(("/bin/busybox", "/usr/bin/busybox"))
    except Exception as exc:
        pytest.skip(f"no static busybox here: {exc}")
    ex = make_docker_executor()
    name = f"meshd/pieces-{secrets.token_hex(4)}:1"
    import_marker_image(docker_api, name, secrets.token_hex(8), bb, payload=os.urandom(1 << 20))
    try:
        origin = _cache(ex, tmp_path / "origin")
        spec = await origin.attach(
            JobSpec(job_id=f"job-{secrets.token_hex(4)}", image=name, command=["true"])
        )
        blob = spec.image_blob
        assert blob is not None and blob.pieces is not None and blob.piece_bytes == PIECE
        archive = origin.blobs.get(bare(blob.digest))
        piece_list = origin.blobs.get(bare(blob.pieces))
        assert len(piece_list) == 32 * -(-blob.size // PIECE) and blob.size > 8 * PIECE
        docker_api.remove_image(name, force=True)

        # the holder: the right piece list, the archive with piece 3 altered
        holder_blobs = BlobStore(tmp_path / "holder" / "blobs")
        holder_blobs.put(piece_list)
        bad = bytearray(archive)
        bad[3 * PIECE + 100] ^= 0xFF
        _plant(holder_blobs, blob.digest, bytes(bad))

        async with _hosts(2) as (o_host, h_host, w_host):
            _serve(o_host, origin.blobs)
            _serve(h_host, holder_blobs)

            async def worker(tag: str) -> tuple[ImageCache, LoadRecorder, BlobTransfer]:
                rec = LoadRecorder(ex)
                store = BlobStore(tmp_path / tag / "blobs")
                fetcher = blob_transfer(store, w_host)
                return _cache(rec, tmp_path / tag, fetcher.fetch_from), rec, fetcher

            # origin and bad holder: the bad piece is asked of the origin instead
            cache, rec, fetcher = await worker("w1")
            await cache.ensure(o_host.peer_id, spec, (h_host.peer_id,))
            assert rec.loads == 1 and bytes(rec.received) == archive
            assert fetcher.metrics.blob_pieces_refused._value.get() == 1
            assert ex.image_id(name) == blob.id and cache.counts["image_loaded"] == 1
            assert cache.piece_lists() == (blob.pieces,)  # kept to serve, with the archive
            docker_api.remove_image(name, force=True)

            # only the bad holder: refused; the engine saw only checked pieces
            cache, rec, fetcher = await worker("w2")
            with pytest.raises(ImageRefused) as refused:
                await cache.ensure(h_host.peer_id, spec)
            assert refused.value.code == "digest" and cache.counts["image_refused_digest"] == 1
            assert (
                len(rec.received) <= 3 * PIECE
                and bytes(rec.received) == archive[: len(rec.received)]
            )
            assert ex.image_id(name) is None
            assert list(cache.blobs.digests()) == [] and cache.archives() == ()

            # an origin pinning the right id with pieces of another image's
            # archive (its config changed): the pieces pass, the load happens,
            # the id check after it refuses, and what was loaded is removed
            other = tamper_archive(archive, "config")
            hasher = PieceHasher(PIECE)
            hasher.update(other)
            liar = BlobStore(tmp_path / "liar" / "blobs")
            lied = ImageBlob(
                id=blob.id,
                digest="sha256:" + liar.put(other),
                size=len(other),
                pieces="sha256:" + liar.put(hasher.piece_list()),
                piece_bytes=PIECE,
            )
            _serve(o_host, liar)
            cache, rec, fetcher = await worker("w3")
            with pytest.raises(ImageRefused) as refused:
                await cache.ensure(o_host.peer_id, spec.model_copy(update={"image_blob": lied}))
            assert refused.value.code == "image_id" and bytes(rec.received) == other
            assert ex.image_id(name) is None and ex.image_id(blob.id) is None
            assert list(cache.blobs.digests()) == []
    finally:
        try:
            docker_api.remove_image(name, force=True)
        except Exception:
            pass


def test_a_piece_list_comes_with_its_piece_size() -> None:
    d = "sha256:" + "a" * 64
    with pytest.raises(ValueError, match="together"):
        ImageBlob(id=d, digest=d, size=10, pieces=d)
    with pytest.raises(ValueError):
        ImageBlob(id=d, digest=d, size=10, pieces=d, piece_bytes=1024)  # under 64 KiB
    assert ImageBlob(id=d, digest=d, size=10, pieces=d, piece_bytes=PIECE).piece_bytes == PIECE


async def test_a_descriptor_naming_a_piece_list_not_on_the_node_is_refused_in_one_line(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 1) as c:
        client = ApiClient.from_data_dir(c.members[0].data_dir)
        up = await trio.to_thread.run_sync(client.upload_blob, b"an archive")
        missing = "sha256:" + "9a" * 32
        image_blob = {"id": "sha256:" + "ab" * 32, "digest": up["digest"], "size": up["size"]}
        spec = {"image": "example/job:1", "command": ["true"], "timeout_s": 30}
        pieced = {**image_blob, "pieces": missing, "piece_bytes": PIECE}
        with pytest.raises(ApiHttpError) as err:
            await trio.to_thread.run_sync(
                lambda: client.submit({**spec, "image_blob": pieced}, queue=True)
            )
        assert (err.value.status, err.value.code) == (400, "missing_input")
        assert err.value.message == (
            f"image_blob.pieces: blob {missing} is not on this node; upload it first"
        )
