"""Helpers for tests of real :class:`~meshd.net.MeshHost` instances on loopback.

Shared by the network layer's tests (``tests/test_net_*.py``): hosts with a
fresh identity on 127.0.0.1, a condition awaited under a deadline, and the
two-sided connection check.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from meshd.core.identity import Identity
from meshd.net import MeshHost, NetParams

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
