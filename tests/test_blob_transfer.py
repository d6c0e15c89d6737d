"""Blobs travelling in ranges between real libp2p hosts on loopback
(specs/PROTOCOL.md §5): many ranges, bounded in flight, checked whole,
refused over a bound, and carried on by another holder when one dies."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.core.events import BLOB_PROTOCOL
from meshd.net import MeshHost, NetError, NetParams
from meshd.runtime.transfer import (
    BadPiece,
    BlobTransfer,
    PieceHasher,
    Pieces,
    encode_blob_request,
)
from meshd.store.blobs import BlobCorruptError, BlobLimitError, BlobStore
from meshd.testing.nethosts import LINE, make_host

CHUNK = 64 * 1024
IN_FLIGHT = 3


def _transfer(blobs: BlobStore, host: MeshHost, **kw: Any) -> BlobTransfer:
    async def feed(_inp: object) -> None:
        return None

    return BlobTransfer(
        blobs,
        host,
        may_serve=lambda peer, digest: True,
        feed=feed,
        monotonic_ms=lambda: int(trio.current_time() * 1000),
        requests_per_s=10_000.0,
        request_burst=10_000.0,
        max_peers=16,
        max_concurrent_fetches=4,
        chunk_bytes=kw.pop("chunk_bytes", CHUNK),
        chunks_in_flight=IN_FLIGHT,
        chunk_retries=kw.pop("chunk_retries", 3),
        chunk_timeout_s=10.0,
        retry_pause_s=0.01,
        **kw,
    )


@dataclass
class Holder:
    """A host serving its blob store, counting the ranges it serves."""

    host: MeshHost
    blobs: BlobStore
    transfer: BlobTransfer
    scope: trio.CancelScope
    served: int = 0
    concurrent: int = 0
    most_concurrent: int = 0
    die_after: int | None = None

    async def serve(self, peer: str, data: bytes) -> bytes:
        self.served += 1
        if self.die_after is not None and self.served > self.die_after:
            self.scope.cancel()  # the whole host goes, mid-transfer
            await trio.sleep_forever()
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            await trio.sleep(0.002)  # let the fetcher's other ranges overlap
            return await self.transfer.serve(peer, data)
        finally:
            self.concurrent -= 1


@asynccontextmanager
async def mesh(
    tmp_path: Path, holders: int, params: NetParams = LINE
) -> AsyncIterator[tuple[list[Holder], BlobTransfer]]:
    """``holders`` serving hosts and one fetching host bootstrapped to them."""
    async with trio.open_nursery() as nursery:
        served: list[Holder] = []
        for i in range(holders):
            host = make_host(params)
            scope = trio.CancelScope()

            async def run(
                host: MeshHost = host,
                scope: trio.CancelScope = scope,
                task_status: Any = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with scope:
                    await host.run(task_status=task_status)

            await nursery.start(run)
            blobs = BlobStore(tmp_path / f"holder{i}")
            h = Holder(host, blobs, _transfer(blobs, host), scope)
            host.handle(BLOB_PROTOCOL, h.serve)
            served.append(h)
        fetcher = make_host(params, [h.host.listen_addrs[0] for h in served])
        await nursery.start(fetcher.run)
        yield served, _transfer(BlobStore(tmp_path / "fetcher"), fetcher)
        nursery.cancel_scope.cancel()


def _leftovers(t: BlobTransfer) -> list[Path]:
    return list(t.blobs.digests()) + list((t.blobs.root / "tmp").iterdir())  # type: ignore[operator]


async def test_a_blob_of_many_ranges_travels_whole_with_bounded_ranges_in_flight(
    tmp_path: Path,
) -> None:
    """Far larger than the network's largest response (as an image of
    hundreds of MiB is beside the default 64 MiB)."""
    small = dataclasses.replace(LINE, max_response_bytes=4 * CHUNK)
    data = os.urandom(40 * CHUNK + 123)
    assert len(data) > 10 * small.max_response_bytes
    async with mesh(tmp_path, 1, small) as ([a], fetch):
        digest = a.blobs.put(data)
        await fetch.fetch_from(a.host.peer_id, "sha256:" + digest)
        assert fetch.blobs.get(digest) == data
    assert a.served == 41  # one request per range: the first says the size
    assert 1 < a.most_concurrent <= IN_FLIGHT
    assert list((fetch.blobs.root / "tmp").iterdir()) == []


async def test_a_range_whose_bytes_were_altered_fails_the_whole_check(tmp_path: Path) -> None:
    data = os.urandom(10 * CHUNK)
    async with mesh(tmp_path, 1) as ([a], fetch):
        digest = a.blobs.put(data)
        path = a.blobs.path_of(digest)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:  # one byte of the seventh range, same size
            f.seek(6 * CHUNK + 5)
            f.write(bytes([data[6 * CHUNK + 5] ^ 1]))
        with pytest.raises(BlobCorruptError, match="expected"):
            await fetch.fetch_from(a.host.peer_id, "sha256:" + digest)
    assert _leftovers(fetch) == []


def _pieces(data: bytes, piece_bytes: int = CHUNK) -> Pieces:
    h = PieceHasher(piece_bytes)
    h.update(data)
    return Pieces.parse(h.piece_list(), len(data), piece_bytes)


def _flip(blobs: BlobStore, digest: str, offset: int) -> None:
    """Change one byte of a stored blob in place (a holder serving bad bytes)."""
    path = blobs.path_of(digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def test_a_piece_list_has_one_hash_per_piece_and_nothing_else() -> None:
    data = os.urandom(3 * CHUNK + 7)
    got = _pieces(data)
    assert len(got.hashes) == 4 and got.hashes[3] == hashlib.sha256(data[3 * CHUNK :]).digest()
    fed = PieceHasher(CHUNK)  # fed in uneven chunks: the same list
    for i in range(0, len(data), 1000):
        fed.update(data[i : i + 1000])
    assert fed.piece_list() == b"".join(got.hashes)
    with pytest.raises(ValueError, match="does not fit"):
        Pieces.parse(fed.piece_list()[:-1], len(data), CHUNK)
    with pytest.raises(ValueError, match="does not fit"):
        Pieces.parse(fed.piece_list(), len(data) + CHUNK, CHUNK)


async def test_a_bad_piece_is_refused_on_arrival_and_asked_of_another_holder(
    tmp_path: Path,
) -> None:
    """A holder serving one altered range: the range is refused before its
    bytes go on (``on_data`` only ever sees the blob's own bytes, in order),
    the holder is asked nothing more, and the other holder serves the rest."""
    data = os.urandom(20 * CHUNK + 99)
    async with mesh(tmp_path, 2) as ([bad, good], fetch):
        digest = good.blobs.put(data)
        assert bad.blobs.put(data) == digest
        _flip(bad.blobs, digest, 3 * CHUNK + 5)  # piece 3: asked of `bad` first (odd)
        seen = bytearray()
        await fetch.fetch_from(
            [good.host.peer_id, bad.host.peer_id],
            "sha256:" + digest,
            pieces=_pieces(data),
            on_data=seen.extend,
        )
        assert fetch.blobs.get(digest) == data and bytes(seen) == data
        assert fetch.metrics.blob_pieces_refused._value.get() == 1
        asked_of_bad = bad.served
        assert 1 <= asked_of_bad <= IN_FLIGHT + 1  # pieces 1, 3... in flight then none
        assert good.served == 21 - (asked_of_bad - 1)


async def test_with_only_a_bad_holder_the_fetch_fails_before_the_bad_bytes(
    tmp_path: Path,
) -> None:
    data = os.urandom(12 * CHUNK)
    async with mesh(tmp_path, 1) as ([bad], fetch):
        digest = bad.blobs.put(data)
        _flip(bad.blobs, digest, 5 * CHUNK)
        seen = bytearray()
        with pytest.raises(BadPiece, match="piece 5"):
            await fetch.fetch_from(
                bad.host.peer_id, "sha256:" + digest, pieces=_pieces(data), on_data=seen.extend
            )
        assert bytes(seen) == data[: 5 * CHUNK]  # what went on is the checked prefix
    assert _leftovers(fetch) == []


async def test_a_blob_over_the_bound_is_refused_at_its_first_range(tmp_path: Path) -> None:
    async with mesh(tmp_path, 1) as ([a], fetch):
        digest = a.blobs.put(os.urandom(20 * CHUNK))
        with pytest.raises(BlobLimitError, match="over the"):
            await fetch.fetch_from(a.host.peer_id, "sha256:" + digest, max_bytes=20 * CHUNK - 1)
        assert a.served == 1  # nothing asked beyond the range that told the size
        # The store's own bound applies too.
        small = BlobStore(tmp_path / "small", fetch.blobs.params.__class__(max_blob_bytes=CHUNK))
        tiny = _transfer(small, fetch.host)
        with pytest.raises(BlobLimitError):
            await tiny.fetch_from(a.host.peer_id, "sha256:" + digest)
    assert _leftovers(fetch) == [] and _leftovers(tiny) == []


async def test_a_holder_that_dies_mid_transfer_is_replaced_by_another(tmp_path: Path) -> None:
    data = os.urandom(30 * CHUNK)
    async with mesh(tmp_path, 2) as ([a, b], fetch):
        digest = a.blobs.put(data)
        assert b.blobs.put(data) == digest
        a.die_after = 6
        await fetch.fetch_from([a.host.peer_id, b.host.peer_id], "sha256:" + digest)
        assert fetch.blobs.get(digest) == data
    assert a.served > 1 and b.served > 1  # both served ranges (spread, then b alone)
    assert fetch.retried >= 1


async def test_a_holder_without_the_blob_is_asked_once_and_the_others_serve_it(
    tmp_path: Path,
) -> None:
    """An origin that no longer has an image archive answers ``no blob``: the
    fetch goes on from the peers that have it, asking it nothing more, and
    spreads the ranges over those (specs/PROTOCOL.md §5.1)."""
    data = os.urandom(30 * CHUNK)
    async with mesh(tmp_path, 3) as ([gone, b, c], fetch):
        digest = b.blobs.put(data)
        assert c.blobs.put(data) == digest
        holders = [gone.host.peer_id, b.host.peer_id, c.host.peer_id]
        await fetch.fetch_from(holders, "sha256:" + digest)
        assert fetch.blobs.get(digest) == data
    assert gone.served == 1  # the first range; then it is asked no more
    assert b.served > 5 and c.served > 5 and b.served + c.served == 30


async def test_the_only_holder_dying_mid_transfer_fails_the_fetch_clearly(tmp_path: Path) -> None:
    async with mesh(tmp_path, 1) as ([a], fetch):
        digest = a.blobs.put(os.urandom(30 * CHUNK))
        a.die_after = 4
        with pytest.raises(NetError):
            await fetch.fetch_from(a.host.peer_id, "sha256:" + digest)
    assert _leftovers(fetch) == []


async def test_malformed_and_oversized_range_requests_are_refused(tmp_path: Path) -> None:
    async with mesh(tmp_path, 1) as ([a], fetch):
        digest = a.blobs.put(os.urandom(3 * CHUNK))
        bad = [
            b"sha256:" + digest.encode(),  # the old whole-blob request
            b"sha256:" + digest.encode() + b" -1 10",
            b"sha256:" + digest.encode() + b" 00 10",
            encode_blob_request(digest, 0, CHUNK + 1),
            encode_blob_request(digest, 3 * CHUNK + 1, 10),
        ]
        for request in bad:
            with pytest.raises(NetError, match="bad blob request"):
                await fetch.host.request(a.host.peer_id, BLOB_PROTOCOL, request)
        assert a.transfer.refused["bad_request"] == 4  # the last is past the end
        # A range at the very end is answered with the size and no bytes.
        body = await fetch.host.request(
            a.host.peer_id, BLOB_PROTOCOL, encode_blob_request(digest, 3 * CHUNK, 10)
        )
        assert body == (3 * CHUNK).to_bytes(8, "big")


async def test_a_host_sends_yamux_frames_of_at_most_one_noise_message(tmp_path: Path) -> None:
    """A bulk transfer's frames each go out as one Noise message, not a full
    one and a 29-byte rest (``libp2p_hooks.fit_yamux_frames_to_noise``)."""
    import libp2p.security.noise.io as noise_io
    import libp2p.stream_muxer.yamux.yamux as yamux

    sizes: list[int] = []
    real = noise_io.BaseNoiseMsgReadWriter.write_msg

    async def spy(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        sizes.append(len(msg))
        await real(self, msg, prefix_encoded)

    noise_io.BaseNoiseMsgReadWriter.write_msg = spy  # type: ignore[method-assign]
    try:
        async with mesh(tmp_path, 1) as ([a], fetch):
            digest = a.blobs.put(os.urandom(8 * CHUNK))
            await fetch.fetch_from(a.host.peer_id, "sha256:" + digest)
    finally:
        noise_io.BaseNoiseMsgReadWriter.write_msg = real  # type: ignore[method-assign]
    assert yamux.MAX_MESSAGE_SIZE <= noise_io.MAX_PLAINTEXT_LENGTH
    assert max(sizes) <= noise_io.MAX_PLAINTEXT_LENGTH
    assert sum(1 for n in sizes if n >= 60_000) >= 8  # the blob went in full-size frames
