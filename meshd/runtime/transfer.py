"""Blobs between peers: serving ranges of our blobs, fetching theirs in ranges.

Theory of operation
-------------------
A blob travels in ranges on ``BLOB_PROTOCOL`` (specs/PROTOCOL.md §5): each
request names a digest, an offset and a length of at most
``blob_chunk_bytes``; the answer is the blob's total size (8 bytes, big
endian) and the bytes of that range. :meth:`BlobTransfer.serve` answers a
range only

1. within the peer's request budget: a token bucket per peer,
   ``blob_requests_per_s`` with bursts of ``blob_request_burst``
   (``RuntimeParams``), charged before any look-up; beyond it the request is
   refused as busy (counted ``meshd_blob_requests_refused_total{reason="rate"}``);
2. if the request is well formed (counted ``{reason="bad_request"}``);
3. if the core says the peer is entitled to the blob
   (``Node.may_serve_blob``: a worker holding a run of our job that has it as
   input, the origin of a run whose output it is). A blob the peer may not
   have is answered exactly like a missing one (counted
   ``meshd_blob_requests_refused_total{reason="not_entitled"}``).

Each range served is counted (``meshd_blob_ranges_served_total``,
``meshd_blob_bytes_served_total``).

:meth:`BlobTransfer.fetch_from` fetches a blob into the local store from one
or more holders: the first range says the size (over the caller's or the
store's bound: refused before anything more is asked); then up to
``blob_chunks_in_flight`` ranges travel at once, spread over the holders,
each written straight into a :class:`~meshd.store.blobs.BlobWriter` (a
temporary file, hashed in order), no range asked more than
``blob_chunks_in_flight`` ranges beyond the hashed prefix, so at most that
many ranges sit in memory. A range that fails (an error, a short or
inconsistent answer, a holder gone) is asked again, of the next holder (at
once; after ``blob_retry_pause_s`` when it is the same holder), at most
``blob_chunk_retries`` times. A holder found unreachable, or that answers
it has no such blob, is asked nothing more in that fetch (while another is
left). The sha256 of the whole is checked before
the blob is installed; on any failure nothing is stored.

Relays (specs/NETWORK.md "Large transfers and relays"): a relay resets a
circuit at its byte or time limit, so a blob larger than one range prefers a
direct connection. When after the first range every holder is reached only
through a relay, the fetch waits up to ``blob_direct_wait_s`` (when this
host punches holes, ``NetParams.hole_punching``) for one of them to become direct (DCUtR's hole punch runs on every relayed connection;
counted ``meshd_blob_direct_waits_total{outcome}``); holders reached directly
are then the only ones asked. Over a relay one range is asked at a time. A
range lost with the relayed connection it travelled on is a *relay cut*:
counted (``meshd_blob_relay_cuts_total``), logged once per fetch at WARNING;
the range is asked again once the holder is reached again (a new circuit,
within ``blob_relay_reconnect_s``), so a blob crosses a relay range by range
over as many circuits as it needs; a fetch that runs out of retries fails
with an error that names the cut — never a short blob (the length checks
and the sha256 above).

Given the blob's piece list (:class:`Pieces`, an image archive's, checked
against its pinned digest by the caller), each range is one piece and is
checked against its hash as it arrives: a range that does not match is
refused (counted ``meshd_blob_pieces_refused_total``), its holder is asked
nothing more in that fetch, and the range is asked of the next holder. The
writer's ``on_data`` then sees only checked bytes, in order, while the fetch
goes on (the image cache streams them into ``docker load``). At most
``max_concurrent_fetches`` blobs are fetched at once;
:meth:`BlobTransfer.fetch` carries out the core's ``FetchBlob`` and reports
the outcome as ``BlobFetched``;
:meth:`BlobTransfer.fetch_log` carries out ``FetchLog`` (a run's stored log:
``log_fetch_attempts`` tries, 1 s, 2 s, ... apart; no outcome goes back, a
log that never arrives is counted in ``log_fetch_failures``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from meshd.core.events import BLOB_PROTOCOL, MAX_ERROR_CHARS, BlobFetched, FetchBlob, FetchLog
from meshd.core.jobspec import PIECE_HASH_BYTES, piece_list_bytes
from meshd.core.ratelimit import PeerBuckets
from meshd.net.errors import (
    NetError,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    StreamBroken,
)
from meshd.net.host import MeshHost
from meshd.store.blobs import BlobError, BlobLimitError, BlobNotFoundError, BlobStore, BlobWriter

from .jobio import bare
from .metrics import Metrics, by_label

log = logging.getLogger("meshd.transfer")

_REQUEST_RE = re.compile(rb"sha256:([0-9a-f]{64}) (0|[1-9][0-9]{0,18}) ([1-9][0-9]{0,18})")
_SIZE = struct.Struct(">Q")
_NO_BLOB = "no blob "
"""How an answer says the holder has no such blob (or will not serve it)."""
RELAYED_FIRST_RANGE_BYTES = 64 * 1024
"""The first range asked of holders reached only through a relay, when the
fetch may wait for a direct connection: enough to learn the blob's size."""
DIRECT_POLL_S = 0.1
"""How often a fetch waiting for a direct connection looks again."""
SIZE_HEADER_BYTES = _SIZE.size
"""Bytes before a range's data in an answer: the blob's size, big endian."""


def encode_blob_request(digest: str, offset: int, length: int) -> bytes:
    """The request for ``length`` bytes of blob ``digest`` from ``offset``."""
    return f"sha256:{bare(digest)} {offset} {length}".encode("ascii")


def decode_blob_request(data: bytes) -> tuple[str, int, int]:
    """(bare digest, offset, length) of a request; ValueError if malformed."""
    m = _REQUEST_RE.fullmatch(data)
    if m is None:
        raise ValueError("expected 'sha256:<64 hex> <offset> <length>'")
    return m.group(1).decode("ascii"), int(m.group(2)), int(m.group(3))


class BadRange(Exception):
    """A holder's answer to a range request does not fit the request."""


class RelayCut(PeerUnreachable):
    """A range was lost with the relayed connection it travelled on (a relay
    resets a circuit at its byte or time limit)."""


class BadPiece(BadRange):
    """A holder's range does not hash to its piece's entry in the piece list."""


@dataclass(frozen=True)
class Pieces:
    """A blob's piece list, checked against its pinned digest: the sha256 of
    each ``piece_bytes`` piece, in order (specs/PROTOCOL.md §5.1)."""

    size: int
    piece_bytes: int
    hashes: tuple[bytes, ...]

    @classmethod
    def parse(cls, data: bytes, size: int, piece_bytes: int) -> Pieces:
        """The piece list of a ``size``-byte blob from its bytes; ValueError
        when it has not exactly one hash per piece."""
        if len(data) != piece_list_bytes(size, piece_bytes):
            raise ValueError(
                f"a piece list of {len(data)} bytes does not fit a {size}-byte "
                f"archive in {piece_bytes}-byte pieces"
            )
        n = PIECE_HASH_BYTES
        return cls(size, piece_bytes, tuple(data[i : i + n] for i in range(0, len(data), n)))


class PieceHasher:
    """Builds a piece list from bytes fed in order: the raw sha256 of each
    ``piece_bytes`` piece (the last one shorter)."""

    def __init__(self, piece_bytes: int) -> None:
        if piece_bytes < 1:
            raise ValueError("piece_bytes must be >= 1")
        self.piece_bytes = piece_bytes
        self._h = hashlib.sha256()
        self._filled = 0
        self._done: list[bytes] = []

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.piece_bytes - self._filled)
            self._h.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.piece_bytes:
                self._done.append(self._h.digest())
                self._h, self._filled = hashlib.sha256(), 0

    def piece_list(self) -> bytes:
        """The piece list of everything fed so far."""
        tail = [self._h.digest()] if self._filled else []
        return b"".join(self._done + tail)


class BlobTransfer:
    """The blob protocol of one daemon: its server side and its fetches."""

    def __init__(
        self,
        blobs: BlobStore,
        host: MeshHost,
        *,
        may_serve: Callable[[str, str], bool],
        feed: Callable[[Any], Awaitable[None]],
        monotonic_ms: Callable[[], int],
        requests_per_s: float,
        request_burst: float,
        max_peers: int,
        max_concurrent_fetches: int,
        chunk_bytes: int,
        chunks_in_flight: int,
        chunk_retries: int,
        chunk_timeout_s: float,
        retry_pause_s: float,
        direct_wait_s: float = 0.0,
        relay_reconnect_s: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        if chunk_bytes < 1 or chunks_in_flight < 1 or chunk_retries < 0:
            raise ValueError("blob transfer needs chunk_bytes, chunks_in_flight >= 1")
        self.blobs = blobs
        self.host = host
        self._may_serve = may_serve
        self._feed = feed
        self._monotonic_ms = monotonic_ms
        self._bucket = PeerBuckets(requests_per_s, request_burst, max_peers)
        self._fetch_limit = trio.Semaphore(max_concurrent_fetches)
        self.chunk_bytes = chunk_bytes
        self.chunks_in_flight = chunks_in_flight
        self.chunk_retries = chunk_retries
        self._timeout_s = chunk_timeout_s
        self._retry_pause_s = retry_pause_s
        self.direct_wait_s = direct_wait_s
        """Longest wait for a direct connection before a blob of more than
        one range travels over a relay (``blob_direct_wait_s``)."""
        self.relay_reconnect_s = relay_reconnect_s
        """Longest wait, after a relay cut, for the holder to be reached
        again before the range is asked again (``blob_relay_reconnect_s``)."""
        self.metrics = metrics if metrics is not None else Metrics()
        self.log_fetch_failures = 0
        """Stored run logs that could not be fetched (after every try)."""
        self.retried = 0
        """Ranges asked again after a failure (of this node's fetches)."""

    @property
    def refused(self) -> Counter[str]:
        """Requests refused, by reason (``rate``, ``bad_request``,
        ``not_entitled``), from the registry."""
        return by_label(self.metrics.blob_refused, "reason")

    # ----------------------------------------------------------------- serving

    async def serve(self, from_peer: str, data: bytes) -> bytes:
        """The ``BLOB_PROTOCOL`` handler: the blob's size and the range asked
        for, or a ``LookupError`` the peer receives as an error."""
        if not self._bucket.take(from_peer, self._monotonic_ms()):
            self.metrics.blob_refused.labels(reason="rate").inc()
            raise LookupError("busy: too many blob requests; retry later")
        try:
            digest, offset, length = decode_blob_request(data)
        except ValueError as exc:
            self.metrics.blob_refused.labels(reason="bad_request").inc()
            raise LookupError(f"bad blob request: {exc}") from None
        if not self._may_serve(from_peer, digest):
            self.metrics.blob_refused.labels(reason="not_entitled").inc()
            raise LookupError(f"{_NO_BLOB}{digest[:80]}")
        if length > self.chunk_bytes:
            self.metrics.blob_refused.labels(reason="bad_request").inc()
            raise LookupError(f"bad blob request: length {length} is over {self.chunk_bytes}")
        try:
            size, body = await trio.to_thread.run_sync(
                self.blobs.read_range, digest, offset, length
            )
        except BlobNotFoundError:
            raise LookupError(f"{_NO_BLOB}{digest}") from None
        except (BlobError, OSError) as exc:
            raise LookupError(f"bad blob request: {exc}") from None
        self.metrics.blob_served.inc()
        self.metrics.blob_served_bytes.inc(len(body))
        return _SIZE.pack(size) + body

    # ---------------------------------------------------------------- fetching

    async def fetch_from(
        self,
        peers: str | Sequence[str],
        digest: str,
        *,
        max_bytes: int | None = None,
        pieces: Pieces | None = None,
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        """Fetch a blob from its holders (one peer id or several) into the
        local store, sha256-checked. A blob over ``max_bytes`` (default: the
        store's ``max_blob_bytes``) raises BlobLimitError; bytes that do not
        hash to ``digest`` BlobCorruptError; a range no holder delivered
        within its retries the last error (a NetError or BadRange).

        With ``pieces`` each range is one piece, checked against its hash on
        arrival (a bad one is refused, :class:`BadPiece`, and asked of the
        next holder); ``on_data`` gets the bytes in order as they join the
        contiguous prefix (so, with ``pieces``, only checked bytes), in a
        worker thread. A blob already stored is not fetched (``on_data`` is
        then never called)."""
        holders = [peers] if isinstance(peers, str) else list(peers)
        if not holders:
            raise ValueError("a blob fetch needs at least one holder")
        if pieces is not None and pieces.piece_bytes > self.chunk_bytes:
            raise ValueError(f"pieces of {pieces.piece_bytes} bytes are over blob_chunk_bytes")
        key = bare(digest)
        if self.blobs.has(key):
            return
        async with self._fetch_limit:
            with self.blobs.writer(key, max_bytes, on_data=on_data) as writer:
                await _Fetch(self, holders, key, writer, pieces).run()
                await trio.to_thread.run_sync(writer.commit)

    async def fetch_log(self, eff: FetchLog, attempts: int, stored: Callable[[], None]) -> None:
        """Carry out ``FetchLog``: up to ``attempts`` tries; ``stored()`` once it is here."""
        for i in range(max(1, attempts)):
            if i:
                await trio.sleep(float(i))
            try:
                await self.fetch_from(eff.from_peer, eff.digest)
            except Exception:
                continue
            stored()
            return
        self.log_fetch_failures += 1

    async def fetch(self, eff: FetchBlob) -> None:
        """Carry out ``FetchBlob``: the outcome comes back as ``BlobFetched``."""
        try:
            await self.fetch_from(eff.from_peer, eff.digest)
            inp = BlobFetched(eff.job_id, eff.attempt, eff.replica, eff.digest, True)
        except Exception as exc:
            inp = BlobFetched(
                eff.job_id, eff.attempt, eff.replica, eff.digest, False, str(exc)[:MAX_ERROR_CHARS]
            )
        await self._feed(inp)


class _Fetch:
    """One blob's ranges on their way from its holders into a writer."""

    def __init__(
        self,
        transfer: BlobTransfer,
        holders: list[str],
        digest: str,
        writer: BlobWriter,
        pieces: Pieces | None = None,
    ) -> None:
        self.t = transfer
        self.holders = holders
        self.gone: set[str] = set()  # holders found unreachable, or that sent a bad piece
        self.digest = digest
        self.writer = writer
        self.pieces = pieces
        self.step = pieces.piece_bytes if pieces is not None else transfer.chunk_bytes
        self.size = pieces.size if pieces is not None else -1
        """The blob's size: the piece list's, else what the first answer says."""
        self.written = trio.Condition()
        self.cut: set[str] = set()  # holders whose relayed connection broke mid-range
        self.waited = False  # _prefer_direct ran

    async def run(self) -> None:
        t = self.t
        if self.pieces is not None and self.size > self.step:
            await self._prefer_direct()  # the size is known: before any range
        first = await self._range(0, self._first_length())
        if self.size > self.writer.max_bytes:
            raise BlobLimitError(
                f"blob {self.digest} has {self.size} bytes, over the "
                f"{self.writer.max_bytes}-byte limit"
            )
        await self._write(0, first)
        if len(first) < self.size and not self.waited:
            await self._prefer_direct()
        offsets = iter(range(len(first), self.size, self.step))
        failed: list[Exception] = []
        # Over a relay one range at a time: a cut then loses only that one
        # (several interleaved ranges could all be cut short, circuit after circuit).
        lanes = 1 if self._relayed_only() else t.chunks_in_flight
        async with trio.open_nursery() as nursery:
            for _ in range(lanes):
                nursery.start_soon(self._worker, offsets, failed, nursery.cancel_scope)
        if failed:
            raise failed[0]

    async def _worker(
        self, offsets: Iterator[int], failed: list[Exception], scope: trio.CancelScope
    ) -> None:
        """Fetch and write ranges until none is left; the first failure is
        kept in ``failed`` and stops the others."""
        window = self.t.chunks_in_flight * self.step
        try:
            for offset in offsets:
                async with self.written:
                    while offset >= self.writer.size + window:
                        await self.written.wait()
                await self._write(offset, await self._range(offset))
        except Exception as exc:
            failed.append(exc)
            scope.cancel()

    def _direct_holders(self) -> list[str]:
        return [
            h
            for h in self.holders
            if h not in self.gone and self.t.host.connection_kind(h) in ("direct", "hole-punched")
        ]

    def _relayed_only(self) -> bool:
        """Every holder left is reached only through a relay."""
        live = [h for h in self.holders if h not in self.gone]
        return bool(live) and all(self.t.host.connection_kind(h) == "relayed" for h in live)

    def _waits_for_direct(self) -> bool:
        """Every holder left is reached only through a relay, and we may wait
        for a direct connection (``direct_wait_s``, our hole punching on)."""
        t = self.t
        return t.direct_wait_s > 0 and t.host.params.hole_punching and self._relayed_only()

    def _first_length(self) -> int:
        """The first range's length: a whole range, or only
        ``RELAYED_FIRST_RANGE_BYTES`` (to learn the size) when the fetch may
        wait for a direct connection: a large blob's first range then does
        not travel over the relay either."""
        if self.pieces is None and self._waits_for_direct():
            return min(self.step, RELAYED_FIRST_RANGE_BYTES)
        return self.step if self.size < 0 else min(self.step, self.size)

    async def _prefer_direct(self) -> None:
        """Ask the rest of the blob only of holders reached directly, if any;
        when every holder is reached only through a relay, wait up to
        ``direct_wait_s`` for one to become direct (a hole punch) first."""
        t = self.t
        self.waited = True
        if not self._direct_holders():
            if self._waits_for_direct():
                outcome = "timeout"
                with trio.move_on_after(t.direct_wait_s):
                    while not self._direct_holders():
                        await trio.sleep(DIRECT_POLL_S)
                    outcome = "direct"
                t.metrics.blob_direct_waits.labels(outcome=outcome).inc()
        direct = self._direct_holders()
        if direct:
            self.holders = direct

    async def _reconnected(self, peer: str) -> None:
        """Wait up to ``relay_reconnect_s`` until ``peer``, whose relayed
        connection was cut, is connected again (discovery dials it anew
        through a relay: a fresh circuit, a fresh byte budget)."""
        with trio.move_on_after(self.t.relay_reconnect_s):
            while self.t.host.reached(peer) not in ("relayed", "direct", "hole-punched"):
                await trio.sleep(DIRECT_POLL_S)

    def _relay_cut(self, peer: str, exc: NetError) -> RelayCut:
        """The error for a range lost with the relayed connection to ``peer``
        (counted; logged once per fetch)."""
        self.t.metrics.blob_relay_cuts.inc()
        first = not self.cut
        self.cut.add(peer)
        cut = RelayCut(
            f"the relayed connection to {peer} broke during a range of blob "
            f"{self.digest} ({exc}); a relay resets a circuit at its byte or time "
            "limit (relay_circuit_max_bytes, relay_circuit_max_duration_s)"
        )
        if first:
            log.warning("blob fetch: %s", cut)
        return cut

    async def _write(self, offset: int, data: bytes) -> None:
        await trio.to_thread.run_sync(self.writer.write_at, offset, data)
        async with self.written:
            self.written.notify_all()

    async def _range(self, offset: int, length: int | None = None) -> bytes:
        """The range at ``offset`` (``length`` bytes, else a whole step),
        asked of the holders in turn (from the one its index picks) until one
        answers it well, at most ``chunk_retries`` times again; a holder whose
        relayed connection was cut is asked again once it is reached again
        (``_reconnected``)."""
        t = self.t
        index = offset // self.step
        last: Exception | None = None
        asked: str | None = None
        for attempt in range(t.chunk_retries + 1):
            live = [h for h in self.holders if h not in self.gone] or self.holders
            peer = live[(index + attempt) % len(live)]
            if attempt:
                t.retried += 1
                if peer == asked:  # another holder is asked at once
                    await trio.sleep(t._retry_pause_s)
                if peer in self.cut:
                    await self._reconnected(peer)
            asked = peer
            relayed = t.host.connection_kind(peer) == "relayed"
            try:
                data = await self._ask(peer, offset, length)
                await self._check_piece(peer, index, data)
                return data
            except BadPiece as exc:
                self.gone.add(peer)  # it serves bytes that are not the blob's
                last = exc
            except (PeerUnreachable, RequestTimeout, StreamBroken) as exc:
                # the connection failed, not the holder's answer: on a relayed
                # one (or once one to this holder was cut) the relay cut it
                if isinstance(exc, PeerUnreachable):
                    self.gone.add(peer)
                last = self._relay_cut(peer, exc) if relayed or peer in self.cut else exc
            except RemoteError as exc:
                if _NO_BLOB in str(exc):  # it lacks the blob (or it is not ours)
                    self.gone.add(peer)
                last = exc
            except (NetError, BadRange) as exc:
                last = exc
        assert last is not None
        raise last

    async def _check_piece(self, peer: str, index: int, data: bytes) -> None:
        """BadPiece (counted) unless ``data`` hashes to piece ``index``'s entry."""
        if self.pieces is None:
            return
        got = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).digest())
        if index >= len(self.pieces.hashes) or got != self.pieces.hashes[index]:
            self.t.metrics.blob_pieces_refused.inc()
            raise BadPiece(f"{peer} sent piece {index} of {self.digest} with the wrong hash")

    async def _ask(self, peer: str, offset: int, length: int | None = None) -> bytes:
        t = self.t
        if length is None:
            length = self.step if self.size < 0 else min(self.step, self.size - offset)
        answer = await t.host.request(
            peer,
            BLOB_PROTOCOL,
            encode_blob_request(self.digest, offset, length),
            timeout_s=t._timeout_s,
        )
        if len(answer) < SIZE_HEADER_BYTES:
            raise BadRange(f"{peer} answered a range with {len(answer)} bytes")
        (size,) = _SIZE.unpack_from(answer)
        data = answer[SIZE_HEADER_BYTES:]
        if self.size >= 0 and size != self.size:
            raise BadRange(f"{peer} says the blob has {size} bytes, not {self.size}")
        if len(data) != min(length, size - offset):
            raise BadRange(f"{peer} answered {len(data)} bytes at {offset} of a {size}-byte blob")
        if self.size < 0:
            self.size = size
        return data
