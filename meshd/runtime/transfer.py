"""Blobs between peers: serving our blobs over the blob protocol, fetching theirs.

Theory of operation
-------------------
A blob request (``BLOB_PROTOCOL``) names one digest. :meth:`BlobTransfer.serve`
answers it only

1. within the peer's request budget: a token bucket per peer,
   ``blob_requests_per_s`` with bursts of ``blob_request_burst``
   (``RuntimeParams``), charged before any look-up; beyond it the request is
   refused as busy (counted ``meshd_blob_requests_refused_total{reason="rate"}``);
2. if the core says the peer is entitled to the blob
   (``Node.may_serve_blob``: a worker holding a run of our job that has it as
   input, the origin of a run whose output it is). A blob the peer may not
   have is answered exactly like a missing one (counted
   ``meshd_blob_requests_refused_total{reason="not_entitled"}``).

:meth:`BlobTransfer.fetch_from` fetches a blob into the local store,
sha256-checked against the digest asked for, at most
``max_concurrent_fetches`` at once; :meth:`BlobTransfer.fetch` carries out the
core's ``FetchBlob`` and reports the outcome as ``BlobFetched``;
:meth:`BlobTransfer.fetch_log` carries out ``FetchLog`` (a run's stored log:
``log_fetch_attempts`` tries, 1 s, 2 s, ... apart; no outcome goes back, a
log that never arrives is counted in ``log_fetch_failures``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from meshd.core.events import BLOB_PROTOCOL, MAX_ERROR_CHARS, BlobFetched, FetchBlob, FetchLog
from meshd.core.ratelimit import PeerBuckets
from meshd.net.host import MeshHost
from meshd.store.blobs import BlobStore

from .jobio import bare
from .metrics import Metrics, by_label


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
        request_timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.blobs = blobs
        self.host = host
        self._may_serve = may_serve
        self._feed = feed
        self._monotonic_ms = monotonic_ms
        self._bucket = PeerBuckets(requests_per_s, request_burst, max_peers)
        self._fetch_limit = trio.Semaphore(max_concurrent_fetches)
        self._timeout_s = max(60.0, request_timeout_s)
        self.metrics = metrics if metrics is not None else Metrics()
        self.log_fetch_failures = 0
        """Stored run logs that could not be fetched (after every try)."""

    @property
    def refused(self) -> Counter[str]:
        """Requests refused, by reason (``rate``, ``not_entitled``), from the registry."""
        return by_label(self.metrics.blob_refused, "reason")

    async def serve(self, from_peer: str, data: bytes) -> bytes:
        """The ``BLOB_PROTOCOL`` handler: the blob, or a ``LookupError`` the
        peer receives as an error."""
        if not self._bucket.take(from_peer, self._monotonic_ms()):
            self.metrics.blob_refused.labels(reason="rate").inc()
            raise LookupError("busy: too many blob requests; retry later")
        digest = bare(data.decode("ascii", "replace"))
        if not self._may_serve(from_peer, digest):
            self.metrics.blob_refused.labels(reason="not_entitled").inc()
            raise LookupError(f"no blob {digest[:80]}")
        try:
            if self.blobs.has(digest):
                return await trio.to_thread.run_sync(self.blobs.get, digest)
        except Exception as exc:  # a malformed digest from a peer
            raise LookupError(f"bad blob request: {exc}") from None
        raise LookupError(f"no blob {digest[:80]}")

    async def fetch_from(self, peer: str, digest: str) -> None:
        """Fetch a blob from a peer into the local store (sha256-checked)."""
        if self.blobs.has(bare(digest)):
            return
        async with self._fetch_limit:
            data = await self.host.request(
                peer, BLOB_PROTOCOL, digest.encode("ascii"), timeout_s=self._timeout_s
            )
        await trio.to_thread.run_sync(
            lambda: self.blobs.put_stream([data], expected_digest=bare(digest))
        )

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
