"""What every part of one MeshHost shares: identity, bounds, counters, tasks.

Theory of operation:
    A :class:`~meshd.net.host.MeshHost` is assembled from parts, one idea
    each (:mod:`~meshd.net.gossip`, :mod:`~meshd.net.reqresp`,
    :mod:`~meshd.net.discovery`, :mod:`~meshd.net.standing`). They all need
    the same few things: the params, our own peer id, the libp2p host, the
    counters behind :meth:`MeshHost.statistics`, and the nursery of the
    running host to start background work in. :class:`HostContext` holds
    exactly those, and the lifecycle state (``new -> running -> stopping ->
    stopped``) that the facade advances.

Rules:
- Parts never hold each other's state; they call each other's methods.
- ``spawn`` is a no-op when the host is not running (work for a stopped host
  has nowhere to go); ``require_running`` raises :class:`NotRunning`.
- Only public py-libp2p calls here (see :mod:`meshd.net.libp2p_hooks`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

import trio
from libp2p.peer.id import ID

from meshd.core.identity import Identity, public_key_from_peer_id
from meshd.net.errors import NotRunning
from meshd.net.params import NetParams
from meshd.net.stats import COUNTER_NAMES

log = logging.getLogger("meshd.net")


PEER_ID_MEMO = 4096
"""Peer ids :func:`parse_peer_id` remembers (every call and request to a peer
parses its id: two base58 decodings each)."""


@lru_cache(maxsize=PEER_ID_MEMO)
def parse_peer_id(peer_id: str) -> ID:
    """``peer_id`` as a libp2p ID; ValueError unless it is an Ed25519 peer id
    (the last :data:`PEER_ID_MEMO` answers remembered; IDs are immutable)."""
    if public_key_from_peer_id(peer_id) is None:
        raise ValueError(f"not an Ed25519 peer id: {peer_id!r}")
    return ID.from_base58(peer_id)


class HostContext:
    """Shared state of one host's parts (see module docstring)."""

    def __init__(self, identity: Identity, params: NetParams, libp2p_host: Any) -> None:
        self.params = params
        self.peer_id: str = identity.peer_id
        self.pid = ID.from_base58(identity.peer_id)
        self.libp2p = libp2p_host
        self.state = "new"  # new -> running -> stopping -> stopped
        self.nursery: trio.Nursery | None = None
        self.counts = dict.fromkeys(COUNTER_NAMES, 0)
        self.unreachable: collections.OrderedDict[str, str] = collections.OrderedDict()
        """Peers our last attempt to reach failed (-> why), until one connects."""

    def note_unreachable(self, peer_id: str, why: str) -> None:
        """Our attempt to reach ``peer_id`` failed: mark it (logged once, until
        it connects again; at most ``known_peers_max`` marked)."""
        if peer_id not in self.unreachable:
            self.count("peers_unreachable")
            log.info(
                "cannot reach peer %s (%s): messages to it are not delivered until one gets through",
                peer_id,
                why[:200],
            )
        self.unreachable[peer_id] = why
        self.unreachable.move_to_end(peer_id)
        while len(self.unreachable) > self.params.known_peers_max:
            self.unreachable.popitem(last=False)

    def note_reached(self, peer_id: str) -> None:
        """``peer_id`` connected, or a request or call to it got through: it is
        reachable again."""
        if self.unreachable.pop(peer_id, None) is not None:
            log.info("peer %s is reachable again", peer_id)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    @property
    def running(self) -> bool:
        return self.state == "running" and self.nursery is not None

    def require_running(self) -> trio.Nursery:
        if self.state != "running" or self.nursery is None:
            raise NotRunning(f"host {self.peer_id} is {self.state}, not running")
        return self.nursery

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``fn(*args)`` in the running host's nursery; no-op otherwise."""
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)

    def connected_peers(self) -> list[str]:
        if self.state not in ("running", "stopping"):
            return []
        return [str(p) for p in self.libp2p.get_connected_peers()]

    async def drop_peer(self, peer_id: str) -> None:
        """Hang up on ``peer_id`` (never raises)."""
        try:
            await self.libp2p.disconnect(ID.from_base58(peer_id))
        except Exception as exc:
            log.debug("disconnecting %s failed: %r", peer_id, exc)
