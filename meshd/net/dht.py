"""Kademlia DHT: a second discovery source beside peer exchange.

Theory of operation:
    Every host keeps a Kademlia routing table (py-libp2p 0.8.1's
    ``RoutingTable``: k-buckets of 20 peers, XOR distance between SHA-256
    keys) and looks peers up with the library's iterative lookup
    (``PeerRouting.find_closest_peers_network``) over the standard Kademlia
    protocol ``/ipfs/kad/1.0.0``. The table is seeded with the peers the host
    connects to. While discovery is short of peers, the host looks up a
    random key every ``dht_interval_s`` (and after a new connection, but
    never within ``dht_min_gap_s`` of the last lookup), each lookup bounded
    by ``dht_lookup_timeout_s``, and hands the peers it found to discovery as
    dial candidates: the same candidates peer exchange fills, dialled by the
    same rules and limits (``target_peers``, ``wanted_peers``, ``max_peers``,
    the block list).

    Peer exchange tells a node about its neighbours' current connections;
    a FIND_NODE answer comes from the neighbour's routing table, which keeps
    the DHT servers it has met (connected now or not), spread over the key
    space by XOR distance, and lookups repeat hop by hop (below), so a node
    also finds peers that none of its neighbours is connected to.

    Server and client mode: a host whose reachability (the dial-back check,
    :mod:`meshd.net.relay`) is ``public`` serves the protocol; otherwise it
    only asks (its peers cannot dial it, so it must not be in their tables).
    A mode change is announced to connected peers by identify push, so their
    tables learn it.

    meshd serves only FIND_NODE, with its own handler (the library's also
    stores values and provider records for any peer, which meshd has no use
    for): one request per stream, at most ``dht_max_message_bytes``,
    answered with at most ``dht_closer_peers`` peers of the table closest to
    the key (the asker and blocked peers left out), each with at most
    ``max_px_addrs_per_peer`` addresses, dialable ones only (as in peer
    exchange, :func:`~meshd.net.px.dialable_addr`). Anything else -- another message
    type, an undecodable or oversized message, a key that is not
    1..``dht_max_key_bytes`` bytes, a stream beyond
    ``dht_max_inbound_streams`` served at once -- is counted
    (``dht_rejected``) and the stream reset.

    A lookup asks only peers this host is connected to (the library sees
    the host through a view whose streams go only to connected peers, and
    whose peerstore lists only connected peers as starting points): the
    peers their answers name that it cannot ask yet are what it hands to
    discovery, and once discovery has dialled them the next lookup asks them
    in turn. So the DHT opens no connection of its own, and the mesh is
    walked one hop per lookup.

Rules:
- The DHT never dials: every connection is discovery's, within
  ``target_peers``, ``wanted_peers``, ``max_peers`` and the block list.
- The routing table holds at most ``dht_table_peers``: beyond it the peers
  farthest from us are dropped after each lookup, and no peer is seeded.
- Nothing a peer sends raises out of this module: the handler contains every
  error; the library's lookup contains its own (and every answer it reads
  is capped at ``dht_max_message_bytes``, :func:`~meshd.net.libp2p_hooks.limit_dht_messages`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.identity.identify_push.identify_push import push_identify_to_peers
from libp2p.kad_dht import PeerRouting, RoutingTable
from libp2p.kad_dht.common import PROTOCOL_ID
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from meshd.net import px
from meshd.net.context import HostContext
from meshd.net.errors import PeerUnreachable
from meshd.net.framing import encode_uvarint
from meshd.net.reqresp import close_stream, write_whole_frames
from meshd.net.standing import Standing

log = logging.getLogger("meshd.net")

DHT_PROTOCOL = str(PROTOCOL_ID)
"""Stream protocol id of the Kademlia DHT (libp2p's standard one)."""


class _ConnectedPeerstore:
    """The peerstore as the library's lookup sees it: its peers are the
    connected ones (a lookup whose table is nearly empty starts from every
    peer the peerstore lists; only connected ones can be asked, and the
    others would come back as its results without any answer naming them)."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        self._store = host.get_peerstore()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def peer_ids(self) -> list[ID]:
        return list(self._host.get_connected_peers())


class _ConnectedOnly:
    """The host as the library's lookup and routing table see it: streams
    only to peers we are connected to, so a lookup never dials (discovery
    does, within its limits) and learns what it cannot ask as candidates."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        self._store = _ConnectedPeerstore(host)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def get_peerstore(self) -> Any:
        return self._store

    async def new_stream(self, peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream:
        if peer_id not in self._host.get_connected_peers():
            raise PeerUnreachable(f"not connected to {peer_id}: the DHT does not dial")
        return await self._host.new_stream(peer_id, protocol_ids)


class Dht:
    """The routing table, the lookups and the FIND_NODE server of one host."""

    def __init__(
        self,
        ctx: HostContext,
        standing: Standing,
        *,
        reachability: Callable[[], str],
        short: Callable[[], bool],
        found: Callable[[list[str]], None],
    ) -> None:
        """``reachability()``: ``public``, ``private`` or ``unknown`` now;
        ``short()``: whether discovery wants more peers; ``found(peer_ids)``:
        hands discovery the peers a lookup found (their addresses are in the
        peerstore)."""
        self._ctx = ctx
        self._standing = standing
        self._reachability = reachability
        self._short = short
        self._found = found
        view = cast(IHost, _ConnectedOnly(ctx.libp2p))
        self.table = RoutingTable(ctx.pid, view)
        self._routing = PeerRouting(view, self.table)
        self.serving = False
        """Whether this host answers FIND_NODE (server mode)."""
        self._inbound = trio.CapacityLimiter(ctx.params.dht_max_inbound_streams)
        self._wake = trio.Event()
        standing.on_block(self._forget)

    # ------------------------------------------------------------- lifecycle

    def start(self, nursery: trio.Nursery) -> None:
        """Start the lookup loop."""
        nursery.start_soon(self._loop)

    def on_connected(self, peer_id: str) -> None:
        """A peer connected: seed the table with it, and look up soon."""
        self._ctx.spawn(self._seed, peer_id)
        self._wake.set()

    async def _loop(self) -> None:
        p = self._ctx.params
        while True:
            self._wake = trio.Event()
            await self._set_mode(self._reachability() == "public")
            for peer_id in self._ctx.connected_peers():
                await self._seed(peer_id)  # identify may have come after on_connected
            if self._ctx.connected_peers() and self._short():
                with trio.move_on_after(p.dht_lookup_timeout_s):
                    await self.lookup()
            with trio.move_on_after(p.dht_interval_s):
                await self._wake.wait()
            await trio.sleep(p.dht_min_gap_s)

    # ---------------------------------------------------------------- mode

    async def _set_mode(self, server: bool) -> None:
        if server == self.serving:
            return
        host = self._ctx.libp2p
        if server:
            host.set_stream_handler(PROTOCOL_ID, self._serve)
        else:
            host.remove_stream_handler(PROTOCOL_ID)
        self.serving = server
        log.info("DHT: %s mode", "server" if server else "client")
        try:  # tell connected peers, whose tables keep only servers
            await push_identify_to_peers(host)
        except Exception as exc:
            log.debug("identify push after a DHT mode change failed: %r", exc)

    # -------------------------------------------------------- routing table

    def _room(self) -> bool:
        return self.table.size() < self._ctx.params.dht_table_peers

    async def _seed(self, peer_id: str) -> None:
        pid = ID.from_base58(peer_id)
        if self.table.peer_in_table(pid) or not self._room() or self._standing.is_blocked(peer_id):
            return
        try:
            addrs = self._ctx.libp2p.get_peerstore().addrs(pid)
        except Exception:
            return
        if addrs:
            # the library leaves out peers whose identify lacks the protocol
            await self.table.add_peer(PeerInfo(pid, addrs))

    def _forget(self, peer_id: str) -> None:
        self.table.remove_peer(ID.from_base58(peer_id))

    def _trim(self) -> None:
        """Drop the peers farthest from us beyond ``dht_table_peers``."""
        extra = self.table.size() - self._ctx.params.dht_table_peers
        if extra <= 0:
            return
        by_distance = sort_peer_ids_by_distance(self._ctx.pid.to_bytes(), self.table.get_peer_ids())
        for pid in by_distance[-extra:]:
            self.table.remove_peer(pid)

    # -------------------------------------------------------------- lookups

    async def lookup(self, key: bytes | None = None) -> list[str]:
        """Look up the peers closest to ``key`` (a random 32-byte key if
        None) and hand those we are not connected to, with addresses, to
        discovery; returns them."""
        p = self._ctx.params
        key = key if key is not None else random.randbytes(32)
        self._ctx.count("dht_lookups")
        try:
            pids = await self._routing.find_closest_peers_network(key, count=p.dht_closer_peers)
        except Exception as exc:  # the library contains its own; belt and braces
            log.debug("DHT lookup failed: %r", exc)
            pids = []
        finally:
            self._trim()
        store = self._ctx.libp2p.get_peerstore()
        connected = set(self._ctx.connected_peers())
        out = []
        for pid in pids:
            peer_id = str(pid)
            if peer_id in connected or peer_id == self._ctx.peer_id:
                continue
            if self._standing.is_blocked(peer_id):
                continue
            try:
                if store.addrs(pid):
                    out.append(peer_id)
            except Exception:
                continue
        if out:
            self._ctx.count("dht_found", len(out))
            self._found(out)
        return out

    # --------------------------------------------------------------- server

    async def _serve(self, stream: INetStream) -> None:
        """Answer one FIND_NODE (see the module docstring); never raises."""
        peer_id = str(stream.muxed_conn.peer_id)
        try:
            self._inbound.acquire_nowait()
        except trio.WouldBlock:
            await self._reject(stream, peer_id, "busy")
            return
        try:
            await self._answer(stream, peer_id)
        except Exception as exc:
            await self._reject(stream, peer_id, f"error: {exc!r}")
        finally:
            self._inbound.release()

    async def _answer(self, stream: INetStream, peer_id: str) -> None:
        p = self._ctx.params
        if self._standing.refuses(peer_id):
            await self._reject(stream, peer_id, "refused")
            return
        deadline = trio.current_time() + p.handler_timeout_s
        body = None
        with trio.move_on_at(deadline):
            body = await read_varint_prefixed_bytes_limited(stream, p.dht_max_message_bytes)
        if body is None:
            await self._reject(stream, peer_id, "timeout")
            return
        msg = Message()
        msg.ParseFromString(body)  # DecodeError: an error, rejected by _serve
        if msg.type != Message.MessageType.FIND_NODE:
            await self._reject(stream, peer_id, f"message type {msg.type} not served")
            return
        if not 1 <= len(msg.key) <= p.dht_max_key_bytes:
            await self._reject(stream, peer_id, f"key of {len(msg.key)} bytes")
            return
        self._ctx.count("dht_served")
        if self._room() and not self._standing.is_blocked(peer_id):
            # it asked, so it may be a server; the library checks its identify
            await self._seed(peer_id)
        reply = self._reply(msg.key, peer_id).SerializeToString()
        if await write_whole_frames(stream, encode_uvarint(len(reply)) + reply, deadline):
            await close_stream(stream, reset=False)

    def _reply(self, key: bytes, asker: str) -> Message:
        p = self._ctx.params
        store = self._ctx.libp2p.get_peerstore()
        connected = set(self._ctx.libp2p.get_connected_peers())
        reply = Message()
        reply.type = Message.MessageType.FIND_NODE
        closest = self.table.find_local_closest_peers(key, p.dht_closer_peers + 1)
        for pid in closest:
            peer_id = str(pid)
            if peer_id == asker or self._standing.is_blocked(peer_id):
                continue
            try:
                texts = [px.dialable_addr(str(a), p.max_px_addr_chars) for a in store.addrs(pid)]
            except Exception:
                continue
            addrs = [multiaddr.Multiaddr(t) for t in texts if t][: p.max_px_addrs_per_peer]
            if not addrs:
                continue
            entry = reply.closerPeers.add()
            entry.id = pid.to_bytes()
            entry.addrs.extend(a.to_bytes() for a in addrs)
            entry.connection = (
                Message.ConnectionType.CONNECTED
                if pid in connected
                else Message.ConnectionType.CAN_CONNECT
            )
            if len(reply.closerPeers) >= p.dht_closer_peers:
                break
        return reply

    async def _reject(self, stream: INetStream, peer_id: str, why: str) -> None:
        self._ctx.count("dht_rejected")
        log.debug("DHT request from %s rejected: %s", peer_id, why)
        await close_stream(stream, reset=True)
