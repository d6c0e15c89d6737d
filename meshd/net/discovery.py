"""Discovery: bootstrap, peer exchange, mDNS, the DHT's finds, and the dialling they lead to.

Theory of operation:
    meshd's discovery owns all dialling (libp2p's auto-connector is switched
    off in :mod:`meshd.net.libp2p_hooks`), so the block list, ``max_peers``
    and ``target_peers`` hold. A loop runs one round every
    ``peer_exchange_interval_s``, or early when a peer connects or mDNS finds
    one: while fewer than ``target_peers`` are connected it dials the
    bootstrap peers, asks ``peer_exchange_fanout`` connected peers for their
    peers (``/meshd/px/1``, :mod:`meshd.net.px`) and dials the most recently
    learned candidates in parallel (``max_parallel_dials``; a loopback dial
    takes ~250 ms of libp2p's happy-eyeballs delay). Candidates live in a
    bounded LRU (``known_peers_max``); one that fails ``max_dial_failures``
    dials in a row is forgotten until peer exchange reports it again. The
    Kademlia DHT (:mod:`meshd.net.dht`) is a second source of candidates
    (``add_candidates``), dialled by the same rules (its lookups also connect to
    the peers they ask; those connections pass the same check as any other).

Rules:
- Bootstrap peers are never forgotten and each round is a fresh attempt
  (libp2p would otherwise refuse to redial a failed peer for 60 s).
- An inbound peer beyond ``max_peers``, blocked or below the app-score
  threshold is hung up on as soon as it connects (``refused_peers``).
- mDNS callbacks arrive on zeroconf's thread and for every host in the
  process; they only hop back into our trio loop.
- mDNS advertises concrete addresses: a wildcard listen address
  (``/ip4/0.0.0.0/tcp/P``) is advertised as ``/ip4/<each interface address>/tcp/P``
  (:func:`concrete_addrs`, installed by :mod:`meshd.net.libp2p_hooks`).
  Dialled, ``0.0.0.0`` reaches the dialler's own listener: between containers
  that all listen on the same port, every dial to a peer found by mDNS met
  ourselves and failed the security handshake, and since the library's mDNS
  listener puts the address beside the bootstrap address, dials of the
  bootstrap peer failed too.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import random
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from meshd.net import px
from meshd.net.context import HostContext, parse_peer_id
from meshd.net.errors import NetError, PeerUnreachable
from meshd.net.relay import Relay, is_circuit_addr
from meshd.net.reqresp import RequestResponse
from meshd.net.standing import Standing

log = logging.getLogger("meshd.net")


def split_p2p_addr(addr: str) -> tuple[str, multiaddr.Multiaddr]:
    """(peer id, multiaddr) of ``.../p2p/<id>``; ValueError without ``/p2p``."""
    maddr = multiaddr.Multiaddr(addr)
    try:
        info = info_from_p2p_addr(maddr)
    except Exception as exc:
        raise ValueError(f"address needs a /p2p/<peer id> part: {addr!r}") from exc
    return str(info.peer_id), maddr


_SIOCGIFADDR = 0x8915
_WILDCARD_HOSTS = ("/ip4/0.0.0.0/", "/ip6/::/")


def interface_ipv4s() -> list[str]:
    """The IPv4 address of each network interface of this namespace, loopback
    excluded (one per interface: its primary address)."""
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):  # an interface without IPv4
                req = struct.pack("256s", name.encode()[:15])
                ip = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24])
                if not ip.startswith("127.") and ip not in out:
                    out.append(ip)
    return out


def is_wildcard_addr(addr: str) -> bool:
    """Whether ``addr`` names the unspecified address (``0.0.0.0`` or ``::``)."""
    return (addr + "/").startswith(_WILDCARD_HOSTS)


def concrete_addrs(addrs: Sequence[str], ips: Sequence[str]) -> list[str]:
    """``addrs`` with each ``/ip4/0.0.0.0/...`` replaced by the same address on
    each of ``ips``, and ``/ip6/::/...`` dropped (meshd dials IPv4 TCP)."""
    out: list[str] = []
    for addr in addrs:
        if addr.startswith("/ip4/0.0.0.0/"):
            out += [f"/ip4/{ip}/{addr[len('/ip4/0.0.0.0/') :]}" for ip in ips]
        elif not is_wildcard_addr(addr):
            out.append(addr)
    return list(dict.fromkeys(out))


class _ConnectionWatch(INotifee):
    """Forwards libp2p's connection events to discovery (never raises)."""

    def __init__(self, on_connected: Callable[[str], None]) -> None:
        self._on_connected = on_connected

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connected(str(conn.muxed_conn.peer_id))
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()


def pick_dials(
    known: Sequence[str], connected: set[str], wanted: Callable[[str], bool] | None, p: Any
) -> list[str]:
    """Which of the ``known`` candidates (newest first, none connected) to
    dial: the newest up to ``target_peers`` connections, and wanted ones
    (newest first) up to ``wanted_peers`` wanted connections, within
    ``max_peers`` in all. ``wanted`` None: the app wants no peer in
    particular, and ``target_peers`` alone counts."""
    room = max(0, p.max_peers - len(connected))
    picked: list[str] = []
    if wanted is not None:
        want = max(0, p.wanted_peers - sum(1 for q in connected if wanted(q)))
        picked = [k for k in known if wanted(k)][:want]
    fill = max(0, p.target_peers - len(connected) - len(picked))
    picked += [k for k in known if k not in picked][:fill]
    return picked[:room]


class Discovery:
    """Finds peers and keeps ``target_peers`` of them connected, and
    ``wanted_peers`` of those the app wants."""

    def __init__(
        self,
        ctx: HostContext,
        standing: Standing,
        reqresp: RequestResponse,
        bootstrap: Sequence[str],
        relay: Relay,
    ) -> None:
        self._ctx = ctx
        self._relay = relay
        self._standing = standing
        self._reqresp = reqresp
        self._bootstrap = [split_p2p_addr(a) for a in bootstrap]
        self._known: collections.OrderedDict[str, int] = collections.OrderedDict()  # -> fails
        self._wake = trio.Event()
        self._mdns_handler: Callable[[Any], None] | None = None
        self._listeners: list[Callable[[str], None]] = []
        self.wanted: Callable[[str], bool] | None = None
        """Peers the app wants among its connections (``wanted_peers`` of
        them); None until it says (then only ``target_peers`` and
        ``max_peers`` matter)."""
        ctx.libp2p.get_network().register_notifee(_ConnectionWatch(self._on_connected))
        reqresp.handle(px.PX_PROTOCOL, self._serve_px, internal=True)
        standing.on_block(self._forget)

    @property
    def known_peers(self) -> int:
        return len(self._known)

    def on_connected(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(peer_id)`` for each peer that connects and is kept (not
        refused); sync, must not raise."""
        self._listeners.append(fn)

    def add_candidates(self, peer_ids: Sequence[str]) -> None:
        """Peers another source (the DHT) found, their addresses already in
        the peerstore: dial candidates like those peer exchange reports."""
        for peer_id in peer_ids:
            if peer_id not in self._known:
                self._remember(peer_id)
        self._wake.set()

    # ------------------------------------------------------------- lifecycle

    def start(self, nursery: trio.Nursery) -> None:
        """Start the discovery loop."""
        nursery.start_soon(self._loop)

    def stop(self) -> None:
        """Stop listening to mDNS (the loop ends with the host's nursery)."""
        if self._mdns_handler is not None:
            peerDiscovery.unregister_peer_discovered_handler(self._mdns_handler)

    def listen_to_mdns(self, enabled: bool) -> None:
        """Turn libp2p's mDNS discoveries into dial candidates (if ``enabled``:
        see :func:`meshd.net.host.uses_mdns`)."""
        if not enabled:
            return
        token = trio.lowlevel.current_trio_token()

        def on_discovered(info: Any) -> None:
            peer_id = str(info.peer_id)
            if peer_id != self._ctx.peer_id:
                try:
                    token.run_sync_soon(self._on_mdns_peer, peer_id)
                except trio.RunFinishedError:
                    pass

        self._mdns_handler = on_discovered
        peerDiscovery.register_peer_discovered_handler(on_discovered)

    def _on_mdns_peer(self, peer_id: str) -> None:
        if self._ctx.state == "running" and peer_id not in self._known:
            self._remember(peer_id)
            self._wake.set()

    # ---------------------------------------------------------------- dialling

    async def connect(self, multiaddr_text: str) -> str:
        """See :meth:`MeshHost.connect`."""
        self._ctx.require_running()
        peer_id, maddr = split_p2p_addr(multiaddr_text)
        if peer_id == self._ctx.peer_id:
            raise ValueError("cannot connect to ourselves")
        if self._standing.is_blocked(peer_id):
            raise PeerUnreachable(f"peer {peer_id} is blocked")
        self._ctx.libp2p.get_network().unblock_peer(ID.from_base58(peer_id))  # fresh attempt
        await self._dial(peer_id, [maddr])
        return peer_id

    async def _dial(self, peer_id: str, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        p = self._ctx.params
        host = self._ctx.libp2p
        self._ctx.count("dials")
        pid = ID.from_base58(peer_id)
        if addrs:
            host.get_peerstore().add_addrs(pid, list(addrs), p.known_addr_ttl_s)
        direct = [a for a in addrs if not is_circuit_addr(a)]
        try:
            with trio.fail_after(p.connect_timeout_s):
                if direct:
                    await host.connect(PeerInfo(pid, direct))
                else:  # libp2p skips relayed addresses
                    await host.get_network().dial_peer(pid)
        except Exception as exc:  # dial errors, TooSlowError
            if not await self._dial_relayed(peer_id):
                self._ctx.count("dials_failed")
                self._note_dial_failure(peer_id)
                self._ctx.note_unreachable(peer_id, f"dial failed: {exc}")
                raise PeerUnreachable(f"cannot connect to {peer_id}: {exc}") from exc
        self._remember(peer_id)

    async def _dial_relayed(self, peer_id: str) -> bool:
        """Connect through a relayed address of ``peer_id`` we hold, if any."""
        circuits = [a for a in self._peerstore_addrs(peer_id) if is_circuit_addr(a)]
        if not circuits:
            return False
        with trio.move_on_after(self._ctx.params.connect_timeout_s):
            try:
                await self._relay.dial_circuit(peer_id, circuits)
                return True
            except PeerUnreachable as exc:
                log.debug("%s", exc)
        return False

    def _peerstore_addrs(self, peer_id: str) -> list[multiaddr.Multiaddr]:
        try:
            return list(self._ctx.libp2p.get_peerstore().addrs(parse_peer_id(peer_id)))
        except Exception:
            return []

    async def _dial_quietly(self, peer_id: str, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        try:
            await self._dial(peer_id, addrs)
        except PeerUnreachable as exc:
            log.debug("%s", exc)

    def known_addrs(self, peer_id: str) -> list[str]:
        """See :meth:`MeshHost.known_addrs`."""
        out = []
        for a in self._peerstore_addrs(peer_id):
            text = str(a).split("/p2p/")[0]
            out.append(f"{text}/p2p/{peer_id}")
        return list(dict.fromkeys(out))

    # ----------------------------------------------------- dial candidates

    def _remember(self, peer_id: str) -> None:
        if peer_id == self._ctx.peer_id or self._standing.is_blocked(peer_id):
            return
        self._known[peer_id] = 0
        self._known.move_to_end(peer_id)
        while len(self._known) > self._ctx.params.known_peers_max:
            self._known.popitem(last=False)

    def _forget(self, peer_id: str) -> None:
        self._known.pop(peer_id, None)

    def _note_dial_failure(self, peer_id: str) -> None:
        if peer_id in self._known:
            self._known[peer_id] += 1
            if self._known[peer_id] >= self._ctx.params.max_dial_failures:
                del self._known[peer_id]  # only peer exchange or the DHT bring it back

    def _on_connected(self, peer_id: str) -> None:
        if self._ctx.nursery is None:
            return
        too_many = len(self._ctx.libp2p.get_connected_peers()) > self._ctx.params.max_peers
        if self._standing.refuses(peer_id) or too_many:
            self._ctx.count("refused_peers")
            self._ctx.spawn(self._ctx.drop_peer, peer_id)
            return
        self._ctx.note_reached(peer_id)
        self._remember(peer_id)
        for fn in self._listeners:
            fn(peer_id)
        self._wake.set()

    # ------------------------------------------------------------- the loop

    async def _loop(self) -> None:
        p = self._ctx.params
        while True:
            self._wake = trio.Event()
            await self._round()
            with trio.move_on_after(p.peer_exchange_interval_s):
                await self._wake.wait()
            await trio.sleep(p.peer_exchange_min_gap_s)  # coalesce bursts of wakes

    async def _dial_bootstrap(self) -> None:
        """Dial configured bootstrap peers we are not connected to (see Rules)."""
        connected = set(self._ctx.connected_peers())
        todo = [
            (q, a)
            for q, a in self._bootstrap
            if q not in connected and q != self._ctx.peer_id and not self._standing.is_blocked(q)
        ]
        async with trio.open_nursery() as nursery:
            for peer_id, maddr in todo:
                self._ctx.libp2p.get_network().unblock_peer(ID.from_base58(peer_id))
                nursery.start_soon(self._dial_quietly, peer_id, [maddr])

    def short(self) -> bool:
        """Fewer than ``target_peers`` connected, or fewer than ``wanted_peers``
        of the peers the app wants."""
        p, connected = self._ctx.params, self._ctx.connected_peers()
        if len(connected) < p.target_peers:
            return True
        if self.wanted is None:
            return False
        wanted = self.wanted
        return sum(1 for q in connected if wanted(q)) < p.wanted_peers

    async def _round(self) -> None:
        p = self._ctx.params
        self._standing.enforce_app_score()
        if not self.short():
            return
        await self._dial_bootstrap()
        connected = self._ctx.connected_peers()
        asked = random.sample(connected, min(p.peer_exchange_fanout, len(connected)))
        async with trio.open_nursery() as nursery:
            for peer_id in asked:
                nursery.start_soon(self._ask_for_peers, peer_id)
        connected_set = set(self._ctx.connected_peers())
        known = [
            k
            for k in reversed(self._known)
            if k not in connected_set
            and not self._standing.is_blocked(k)
            and k != self._ctx.peer_id
        ]
        candidates = pick_dials(known, connected_set, self.wanted, p)
        limiter = trio.CapacityLimiter(p.max_parallel_dials)

        async def dial_one(peer_id: str) -> None:
            async with limiter:
                await self._dial_quietly(peer_id, [])

        async with trio.open_nursery() as nursery:
            for peer_id in candidates:
                nursery.start_soon(dial_one, peer_id)

    # -------------------------------------------------------- peer exchange

    async def _ask_for_peers(self, peer_id: str) -> None:
        p = self._ctx.params
        try:
            body = await self._reqresp.request(
                peer_id,
                px.PX_PROTOCOL,
                px.encode_px_request(p.max_px_peers),
                timeout_s=p.connect_timeout_s,
            )
            entries = px.decode_px_response(
                body, p.max_px_peers, p.max_px_addrs_per_peer, max_addr_chars=p.max_px_addr_chars
            )
        except (NetError, ValueError) as exc:
            log.debug("peer exchange with %s failed: %s", peer_id, exc)
            return
        self._ctx.count("px_rounds")
        store = self._ctx.libp2p.get_peerstore()
        for other, addrs in entries:
            if other == self._ctx.peer_id or self._standing.is_blocked(other):
                continue
            maddrs = [multiaddr.Multiaddr(f"{a}/p2p/{other}") for a in addrs]
            store.add_addrs(ID.from_base58(other), maddrs, p.known_addr_ttl_s)
            if other not in self._known:
                self._remember(other)

    async def _serve_px(self, peer_id: str, body: bytes) -> bytes:
        p = self._ctx.params
        want = px.decode_px_request(body, p.max_px_peers, max_bytes=p.max_px_request_bytes)
        others = [
            q
            for q in self._ctx.connected_peers()
            if q != peer_id and not self._standing.is_blocked(q)
        ]
        random.shuffle(others)
        # relayed addresses through us first: a peer that holds a reservation
        # here is one the asker most likely cannot dial directly
        entries = [(q, self._relay.circuit_addrs_for(q) + self.known_addrs(q)) for q in others]
        return px.encode_px_response(
            entries, want, p.max_px_addrs_per_peer, max_addr_chars=p.max_px_addr_chars
        )
