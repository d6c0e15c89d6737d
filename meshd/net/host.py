"""MeshHost: meshd's only door to libp2p (gossip, request/response, discovery).

Theory of operation:
    One ``MeshHost`` wraps one py-libp2p 0.8.1 host (TCP + Noise + yamux,
    Ed25519 identity from :class:`~meshd.core.identity.Identity`) and is a
    thin facade over parts that hold one idea each:

    * :mod:`meshd.net.gossip` -- topics: validation, delivery through a
      bounded inbox, paced publishing;
    * :mod:`meshd.net.reqresp` -- request/response streams;
    * :mod:`meshd.net.channels` -- persistent channels: many calls per stream;
    * :mod:`meshd.net.discovery` -- bootstrap, peer exchange, mDNS, dialling;
    * :mod:`meshd.net.dht` -- the Kademlia DHT, a second discovery source;
    * :mod:`meshd.net.relay` -- reachability (dial-back check), circuit relay v2;
    * :mod:`meshd.net.standing` -- app score, block list, forgery charges;
    * :mod:`meshd.net.libp2p_hooks` -- every override of py-libp2p internals;
    * :mod:`meshd.net.context` -- what the parts share (counters, nursery).

    This module owns the lifecycle. ``run()`` starts libp2p in the order it
    needs (listen -> pubsub -> gossipsub -> ready -> subscribe), reports
    ``started`` only then, and on exit closes the listener and every
    connection under a shielded, time-bounded scope (``host.run()`` alone
    leaves the TCP listener open in 0.8.1).

Rules:
- Nothing a peer sends can raise out of ``meshd.net`` into libp2p or the
  caller's tasks: framing errors, handler exceptions and validator
  exceptions become error responses, counters and DEBUG log lines.
- Errors the caller sees are :class:`~meshd.net.errors.NetError` subclasses.
- ``run()`` never leaks an exception group: errors that arrive together with
  our own cancellation are shutdown noise (logged at DEBUG); an error without
  it (cannot listen, libp2p crashed) is raised as one ``NetError``.
- Every bound comes from :class:`~meshd.net.params.NetParams`.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.network.config import ConnectionConfig
from libp2p.tools.anyio_service import background_trio_service

from meshd.core.identity import Identity
from meshd.net.channels import Channels
from meshd.net.context import HostContext
from meshd.net.dht import Dht
from meshd.net.discovery import Discovery, concrete_addrs, interface_ipv4s
from meshd.net.errors import ListenError, NetError
from meshd.net.gossip import Gossip, GossipHandler, TopicValidator
from meshd.net.libp2p_hooks import (
    advertise_concrete_mdns_addrs,
    batch_yamux_window_updates,
    fit_yamux_frames_to_noise,
    limit_dht_messages,
    take_over_dialing,
)
from meshd.net.logs import quiet_libp2p_logs
from meshd.net.params import NetParams
from meshd.net.px import PX_PROTOCOL
from meshd.net.relay import Relay
from meshd.net.reqresp import RequestHandler, RequestResponse
from meshd.net.standing import PROVABLY_INVALID, AppScore, Standing
from meshd.net.stats import NetStats

log = logging.getLogger("meshd.net")

__all__ = [
    "PROVABLY_INVALID",
    "PX_PROTOCOL",
    "AppScore",
    "GossipHandler",
    "MeshHost",
    "RequestHandler",
    "TopicValidator",
]


def _split_cancelled(
    exc: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """(the Cancelled part, everything else) of an exception or group."""
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)
    return None, exc


def check_listen_addr_free(addr: multiaddr.Multiaddr) -> None:
    """Raise :class:`ListenError` if a socket already listens on ``addr``.

    py-libp2p 0.8.1 binds its listener with ``SO_REUSEPORT`` (DCUtR dials from
    the listen port), so a second daemon on a taken port would bind it too and
    share the first one's connections. A probe bound *without* ``SO_REUSEPORT``
    (with ``SO_REUSEADDR``, so a port in TIME_WAIT is still free) fails while
    any other socket listens there. Port 0 and DNS names are not probed. Two
    daemons started at the very same moment can both pass the probe; one
    started against a running daemon cannot."""
    family = None
    for proto, fam in (("ip4", socket.AF_INET), ("ip6", socket.AF_INET6)):
        try:
            ip = addr.value_for_protocol(proto)
        except Exception:
            continue
        family = fam
        break
    try:
        port = int(addr.value_for_protocol("tcp"))
    except Exception:
        return
    if family is None or port == 0:
        return
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((ip, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"cannot listen on {addr}: the address is already in use "
                "(another meshd or program listens there; choose another port with --listen)"
            ) from None
        raise ListenError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    finally:
        probe.close()


def uses_mdns(params: NetParams, listen: Sequence[multiaddr.Multiaddr]) -> bool:
    """Whether a host runs mDNS: ``params.mdns`` and at least one listen
    address off loopback. A node that listens only on loopback cannot be
    reached from its link, and advertising 127.0.0.1 would only join it to
    unrelated nodes on the same machine (tests, demos)."""
    if not params.mdns:
        return False
    for addr in listen:
        text = str(addr)
        if not (text.startswith(("/ip4/127.", "/ip6/::1/")) or "/dns/localhost/" in text):
            return True
    return False


def _build_libp2p_host(
    identity: Identity, params: NetParams, listen: list[multiaddr.Multiaddr]
) -> Any:
    p = params
    key = Ed25519PrivateKey.new(identity.private_bytes())
    max_conns = p.max_peers * p.max_connections_per_peer
    config = ConnectionConfig(
        max_connections=max_conns,
        min_connections=0,
        low_watermark=p.target_peers,
        high_watermark=max_conns,
        max_connections_per_peer=p.max_connections_per_peer,
        dial_timeout=p.connect_timeout_s,
        outbound_stream_protocol_negotiation_timeout=p.connect_timeout_s,
        inbound_stream_protocol_negotiation_timeout=p.connect_timeout_s,
    )
    host = new_host(
        key_pair=KeyPair(key, key.get_public_key()),
        listen_addrs=listen,
        enable_mDNS=uses_mdns(p, listen),
        connection_config=config,
    )
    if str(host.get_id()) != identity.peer_id:
        raise AssertionError("libp2p derived a different peer id from our key")
    take_over_dialing(host.get_network(), p.dial_retries)
    advertise_concrete_mdns_addrs(host, lambda addrs: concrete_addrs(addrs, interface_ipv4s()))
    fit_yamux_frames_to_noise()
    batch_yamux_window_updates()
    if p.dht:
        limit_dht_messages(p.dht_max_message_bytes)
    return host


class MeshHost:
    """A libp2p host speaking meshd's gossip topics and stream protocols."""

    def __init__(
        self,
        identity: Identity,
        params: NetParams,
        listen_addrs: Sequence[str],
        bootstrap: Sequence[str] = (),
    ) -> None:
        quiet_libp2p_logs()
        self.params = params
        self.peer_id: str = identity.peer_id
        self._listen = [multiaddr.Multiaddr(a) for a in listen_addrs]
        if not self._listen:
            raise ValueError("MeshHost needs at least one listen address")
        self._ctx = ctx = HostContext(
            identity, params, _build_libp2p_host(identity, params, self._listen)
        )
        self._standing = Standing(ctx)
        self._gossip = Gossip(ctx, self._standing)
        self._reqresp = RequestResponse(ctx, self._standing)
        self._channels = Channels(ctx, self._standing, self._reqresp)
        self._relay = Relay(ctx, self._reqresp)
        self._discovery = Discovery(ctx, self._standing, self._reqresp, bootstrap, self._relay)
        self._dht: Dht | None = None
        if params.dht:
            self._dht = Dht(
                ctx,
                self._standing,
                reachability=lambda: self._relay.state,
                short=self._discovery.short,
                found=self._discovery.add_candidates,
            )
            self._discovery.on_connected(self._dht.on_connected)
        # The libp2p objects, for tests that drive them directly.
        self._host = ctx.libp2p
        self._pid = ctx.pid
        self._pubsub = self._gossip.pubsub
        self._gossipsub = self._gossip.router

    # ------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``started()`` once listening, pubsub ready and
        subscribed. Raises ListenError if a listen address is taken (or not
        ours), NetError if the host cannot start or libp2p fails."""
        if self._ctx.state != "new":
            raise RuntimeError("MeshHost.run() can be called only once")
        try:
            for addr in self._listen:
                check_listen_addr_free(addr)
            await self._run_libp2p(task_status)
        except (KeyboardInterrupt, SystemExit, ListenError):
            raise
        except BaseException as exc:
            cancelled, other = _split_cancelled(exc)
            if other is not None and cancelled is None:
                raise NetError(f"libp2p host failed: {other!r}") from other
            if other is not None:
                log.debug("errors during shutdown of %s suppressed: %r", self.peer_id, other)
            assert cancelled is not None
            raise cancelled from None
        finally:
            self._ctx.state = "stopped"

    async def _run_libp2p(self, task_status: Any) -> None:
        ctx = self._ctx
        pubsub, router = self._gossip.services()
        async with ctx.libp2p.run(self._listen):
            try:
                async with background_trio_service(pubsub):
                    async with background_trio_service(router):
                        await pubsub.wait_until_ready()
                        async with (
                            background_trio_service(self._relay.protocol),
                            self._relay.hole_punching(),
                            trio.open_nursery() as nursery,
                        ):
                            ctx.nursery = nursery
                            ctx.state = "running"
                            self._discovery.listen_to_mdns(uses_mdns(self.params, self._listen))
                            await self._gossip.start(nursery)
                            self._discovery.start(nursery)
                            self._relay.start(nursery)
                            if self._dht is not None:
                                self._dht.start(nursery)
                            task_status.started()
                            await trio.sleep_forever()
            finally:
                ctx.state = "stopping"
                ctx.nursery = None
                self._discovery.stop()
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.params.shutdown_timeout_s
                    try:
                        await ctx.libp2p.close()
                    except Exception as exc:
                        log.debug("host.close() of %s failed: %r", self.peer_id, exc)

    @property
    def listen_addrs(self) -> list[str]:
        """Actual listen addresses with port and ``/p2p/<id>``; [] if not listening."""
        if self._ctx.state not in ("running", "stopping"):
            return []
        return [str(a) for a in self._ctx.libp2p.get_addrs()]

    # ------------------------------------------------------------------ gossip

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        """Deliver ``handler(author_peer_id, data)`` for each new message on
        ``topic`` (not our own). A second call replaces the handler."""
        self._gossip.subscribe(topic, handler)

    def want_peers(self, fn: Callable[[str], bool]) -> None:
        """Discovery keeps ``wanted_peers`` of the peers ``fn(peer_id)``
        accepts connected, besides ``target_peers`` in all (meshd: the peers of
        its advert shard, whose topic only they share)."""
        self._discovery.wanted = fn

    def unsubscribe(self, topic: str) -> None:
        """Stop delivering ``topic`` and leave its GossipSub mesh (publishing
        on it still works, through fanout)."""
        self._gossip.unsubscribe(topic)

    def subscribed(self) -> list[str]:
        """The topics this host subscribes to."""
        return self._gossip.subscribed()

    def set_topic_validator(self, topic: str, fn: TopicValidator) -> None:
        """``fn(author_peer_id, data) -> bool``, sync and cheap. False drops the
        message before it is delivered or forwarded (counted ``dropped_invalid``).
        Our own publish runs through it too: ``publish`` raises InvalidMessage."""
        self._gossip.set_topic_validator(topic, fn)

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic``; returns once it is queued for every
        peer it goes to. MessageTooLarge over max_gossip_bytes; PublishDropped
        when ``max_pending_publishes`` publishes are already waiting.

        py-libp2p 0.8.1 queues outbound RPCs per peer in 32 entries and drops
        silently when full, and a burst of publishes never lets the sending
        task run: an unpaced burst of 100 reached a peer as 16. So publishes
        take turns (in call order) and each waits, up to ``publish_wait_s``,
        until its peers' queues have room (``publish_queue_entries``). A peer
        that does not drain in that time misses the message (counted
        ``dropped_queue_full``) and is not waited for until its queue moves."""
        await self._gossip.publish(topic, data)

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our GossipSub mesh for ``topic`` (we forward to them)."""
        return self._gossip.mesh_peers(topic)

    # --------------------------------------------------------- request/response

    def handle(self, protocol: str, handler: RequestHandler, *, _internal: bool = False) -> None:
        """Serve ``protocol``: ``await handler(peer_id, request) -> response``.
        A handler exception becomes an ERROR response to the caller."""
        self._reqresp.handle(protocol, handler, internal=_internal)

    async def request(
        self, peer_id: str, protocol: str, data: bytes, *, timeout_s: float | None = None
    ) -> bytes:
        """One request/response exchange with ``peer_id`` (dials if needed).

        Raises PeerUnreachable, RequestTimeout, RemoteError or MessageTooLarge."""
        return await self._reqresp.request(peer_id, protocol, data, timeout_s=timeout_s)

    def handle_channel(self, protocol: str, handler: RequestHandler) -> None:
        """Serve ``protocol`` as a persistent channel (:mod:`meshd.net.channels`):
        each call is ``await handler(peer_id, call) -> answer``, as in
        :meth:`handle`."""
        self._channels.handle(protocol, handler)

    async def call(
        self,
        peer_id: str,
        protocol: str,
        data: bytes,
        *,
        fallback: str,
        timeout_s: float | None = None,
    ) -> bytes:
        """One call on our persistent channel to ``peer_id`` (opened if needed);
        as one request on ``fallback`` if the peer does not serve ``protocol``.

        Raises PeerUnreachable, RequestTimeout, RemoteError or MessageTooLarge."""
        return await self._channels.call(
            peer_id, protocol, data, fallback=fallback, timeout_s=timeout_s
        )

    # ------------------------------------------------------- peers and discovery

    async def connect(self, multiaddr_text: str) -> str:
        """Dial ``/ip4/../tcp/../p2p/<id>``; return the peer id. PeerUnreachable
        if the dial fails within ``connect_timeout_s``."""
        return await self._discovery.connect(multiaddr_text)

    def connected_peers(self) -> list[str]:
        return self._ctx.connected_peers()

    @property
    def reachability(self) -> str:
        """``unknown``, ``public`` or ``private``: what the dial-back check says
        about this node (see :mod:`meshd.net.relay`)."""
        return self._relay.state

    def reached(self, peer_id: str) -> str | None:
        """How we are connected to ``peer_id`` now: ``unreachable`` if our
        last dial, request or call to it failed (connected or not), else
        ``direct``, ``relayed``, ``hole-punched`` or None (not connected)."""
        if peer_id in self._ctx.unreachable:
            return "unreachable"
        return self._relay.reached(peer_id)

    def connection_kind(self, peer_id: str) -> str | None:
        """How our connections to ``peer_id`` carry traffic now, whatever
        the last request said: ``direct``, ``relayed``, ``hole-punched`` or
        None (not connected)."""
        return self._relay.reached(peer_id)

    @property
    def relays(self) -> list[str]:
        """Peers we hold a relay reservation with."""
        return self._relay.relays

    def known_addrs(self, peer_id: str) -> list[str]:
        """Addresses we hold for ``peer_id`` (with ``/p2p/<id>``)."""
        return self._discovery.known_addrs(peer_id)

    # ---------------------------------------------------------- reputation, blocks

    def set_app_score(self, fn: AppScore) -> None:
        """Feed meshd's reputation ``fn(peer_id) -> float`` (sync, cheap; 0 is
        neutral) into GossipSub's application-specific score, weighted by
        ``app_score_weight``; peers below ``app_score_disconnect_below`` are
        disconnected and refused."""
        self._standing.set_app_score(fn)

    def block_peer(self, peer_id: str) -> None:
        """Disconnect ``peer_id`` and refuse its connections, streams and gossip
        from now on (for the life of this host)."""
        self._standing.block_peer(peer_id)

    # ------------------------------------------------------------------ stats

    def statistics(self) -> NetStats:
        """An immutable snapshot of counters and gauges."""
        return NetStats(
            **self._ctx.counts,
            connected_peers=len(self.connected_peers()),
            known_peers=self._discovery.known_peers,
        )

    def queue_stats(self) -> dict[str, int]:
        """Current lengths of the queues on the network path (cheap: no I/O,
        one pass over the per-peer queues). Keys:

        - ``pubsub_outbound_total``: RPCs waiting in all of py-libp2p's
          per-peer pubsub outbound queues (each holds at most 32).
        - ``pubsub_outbound_max_peer``: RPCs waiting in the fullest one.
        - ``pubsub_writing``: RPCs taken from those queues whose write to the
          peer's stream has not finished yet.
        - ``gossip_inbox``: received gossip messages waiting to be handed to
          the subscribers' handlers (at most ``inbox_size``).
        - ``publishes_waiting``: our publishes accepted and not yet handed to
          libp2p: waiting their turn or for room in the outbound queues (at
          most ``max_pending_publishes``).
        - ``requests_in_serving``: inbound request streams being served now
          (peer exchange included).
        - ``requests_out_inflight``: outbound requests started and not yet
          finished (peer exchange included).
        """
        return (
            self._gossip.queue_stats() | self._reqresp.queue_stats() | self._channels.queue_stats()
        )
