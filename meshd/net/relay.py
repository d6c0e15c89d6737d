"""Reachability: a dial-back check, circuit relay v2 (serving and reserving).

Theory of operation:
    A node behind a home NAT can open connections but not accept them. This
    part finds that out and works around it with py-libp2p 0.8.1's circuit
    relay v2:

    * **Dial-back check** (``/meshd/autonat/1``, AutoNAT's idea on meshd's
      request/response streams). Every ``autonat_interval_s`` (sooner while
      the answer is unknown) the node asks up to ``autonat_peers`` peers it
      reaches directly to open a TCP connection to its listen port at the IP
      address they see it connect from. One success makes it ``public``;
      answers that all failed make it ``private``; no answer keeps
      ``unknown``. ``reachability`` = ``public``/``private`` fixes the
      answer and no check runs. The server dials only back to the requester's own
      observed IP (no amplification to third parties), at most
      ``autonat_max_dialbacks`` at once, each bounded by
      ``autonat_dial_timeout_s``.
    * **Relay service.** A ``public`` node with ``relay_service`` on serves
      the hop protocol (``/libp2p/circuit/relay/0.2.0/hop``): at most
      ``relay_max_reservations`` reservations and ``relay_max_circuits``
      circuits, each circuit closed after ``relay_circuit_max_bytes`` bytes
      or ``relay_circuit_max_duration_s`` seconds. Its peer-exchange answers
      list, for each peer holding a reservation, the relayed address
      ``<our addr>/p2p/<us>/p2p-circuit``.
    * **Relay client.** A ``private`` node reserves a slot on up to
      ``relay_reservations`` directly connected peers that serve hop (a peer
      that refuses is asked again after ``relay_retry_s``), and renews
      before the reservation expires.
    * Dialling a relayed address is :meth:`Relay.dial_circuit` (used by
      discovery when no direct address answers).
    * **Hole punching.** py-libp2p's DCUtR service runs on every host
      (unless ``hole_punching`` is off): for
      each relayed connection it tries a direct dial, then a synchronised
      TCP simultaneous open from both listen ports (``SO_REUSEPORT``) to the
      NAT-mapped addresses identify observed. A direct connection to a peer
      we had reached only through a relay is reported as hole-punched.

Rules:
- A relayed connection is never used for the dial-back check or for a
  reservation: both need a direct connection.
- Nothing a peer sends raises: a malformed request is a BAD_REQUEST answer,
  a failed reservation a debug line and a later retry.
- A circuit that reaches its byte or time limit is reset by the relay; the
  request/response framing (length prefix, ``StreamBroken`` when a frame
  stops short) and blob hashes make that an error at the receiver, never a
  silently short transfer. Blob fetches prefer a direct connection and name
  a relay cut as such (``meshd.runtime.transfer``; specs/NETWORK.md "Large
  transfers and relays").
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import multiaddr
import trio
from libp2p.network.connection.raw_connection import ConnectionType
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from meshd.net.context import HostContext
from meshd.net.errors import NetError, PeerUnreachable
from meshd.net.libp2p_hooks import relay_reserved_peers
from meshd.net.reqresp import INTERNAL_PROTOCOLS, RequestResponse

log = logging.getLogger("meshd.net")

AUTONAT_PROTOCOL = "/meshd/autonat/1"
"""Dial-back check: request msgpack uint (our listen port), response msgpack
``[reachable: bool | None, observed_ip: str]`` (None: the server could not try)."""
MAX_AUTONAT_REQUEST_BYTES = 16
assert AUTONAT_PROTOCOL in INTERNAL_PROTOCOLS

# How a peer is reached (``MeshHost.reached``).
DIRECT = "direct"
RELAYED = "relayed"
HOLE_PUNCHED = "hole-punched"


def is_circuit_addr(addr: multiaddr.Multiaddr | str) -> bool:
    return "/p2p-circuit" in str(addr)


class Relay:
    """The reachability state, the relay service and the relay client of one host."""

    def __init__(self, ctx: HostContext, reqresp: RequestResponse) -> None:
        p = ctx.params
        self._ctx = ctx
        self._reqresp = reqresp
        self.state = "unknown" if p.reachability == "auto" else p.reachability
        """``unknown``, ``public`` or ``private`` (see the dial-back check)."""
        limits = RelayLimits(
            duration=p.relay_circuit_max_duration_s,
            data=p.relay_circuit_max_bytes,
            max_circuit_conns=p.relay_max_circuits,
            max_reservations=p.relay_max_reservations,
            reservation_ttl=p.relay_reservation_ttl_s,
        )
        self.protocol = CircuitV2Protocol(ctx.libp2p, limits=limits, allow_hop=False)
        self.dcutr = DCUtRProtocol(ctx.libp2p, dial_timeout=max(1, int(p.connect_timeout_s)))
        self._transport = CircuitV2Transport(
            ctx.libp2p,
            self.protocol,
            RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT, limits=limits),
        )
        self._hop_served = False
        self._first_relayed: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Peers we were connected to only through a relay (most recent last)."""
        self._reservations: dict[str, float] = {}  # relay peer -> renew at (trio time)
        self._refused: dict[str, float] = {}  # peer -> ask again at (trio time)
        self._dialbacks = trio.CapacityLimiter(p.autonat_max_dialbacks)
        reqresp.handle(AUTONAT_PROTOCOL, self._serve_autonat, internal=True)

    # ------------------------------------------------------------- lifecycle

    @contextlib.asynccontextmanager
    async def hole_punching(self) -> AsyncIterator[None]:
        """Run DCUtR while the host runs (if ``hole_punching``)."""
        if not self._ctx.params.hole_punching:
            yield
            return
        async with background_trio_service(self.dcutr):
            yield

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._loop)
        nursery.start_soon(self._watch_relayed)

    async def _watch_relayed(self) -> None:
        """Remember the peers reached only through a relay (every
        ``reach_sample_s``), so a later direct connection counts as hole-punched."""
        p = self._ctx.params
        while True:
            for peer_id in self._ctx.connected_peers():
                if self._kinds(peer_id) == {RELAYED}:
                    self._first_relayed[peer_id] = None
                    self._first_relayed.move_to_end(peer_id)
            while len(self._first_relayed) > p.known_peers_max:
                self._first_relayed.popitem(last=False)
            await trio.sleep(p.reach_sample_s)

    async def _loop(self) -> None:
        p = self._ctx.params
        while True:
            if p.reachability == "auto":
                await self._check_reachability()
            if self.state == "public" and p.relay_service and not self._hop_served:
                self._serve_hop()
            if self.state == "private":
                await self._keep_reservations()
            pause = p.autonat_interval_s if self.state != "unknown" else p.autonat_retry_s
            if self.state == "private":
                pause = min(pause, p.relay_retry_s)
            await trio.sleep(pause)

    # ---------------------------------------------------- connection kinds

    def _direct_peers(self) -> list[str]:
        return [q for q in self._ctx.connected_peers() if DIRECT in self._kinds(q)]

    def _kinds(self, peer_id: str) -> set[str]:
        try:
            conns = self._ctx.libp2p.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:
            return set()
        kinds = set()
        for conn in conns:
            relayed = conn.get_connection_type() == ConnectionType.RELAYED or any(
                is_circuit_addr(a) for a in conn.get_transport_addresses()
            )
            kinds.add(RELAYED if relayed else DIRECT)
        return kinds

    def reached(self, peer_id: str) -> str | None:
        """How we are connected to ``peer_id`` now: DIRECT, RELAYED, HOLE_PUNCHED
        (a direct connection to a peer we had reached only through a relay:
        DCUtR's upgrade) or None (not connected). Direct wins over relayed."""
        kinds = self._kinds(peer_id)
        if DIRECT in kinds:
            return HOLE_PUNCHED if peer_id in self._first_relayed else DIRECT
        return RELAYED if kinds else None

    # ------------------------------------------------------- dial-back check

    def _listen_port(self) -> int | None:
        for a in self._ctx.libp2p.get_transport_addrs():
            if is_circuit_addr(a):
                continue
            try:
                return int(a.value_for_protocol("tcp"))
            except Exception:
                continue
        return None

    async def _check_reachability(self) -> None:
        p = self._ctx.params
        port = self._listen_port()
        peers = self._direct_peers()
        if port is None or not peers:
            return
        asked = random.sample(peers, min(p.autonat_peers, len(peers)))
        answers: list[bool] = []

        async def ask(peer_id: str) -> None:
            try:
                body = await self._reqresp.request(
                    peer_id,
                    AUTONAT_PROTOCOL,
                    msgpack.packb(port),
                    timeout_s=p.autonat_dial_timeout_s + p.connect_timeout_s,
                )
                ok, _ip = msgpack.unpackb(body)
            except (NetError, ValueError, TypeError, msgpack.UnpackException) as exc:
                log.debug("dial-back check by %s failed: %s", peer_id, exc)
                return
            if isinstance(ok, bool):
                answers.append(ok)

        async with trio.open_nursery() as nursery:
            for peer_id in asked:
                nursery.start_soon(ask, peer_id)
        self._ctx.count("autonat_checks")
        if not answers:
            return
        new = "public" if any(answers) else "private"
        if new != self.state:
            log.info("reachability: %s (dial-back answers: %s)", new, answers)
        self.state = new

    async def _serve_autonat(self, peer_id: str, body: bytes) -> bytes:
        if len(body) > MAX_AUTONAT_REQUEST_BYTES:
            raise ValueError("autonat request too long")
        port = msgpack.unpackb(body)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError("autonat request must be a TCP port")
        ip = self._observed_ip(peer_id)
        if ip is None:
            return msgpack.packb([None, ""])
        try:
            self._dialbacks.acquire_nowait()
        except trio.WouldBlock:
            return msgpack.packb([None, ip])
        try:
            with trio.move_on_after(self._ctx.params.autonat_dial_timeout_s):
                try:
                    stream = await trio.open_tcp_stream(ip, port)
                except OSError:
                    return msgpack.packb([False, ip])
                await stream.aclose()
                return msgpack.packb([True, ip])
            return msgpack.packb([False, ip])
        finally:
            self._dialbacks.release()

    def _observed_ip(self, peer_id: str) -> str | None:
        """The IP address ``peer_id``'s direct connection comes from."""
        if DIRECT not in self._kinds(peer_id):
            return None
        for conn in self._ctx.libp2p.get_network().get_connections(ID.from_base58(peer_id)):
            try:
                remote = conn.muxed_conn.get_remote_address()
            except Exception:
                continue
            if remote:
                return str(remote[0])
        return None

    # -------------------------------------------------------- relay service

    def _serve_hop(self) -> None:
        self.protocol.allow_hop = True
        self._ctx.libp2p.set_stream_handler(HOP_PROTOCOL, self.protocol._handle_hop_stream)
        self._hop_served = True
        log.info("serving circuit relay v2 (this node is publicly reachable)")

    def circuit_addrs_for(self, peer_id: str) -> list[str]:
        """Relayed addresses of ``peer_id`` through us (if it holds a reservation)."""
        if not self._hop_served or peer_id not in relay_reserved_peers(self.protocol):
            return []
        out = []
        for a in self._ctx.libp2p.get_transport_addrs():
            if not is_circuit_addr(a):
                out.append(f"{a}/p2p/{self._ctx.peer_id}/p2p-circuit")
        return out

    # --------------------------------------------------------- relay client

    @property
    def relays(self) -> list[str]:
        """Peers we hold a reservation with."""
        return list(self._reservations)

    async def _keep_reservations(self) -> None:
        p = self._ctx.params
        now = trio.current_time()
        connected = set(self._direct_peers())
        for relay in list(self._reservations):
            if relay not in connected:
                del self._reservations[relay]
        for relay in list(self._reservations):
            if self._reservations[relay] <= now:
                await self._reserve(relay)
        for peer_id in connected:
            if len(self._reservations) >= p.relay_reservations:
                break
            if peer_id in self._reservations or self._refused.get(peer_id, 0.0) > now:
                continue
            await self._reserve(peer_id)

    async def _reserve(self, relay: str) -> None:
        p = self._ctx.params
        nursery = self._ctx.nursery
        if nursery is None:
            return
        pid = ID.from_base58(relay)
        ok = False
        with trio.move_on_after(p.connect_timeout_s):
            try:
                stream = await self._ctx.libp2p.new_stream(pid, [HOP_PROTOCOL])
                ok = await self._transport.reserve(stream, pid, nursery)
                await stream.close()
            except Exception as exc:  # no hop protocol, refused, connection gone
                log.debug("reservation with %s failed: %r", relay, exc)
        now = trio.current_time()
        if ok:
            if relay not in self._reservations:
                self._ctx.count("relay_reservations")
                log.info("reserved a relay slot with %s", relay)
            self._reservations[relay] = now + p.relay_reservation_ttl_s * 0.5
            self._refused.pop(relay, None)
        else:
            self._reservations.pop(relay, None)
            self._refused[relay] = now + p.relay_retry_s
            while len(self._refused) > p.known_peers_max:
                self._refused.pop(next(iter(self._refused)))

    # ---------------------------------------------------------------- dialling

    async def dial_circuit(self, peer_id: str, addrs: list[multiaddr.Multiaddr]) -> None:
        """Connect to ``peer_id`` through one of its relayed ``addrs`` (in order).
        PeerUnreachable if none works."""
        last: Exception | None = None
        for addr in addrs:
            text = str(addr)
            if not text.endswith(f"/p2p/{peer_id}"):
                addr = multiaddr.Multiaddr(f"{text}/p2p/{peer_id}")
            try:
                await self._transport.dial(addr)
                self._ctx.count("relayed_dials")
                return
            except Exception as exc:
                last = exc
        raise PeerUnreachable(f"cannot reach {peer_id} through a relay: {last!r}")

    def statistics(self) -> dict[str, Any]:
        return {"reachability": self.state, "relays": self.relays}
