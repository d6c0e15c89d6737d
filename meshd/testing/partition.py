"""A network partition for in-process clusters: a host that drops one set of peers.

:class:`PartitionedHost` is a real :class:`meshd.net.host.MeshHost` whose
traffic with the peers in ``dropped`` is lost at its door, both ways, as a
cut cable would lose it:

- gossip they publish (relayed or not) never reaches the daemon;
- their requests and channel calls (direct messages, blob requests) fail:
  the handler is not run and the peer receives an error;
- our requests to them fail at once (``ConnectionError``), so a ``Send``
  comes back to the core as ``SendFailed`` through the daemon's send queues.

Our own publishes still leave (gossip is relayed by others; the receivers'
hosts drop it if they are cut off from us). ``Cluster.partition`` and
``Cluster.heal`` change ``dropped`` while the daemons run.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.core.identity import Identity
from meshd.net.host import GossipHandler, MeshHost, RequestHandler
from meshd.net.params import NetParams

PARTITIONED = "partitioned (test fault)"


class PartitionedHost(MeshHost):
    """A ``MeshHost`` that loses all traffic with the peers in ``dropped``."""

    def __init__(
        self,
        identity: Identity,
        params: NetParams,
        listen_addrs: Sequence[str],
        bootstrap: Sequence[str] = (),
    ) -> None:
        super().__init__(identity, params, listen_addrs, bootstrap)
        self.dropped: set[str] = set()
        self.unsendable: set[str] = set()
        """Peers our requests and calls cannot reach while their gossip and
        theirs to us still flow: a one-way fault, as of a node behind a NAT
        with no relay whose dials to them fail."""

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        def filtered(from_peer: str, data: bytes) -> None:
            if from_peer not in self.dropped:
                handler(from_peer, data)

        super().subscribe(topic, filtered)

    def _cut(self, handler: RequestHandler) -> RequestHandler:
        async def filtered(from_peer: str, data: bytes) -> bytes:
            if from_peer in self.dropped:
                raise ConnectionError(PARTITIONED)
            return await handler(from_peer, data)

        return filtered

    def handle(self, protocol: str, handler: RequestHandler, *, _internal: bool = False) -> None:
        if _internal:
            super().handle(protocol, handler, _internal=True)
            return
        super().handle(protocol, self._cut(handler))

    def handle_channel(self, protocol: str, handler: RequestHandler) -> None:
        super().handle_channel(protocol, self._cut(handler))

    def _cut_off(self, peer_id: str) -> None:
        """Fail a send to a dropped peer as a cut cable would: marked unreachable."""
        self._ctx.note_unreachable(peer_id, PARTITIONED)
        raise ConnectionError(PARTITIONED)

    async def request(
        self, peer_id: str, protocol: str, data: bytes, *, timeout_s: float | None = None
    ) -> bytes:
        if peer_id in self.dropped or peer_id in self.unsendable:
            self._cut_off(peer_id)
        return await super().request(peer_id, protocol, data, timeout_s=timeout_s)

    async def call(
        self,
        peer_id: str,
        protocol: str,
        data: bytes,
        *,
        fallback: str,
        timeout_s: float | None = None,
    ) -> bytes:
        if peer_id in self.dropped or peer_id in self.unsendable:
            self._cut_off(peer_id)
        return await super().call(peer_id, protocol, data, fallback=fallback, timeout_s=timeout_s)
