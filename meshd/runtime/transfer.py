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
the blob is installed; on any failure nothing is stored. At most
``max_concurrent_fetches`` blobs are fetched at once;
:meth:`BlobTransfer.fetch` carries out the core's ``FetchBlob`` and reports
the outcome as ``BlobFetched``;
:meth:`BlobTransfer.fetch_log` carries out ``FetchLog`` (a run's stored log:
``log_fetch_attempts`` tries, 1 s, 2 s, ... apart; no outcome goes back, a
log that never arrives is counted in ``log_fetch_failures``).
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import trio

from meshd.core.events import BLOB_PROTOCOL, MAX_ERROR_CHARS, BlobFetched, FetchBlob, FetchLog
from meshd.core.ratelimit import PeerBuckets
from meshd.net.errors import NetError, PeerUnreachable, RemoteError
from meshd.net.host import MeshHost
from meshd.store.blobs import BlobError, BlobLimitError, BlobNotFoundError, BlobStore, BlobWriter

from .jobio import bare
from .metrics import Metrics, by_label

_REQUEST_RE = re.compile(rb"sha256:([0-9a-f]{64}) (0|[1-9][0-9]{0,18}) ([1-9][0-9]{0,18})")
_SIZE = struct.Struct(">Q")
_NO_BLOB = "no blob "
"""How an answer says the holder has no such blob (or will not serve it)."""
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
        self, peers: str | Sequence[str], digest: str, *, max_bytes: int | None = None
    ) -> None:
        """Fetch a blob from its holders (one peer id or several) into the
        local store, sha256-checked. A blob over ``max_bytes`` (default: the
        store's ``max_blob_bytes``) raises BlobLimitError; bytes that do not
        hash to ``digest`` BlobCorruptError; a range no holder delivered
        within its retries the last error (a NetError or BadRange)."""
        holders = [peers] if isinstance(peers, str) else list(peers)
        if not holders:
            raise ValueError("a blob fetch needs at least one holder")
        key = bare(digest)
        if self.blobs.has(key):
            return
        async with self._fetch_limit:
            with self.blobs.writer(key, max_bytes) as writer:
                await _Fetch(self, holders, key, writer).run()
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
        self, transfer: BlobTransfer, holders: list[str], digest: str, writer: BlobWriter
    ) -> None:
        self.t = transfer
        self.holders = holders
        self.gone: set[str] = set()  # holders found unreachable
        self.digest = digest
        self.writer = writer
        self.size = -1
        self.written = trio.Condition()

    async def run(self) -> None:
        t = self.t
        first = await self._range(0)
        if self.size > self.writer.max_bytes:
            raise BlobLimitError(
                f"blob {self.digest} has {self.size} bytes, over the "
                f"{self.writer.max_bytes}-byte limit"
            )
        await self._write(0, first)
        offsets = iter(range(len(first), self.size, t.chunk_bytes))
        failed: list[Exception] = []
        async with trio.open_nursery() as nursery:
            for _ in range(t.chunks_in_flight):
                nursery.start_soon(self._worker, offsets, failed, nursery.cancel_scope)
        if failed:
            raise failed[0]

    async def _worker(
        self, offsets: Iterator[int], failed: list[Exception], scope: trio.CancelScope
    ) -> None:
        """Fetch and write ranges until none is left; the first failure is
        kept in ``failed`` and stops the others."""
        window = self.t.chunks_in_flight * self.t.chunk_bytes
        try:
            for offset in offsets:
                async with self.written:
                    while offset >= self.writer.size + window:
                        await self.written.wait()
                await self._write(offset, await self._range(offset))
        except Exception as exc:
            failed.append(exc)
            scope.cancel()

    async def _write(self, offset: int, data: bytes) -> None:
        await trio.to_thread.run_sync(self.writer.write_at, offset, data)
        async with self.written:
            self.written.notify_all()

    async def _range(self, offset: int) -> bytes:
        """The range at ``offset``, asked of the holders in turn (from the
        one its index picks) until one answers it well, at most
        ``chunk_retries`` times again."""
        t = self.t
        index = offset // t.chunk_bytes
        last: Exception | None = None
        asked: str | None = None
        for attempt in range(t.chunk_retries + 1):
            live = [h for h in self.holders if h not in self.gone] or self.holders
            peer = live[(index + attempt) % len(live)]
            if attempt:
                t.retried += 1
                if peer == asked:  # another holder is asked at once
                    await trio.sleep(t._retry_pause_s)
            asked = peer
            try:
                return await self._ask(peer, offset)
            except PeerUnreachable as exc:
                self.gone.add(peer)
                last = exc
            except RemoteError as exc:
                if _NO_BLOB in str(exc):  # it lacks the blob (or it is not ours)
                    self.gone.add(peer)
                last = exc
            except (NetError, BadRange) as exc:
                last = exc
        assert last is not None
        raise last

    async def _ask(self, peer: str, offset: int) -> bytes:
        t = self.t
        length = t.chunk_bytes if self.size < 0 else min(t.chunk_bytes, self.size - offset)
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
