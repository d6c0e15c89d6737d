"""Helpers for tests of real :class:`~meshd.net.MeshHost` instances on loopback.

Shared by the network layer's tests (``tests/test_net_*.py``): hosts with a
fresh identity on 127.0.0.1, a condition awaited under a deadline, and the
two-sided connection check; a blob transfer that serves a store to anyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from meshd.core.identity import Identity
from meshd.net import MeshHost, NetParams
from meshd.runtime.params import RuntimeParams
from meshd.runtime.transfer import BlobTransfer
from meshd.store.blobs import BlobStore

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
FAST = NetParams(peer_exchange_interval_s=0.5)
LINE = NetParams(target_peers=1, peer_exchange_interval_s=0.5)
"""No dialing beyond the bootstrap peer: a line topology stays a line."""


def make_host(params: NetParams = FAST, bootstrap: list[str] | None = None) -> MeshHost:
    """A host with a fresh identity listening on a free loopback port."""
    return MeshHost(Identity.generate(), params, [LOOPBACK], bootstrap or [])


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` every 20 ms; trio.TooSlowError after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.02)


def connected(a: MeshHost, b: MeshHost) -> bool:
    """Each of ``a`` and ``b`` lists the other as connected."""
    return b.peer_id in a.connected_peers() and a.peer_id in b.connected_peers()


def blob_transfer(
    blobs: BlobStore, host: MeshHost, rp: RuntimeParams | None = None
) -> BlobTransfer:
    """A :class:`~meshd.runtime.transfer.BlobTransfer` over ``host`` that
    serves any blob of ``blobs`` to anyone (no core to ask), with
    ``rp``'s range size, ranges in flight, retries and time-outs."""
    rp = rp or RuntimeParams()

    async def feed(_inp: object) -> None:
        return None

    return BlobTransfer(
        blobs,
        host,
        may_serve=lambda peer, digest: True,
        feed=feed,
        monotonic_ms=lambda: int(time.monotonic() * 1000),
        requests_per_s=1000.0,
        request_burst=1000.0,
        max_peers=16,
        max_concurrent_fetches=8,
        chunk_bytes=rp.blob_chunk_bytes,
        chunks_in_flight=rp.blob_chunks_in_flight,
        chunk_retries=rp.blob_chunk_retries,
        chunk_timeout_s=rp.blob_chunk_timeout_s,
        retry_pause_s=rp.blob_retry_pause_s,
    )
