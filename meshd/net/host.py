"""MeshHost: meshd's only door to libp2p (gossip, request/response, discovery).

Theory of operation:
    One ``MeshHost`` wraps one py-libp2p 0.8.1 host (TCP + Noise + yamux,
    Ed25519 identity from :class:`~meshd.core.identity.Identity`), one
    GossipSub router and one Pubsub service. ``run()`` starts them in the
    order libp2p needs (listen -> pubsub -> gossipsub -> ready -> subscribe),
    reports ``started`` only then, and on exit closes the listener and every
    connection under a shielded, time-bounded scope.

    * Gossip: ``subscribe(topic, handler)``. Every inbound message passes a
      per-topic validator (size bound, blocked author, the caller's
      ``set_topic_validator`` function) before libp2p forwards it; valid,
      first-seen messages go through a bounded inbox to the handler, which
      runs in its own task so a slow handler never delays forwarding.
      ``publish`` takes turns (call order) and waits for room in the peers'
      outbound queues, so a burst is paced to what libp2p can send instead
      of being dropped.
    * Request/response: ``handle(protocol, handler)`` / ``request(...)``: one
      request and one response per stream, framed as in
      :mod:`meshd.net.framing`. The client writes and reads concurrently, so a
      server that refuses an oversized request is heard at once.
    * Discovery: bootstrap dials, then a loop that asks a few connected peers
      for their peers (``/meshd/px/1``, :mod:`meshd.net.px`) and dials the new
      ones in parallel until ``target_peers`` are connected. The loop wakes
      early when a peer connects. Optional mDNS (``NetParams.mdns``).

Rules:
- Nothing a peer sends can raise out of this module into libp2p or the
  caller's tasks: framing errors, handler exceptions and validator
  exceptions become error responses, counters and DEBUG log lines.
- Errors the caller sees are :class:`~meshd.net.errors.NetError` subclasses.
- ``run()`` never leaks an exception group: errors that arrive together with
  our own cancellation are shutdown noise (logged at DEBUG); an error without
  it (cannot listen, libp2p crashed) is raised as one ``NetError``.
- Every bound comes from :class:`~meshd.net.params.NetParams`.

py-libp2p 0.8.1 facts this module relies on (see ``shared/notes/libp2p.md``):
``host.run()`` leaves the TCP listener open, so ``host.close()`` runs inside
it; dials take ~250 ms (happy-eyeballs delay), so discovery dials in
parallel; libp2p's auto-connector would redial blocked and dead peers from
the peerstore, so it is replaced by a no-op and meshd's discovery owns all
dialing; pubsub also delivers our own publishes to our subscription, so
they are filtered out here; its per-peer outbound queue (32 entries, two per
publish) drops silently when full, so ``publish`` waits for room.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.host.exceptions import StreamFailure
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.score import ScoreParams
from libp2p.tools.anyio_service import background_trio_service

from meshd.core.identity import Identity, public_key_from_peer_id
from meshd.net import px
from meshd.net._gossip import (
    OUTBOUND_QUEUE_SIZE,
    PUBLISH_QUEUE_ENTRIES,
    MeshGossipSub,
    MeshPubsub,
    verify_sender_records_once,
)
from meshd.net.errors import (
    InvalidMessage,
    MessageTooLarge,
    NetError,
    NotRunning,
    PeerUnreachable,
    PublishDropped,
    RemoteError,
    RequestTimeout,
)
from meshd.net.framing import (
    FrameReader,
    FrameTooLarge,
    FramingError,
    Status,
    encode_request,
    encode_response,
)
from meshd.net.logs import quiet_libp2p_logs
from meshd.net.params import NetParams
from meshd.net.stats import COUNTER_NAMES, NetStats

log = logging.getLogger("meshd.net")

PX_PROTOCOL = "/meshd/px/1"
GOSSIP_PROTOCOLS = (PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID)
MAX_CONNECTIONS_PER_PEER = 2
"""libp2p connections kept per peer (two when both sides dialled at once)."""
GOSSIP_RPC_OVERHEAD_BYTES = 64 * 1024
"""Room in one pubsub RPC frame beyond the payload (signature, key, signed
peer record, control messages); larger frames reset the pubsub stream."""
DIAL_RETRIES = 1
"""libp2p's retries of a failed dial (its default, 3, makes a dead peer cost ~0.7 s)."""

GossipHandler = Callable[[str, bytes], None]


class _ProvablyInvalid:
    """A validator's verdict: reject, and hold it against the neighbour that
    handed the message over (see :data:`PROVABLY_INVALID`). Falsy."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "PROVABLY_INVALID"


PROVABLY_INVALID = _ProvablyInvalid()
"""What a topic validator returns for a message no honest neighbour would have
passed on: honest nodes validate before they forward, so a forged signature,
undecodable bytes or another author's message re-published under a new id
can only come from a neighbour that made it or forwards blindly. Such a
neighbour is blocked after ``invalid_forwarder_limit`` of them within
``invalid_forwarder_window_s``. Never use it for a verdict that depends on
local state or clocks (stale, replayed, banned author): an honest neighbour
may see those differently."""

TopicValidator = Callable[[str, bytes], bool]
"""``fn(author, data)``: truthy accepts; falsy (False, PROVABLY_INVALID) rejects."""
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]
AppScore = Callable[[str], float]


class _NoAutoDial(AutoConnector):
    """libp2p's auto-connector with dialing switched off (meshd's discovery
    owns dialing: it honours the block list and target_peers)."""

    async def maybe_connect(self) -> None:
        await trio.lowlevel.checkpoint()


class _ConnectionWatch(INotifee):
    """Forwards libp2p connection events to the host (sync, never raises)."""

    def __init__(self, host: MeshHost) -> None:
        self._host = host

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._host._on_connected(str(conn.muxed_conn.peer_id))
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()


def _parse_peer_id(peer_id: str) -> ID:
    if public_key_from_peer_id(peer_id) is None:
        raise ValueError(f"not an Ed25519 peer id: {peer_id!r}")
    return ID.from_base58(peer_id)


def _split_cancelled(
    exc: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """(the Cancelled part, everything else) of an exception or group."""
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)
    return None, exc


async def _close_stream(stream: INetStream, *, reset: bool) -> None:
    """Close (FIN) or reset (RST) a stream; shielded, never raises. Not
    time-bounded on purpose: a cancelled yamux write breaks the connection."""
    with trio.CancelScope(shield=True):
        try:
            await (stream.reset() if reset else stream.close())
        except Exception as exc:
            log.debug("closing stream failed: %r", exc)


async def _write_whole_frames(stream: INetStream, data: bytes, deadline: float) -> bool:
    """Write ``data`` and half-close; True if all of it went out.

    py-libp2p 0.8.1's yamux writes frames straight to the Noise connection
    without shielding, so a write cancelled mid-frame corrupts the whole
    connection (every later stream on it fails). The write therefore runs
    shielded; at ``deadline`` or on cancellation the stream is reset instead,
    which makes yamux stop at the next frame boundary."""
    done = trio.Event()
    ok = False

    async def write() -> None:
        nonlocal ok
        with trio.CancelScope(shield=True):
            try:
                await stream.write(data)
                await stream.close_write()
                ok = True
            except Exception as exc:
                log.debug("stream write stopped: %r", exc)
            finally:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        try:
            with trio.move_on_at(deadline):
                await done.wait()
        finally:
            if not done.is_set():
                await _close_stream(stream, reset=True)
    return ok


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
        self._pid = ID.from_base58(identity.peer_id)
        self._listen = [multiaddr.Multiaddr(a) for a in listen_addrs]
        if not self._listen:
            raise ValueError("MeshHost needs at least one listen address")
        self._bootstrap = [self._split_p2p_addr(a) for a in bootstrap]

        self._handlers: dict[str, RequestHandler] = {}
        self._subscriptions: dict[str, GossipHandler] = {}
        self._validators: dict[str, TopicValidator] = {}
        # neighbour -> times of its recent provably invalid messages (bounded)
        self._invalid_from: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._app_score: AppScore | None = None
        self._blocked: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._known: collections.OrderedDict[str, int] = collections.OrderedDict()  # -> fails
        self._inflight_in: dict[str, int] = {}
        self._out_slots: dict[str, trio.Semaphore] = {}
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[str, str, bytes]](
            params.inbox_size
        )
        self._publish_turn = trio.Lock()  # FIFO: publishes go out in call order
        self._publishes_pending = 0
        self._wake_discovery = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._state = "new"  # new -> running -> stopping -> stopped
        self._mdns_handler: Callable[[Any], None] | None = None

        self._host = self._build_libp2p_host(identity)
        verify_sender_records_once()
        self._gossipsub = MeshGossipSub(
            list(GOSSIP_PROTOCOLS),
            params.degree,
            params.degree_low,
            params.degree_high,
            heartbeat_interval=params.gossip_heartbeat_s,  # type: ignore[arg-type]
            adaptive_gossip_enabled=False,  # keep D/D_lo/D_hi exactly as configured
            score_params=ScoreParams(
                app_specific_score_fn=self._app_score_of,
                p6_appl_slack_weight=params.app_score_weight,
            ),
            rate_limit_for=params.rate_limit_for,
            on_rate_limited=self._on_rate_limited,
            on_queue_full=self._on_queue_full,
            idontwant_min_bytes=params.idontwant_min_bytes,
        )
        self._pubsub = MeshPubsub(
            self._host,
            self._gossipsub,
            seen_ttl=params.seen_ttl_s,
            max_inbound_rpc_size=params.max_gossip_bytes + GOSSIP_RPC_OVERHEAD_BYTES,
            deliver=self._on_gossip,
            on_broken_stream=self._on_broken_pubsub_stream,
            forwarder_rate_per_s=params.forwarder_rate_per_s,
            forwarder_burst=params.forwarder_burst,
            max_forwarder_buckets=4 * params.max_peers,
            on_over_budget=lambda peer: self._count("dropped_over_budget"),
        )
        self._host.get_network().register_notifee(_ConnectionWatch(self))
        self.handle(PX_PROTOCOL, self._serve_px, _internal=True)

    # ------------------------------------------------------------------ setup

    def _build_libp2p_host(self, identity: Identity) -> Any:
        p = self.params
        key = Ed25519PrivateKey.new(identity.private_bytes())
        max_conns = p.max_peers * MAX_CONNECTIONS_PER_PEER
        config = ConnectionConfig(
            max_connections=max_conns,
            min_connections=0,
            low_watermark=p.target_peers,
            high_watermark=max_conns,
            max_connections_per_peer=MAX_CONNECTIONS_PER_PEER,
            dial_timeout=p.connect_timeout_s,
            outbound_stream_protocol_negotiation_timeout=p.connect_timeout_s,
            inbound_stream_protocol_negotiation_timeout=p.connect_timeout_s,
        )
        host = new_host(
            key_pair=KeyPair(key, key.get_public_key()),
            listen_addrs=self._listen,
            enable_mDNS=p.mdns,
            connection_config=config,
        )
        if str(host.get_id()) != identity.peer_id:
            raise AssertionError("libp2p derived a different peer id from our key")
        swarm = host.get_network()
        swarm.retry_config = RetryConfig(max_retries=DIAL_RETRIES)
        swarm.auto_connector = _NoAutoDial(swarm)
        return host

    @staticmethod
    def _split_p2p_addr(addr: str) -> tuple[str, multiaddr.Multiaddr]:
        maddr = multiaddr.Multiaddr(addr)
        try:
            info = info_from_p2p_addr(maddr)
        except Exception as exc:
            raise ValueError(f"address needs a /p2p/<peer id> part: {addr!r}") from exc
        return str(info.peer_id), maddr

    # ------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``started()`` once listening, pubsub ready and
        subscribed. Raises NetError if the host cannot start or libp2p fails."""
        if self._state != "new":
            raise RuntimeError("MeshHost.run() can be called only once")
        try:
            await self._run_libp2p(task_status)
        except (KeyboardInterrupt, SystemExit):
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
            self._state = "stopped"

    async def _run_libp2p(self, task_status: Any) -> None:
        async with self._host.run(self._listen):
            try:
                async with background_trio_service(self._pubsub):
                    async with background_trio_service(self._gossipsub):
                        await self._pubsub.wait_until_ready()
                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            self._state = "running"
                            self._listen_to_mdns()
                            for peer_id in self._blocked:
                                self._pubsub.add_to_blacklist(ID.from_base58(peer_id))
                            for topic in list(self._subscriptions):
                                await self._join(topic)
                            nursery.start_soon(self._dispatch_gossip)
                            nursery.start_soon(self._discovery_loop)
                            task_status.started()
                            await trio.sleep_forever()
            finally:
                self._state = "stopping"
                self._nursery = None
                if self._mdns_handler is not None:
                    peerDiscovery.unregister_peer_discovered_handler(self._mdns_handler)
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.params.shutdown_timeout_s
                    try:
                        await self._host.close()
                    except Exception as exc:
                        log.debug("host.close() of %s failed: %r", self.peer_id, exc)

    def _listen_to_mdns(self) -> None:
        """Turn libp2p's mDNS discoveries into dial candidates. libp2p calls
        the handler from zeroconf's thread (and for every host in the
        process), so it only hops back into our trio loop."""
        if not self.params.mdns:
            return
        token = trio.lowlevel.current_trio_token()

        def on_discovered(info: Any) -> None:
            peer_id = str(info.peer_id)
            if peer_id != self.peer_id:
                try:
                    token.run_sync_soon(self._on_mdns_peer, peer_id)
                except trio.RunFinishedError:
                    pass

        self._mdns_handler = on_discovered
        peerDiscovery.register_peer_discovered_handler(on_discovered)

    def _on_mdns_peer(self, peer_id: str) -> None:
        if self._state == "running" and peer_id not in self._known:
            self._remember(peer_id)
            self._wake_discovery.set()

    def _require_running(self) -> trio.Nursery:
        if self._state != "running" or self._nursery is None:
            raise NotRunning(f"host {self.peer_id} is {self._state}, not running")
        return self._nursery

    @property
    def listen_addrs(self) -> list[str]:
        """Actual listen addresses with port and ``/p2p/<id>``; [] if not listening."""
        if self._state not in ("running", "stopping"):
            return []
        return [str(a) for a in self._host.get_addrs()]

    # ------------------------------------------------------------------ gossip

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        """Deliver ``handler(author_peer_id, data)`` for each new message on
        ``topic`` (not our own). A second call replaces the handler."""
        new = topic not in self._subscriptions
        self._subscriptions[topic] = handler
        if new and self._state == "running" and self._nursery is not None:
            self._nursery.start_soon(self._join, topic)

    async def _join(self, topic: str) -> None:
        self._pubsub.set_topic_validator(
            topic, lambda fwd, msg: self._validate(topic, fwd, msg), False
        )
        await self._pubsub.subscribe(topic)

    def set_topic_validator(self, topic: str, fn: TopicValidator) -> None:
        """``fn(author_peer_id, data) -> bool``, sync and cheap. False drops the
        message before it is delivered or forwarded (counted ``dropped_invalid``).
        Our own publish runs through it too: ``publish`` raises InvalidMessage."""
        self._validators[topic] = fn

    def _validate(self, topic: str, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        author = ID(msg.from_id)
        if author == self._pid:
            return True  # checked in publish() already
        if len(msg.data) > self.params.max_gossip_bytes:
            self._count("dropped_oversize")
            return False
        if str(author) in self._blocked or str(forwarder) in self._blocked:
            self._count("dropped_blocked")
            return False
        fn = self._validators.get(topic)
        if fn is None:
            return True
        try:
            verdict = fn(str(author), msg.data)
        except Exception as exc:
            log.debug("validator of %s raised %r; message dropped", topic, exc)
            self._count("handler_errors")
            verdict = False
        if verdict:
            return True
        self._count("dropped_invalid")
        if verdict is PROVABLY_INVALID:
            self._charge_invalid(str(forwarder))
        return False

    def _charge_invalid(self, forwarder: str) -> None:
        p = self.params
        times = self._invalid_from.get(forwarder)
        if times is None:
            times = self._invalid_from[forwarder] = collections.deque(
                maxlen=p.invalid_forwarder_limit
            )
            while len(self._invalid_from) > 4 * p.max_peers:
                self._invalid_from.popitem(last=False)
        self._invalid_from.move_to_end(forwarder)
        now = time.monotonic()
        times.append(now)
        if (
            len(times) == p.invalid_forwarder_limit
            and now - times[0] <= p.invalid_forwarder_window_s
        ):
            del self._invalid_from[forwarder]
            self._count("forwarders_blocked")
            log.warning(
                "blocking %s: it handed us %d provably invalid gossip messages within %.1f s",
                forwarder,
                p.invalid_forwarder_limit,
                now - times[0],
            )
            self.block_peer(forwarder)

    def _on_gossip(self, msg: rpc_pb2.Message) -> None:
        author = ID(msg.from_id)
        if author == self._pid:
            return
        for topic in msg.topicIDs:
            if topic not in self._subscriptions:
                continue
            try:
                self._inbox_send.send_nowait((topic, str(author), msg.data))
            except trio.WouldBlock:
                self._count("dropped_inbox_full")

    def _on_broken_pubsub_stream(self, peer: ID, exc: Exception) -> None:
        # Garbage on the pubsub stream: start afresh with a new connection
        # (discovery redials known peers), as the stream's state is unknown.
        self._count("broken_streams")
        log.debug("undecodable pubsub data from %s: %r; reconnecting", peer, exc)
        if self._nursery is not None:
            self._nursery.start_soon(self._drop_peer, str(peer))

    def _on_rate_limited(self, forwarder: ID, topic: str) -> None:
        self._count("dropped_rate_limited")
        log.debug("not forwarding %s message from %s: over its budget", topic, forwarder)

    def _on_queue_full(self, peer: ID, messages: int) -> None:
        self._count("dropped_queue_full", messages)
        log.debug("%d gossip message(s) for %s lost: its outbound queue is full", messages, peer)

    async def _dispatch_gossip(self) -> None:
        async for topic, author, data in self._inbox_recv:
            handler = self._subscriptions.get(topic)
            if handler is None:
                continue
            try:
                handler(author, data)
            except Exception:
                self._count("handler_errors")
                log.exception("gossip handler for %s raised", topic)
            else:
                self._count("delivered")

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
        p = self.params
        self._require_running()
        if len(data) > p.max_gossip_bytes:
            raise MessageTooLarge(
                f"gossip message of {len(data)} bytes exceeds max_gossip_bytes="
                f"{p.max_gossip_bytes}; send large payloads on a stream"
            )
        fn = self._validators.get(topic)
        if fn is not None and not fn(self.peer_id, data):
            raise InvalidMessage(f"our own validator for {topic!r} rejects this message")
        if self._publishes_pending >= p.max_pending_publishes:
            self._count("publish_dropped")
            raise PublishDropped(
                f"{self._publishes_pending} publishes already waiting "
                f"(max_pending_publishes={p.max_pending_publishes}); {topic} message dropped"
            )
        self._publishes_pending += 1
        try:
            async with self._publish_turn:
                self._require_running()
                most = min(p.publish_queue_entries, OUTBOUND_QUEUE_SIZE) - PUBLISH_QUEUE_ENTRIES
                stalled = await self._pubsub.wait_for_room(
                    lambda: self._gossipsub.publish_targets(topic), most, p.publish_wait_s
                )
                if stalled:
                    self._count("publish_wait_timeouts")
                    log.debug(
                        "outbound queues of %s did not drain in %g s",
                        [str(q) for q in stalled],
                        p.publish_wait_s,
                    )
                await self._pubsub.publish(topic, data)
        finally:
            self._publishes_pending -= 1
        self._count("published")

    # --------------------------------------------------------- request/response

    def handle(self, protocol: str, handler: RequestHandler, *, _internal: bool = False) -> None:
        """Serve ``protocol``: ``await handler(peer_id, request) -> response``.
        A handler exception becomes an ERROR response to the caller."""
        if not protocol.startswith("/"):
            raise ValueError(f"protocol ids start with '/': {protocol!r}")
        if protocol == PX_PROTOCOL and not _internal:
            raise ValueError(f"{PX_PROTOCOL} is reserved for peer exchange")
        self._handlers[protocol] = handler

        async def serve(stream: INetStream) -> None:
            await self._serve_stream(protocol, stream)

        self._host.set_stream_handler(TProtocol(protocol), serve)

    async def _serve_stream(self, protocol: str, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        counted = protocol != PX_PROTOCOL  # counters describe the application's traffic
        if counted:
            self._count("requests_in")
        self._inflight_in[peer] = self._inflight_in.get(peer, 0) + 1
        status, body = Status.ERROR, b"handler timed out"
        budget_s = self.params.handler_timeout_s
        try:
            with trio.move_on_after(budget_s):
                status, body = await self._answer(protocol, peer, stream)
            response = encode_response(status, body)
            if not await _write_whole_frames(stream, response, trio.current_time() + budget_s):
                status = Status.ERROR
        except Exception as exc:
            log.debug("serving %s to %s failed: %r", protocol, peer, exc)
            status = Status.ERROR
        finally:
            self._inflight_in[peer] -= 1
            if not self._inflight_in[peer]:
                del self._inflight_in[peer]
            if status != Status.OK and counted:
                self._count("requests_in_failed")
            await _close_stream(stream, reset=False)

    async def _answer(self, protocol: str, peer: str, stream: INetStream) -> tuple[Status, bytes]:
        p = self.params
        if self._refuses(peer):
            self._count("refused_peers")
            return Status.REFUSED, b"refused"
        if self._inflight_in[peer] > p.max_inflight_requests_per_peer:
            return Status.BUSY, f"more than {p.max_inflight_requests_per_peer} requests".encode()
        try:
            request = await FrameReader(stream).read_frame(p.max_request_bytes)
        except FrameTooLarge as exc:
            return Status.TOO_LARGE, str(exc).encode()
        except FramingError as exc:
            return Status.BAD_REQUEST, str(exc).encode()
        try:
            response = await self._handlers[protocol](peer, request)
        except Exception as exc:
            log.debug("handler of %s raised for %s: %r", protocol, peer, exc)
            text = f"{type(exc).__name__}: {exc}".encode(errors="replace")
            return Status.ERROR, text[: p.max_error_bytes]
        if not isinstance(response, bytes | bytearray):
            return Status.ERROR, b"handler returned a non-bytes response"
        if len(response) > p.max_response_bytes:
            return Status.ERROR, f"response of {len(response)} bytes is over the limit".encode()
        return Status.OK, bytes(response)

    async def request(
        self, peer_id: str, protocol: str, data: bytes, *, timeout_s: float | None = None
    ) -> bytes:
        """One request/response exchange with ``peer_id`` (dials if needed).

        Raises PeerUnreachable, RequestTimeout, RemoteError or MessageTooLarge."""
        self._require_running()
        pid = _parse_peer_id(peer_id)
        if pid == self._pid:
            raise ValueError("cannot send a request to ourselves")
        if len(data) > self.params.max_request_bytes:
            raise MessageTooLarge(
                f"request of {len(data)} bytes exceeds max_request_bytes="
                f"{self.params.max_request_bytes}"
            )
        if peer_id in self._blocked:
            raise PeerUnreachable(f"peer {peer_id} is blocked")
        timeout = self.params.request_timeout_s if timeout_s is None else timeout_s
        counted = protocol != PX_PROTOCOL  # counters describe the application's traffic
        if counted:
            self._count("requests_out")
        try:
            with trio.move_on_after(timeout):
                return await self._request_slot(pid, protocol, data)
            raise RequestTimeout(
                f"{protocol} request to {peer_id} got no answer within {timeout:g} s"
            )
        except NetError:
            if counted:
                self._count("requests_out_failed")
            raise

    async def _request_slot(self, pid: ID, protocol: str, data: bytes) -> bytes:
        key = str(pid)
        slots = self._out_slots.setdefault(
            key, trio.Semaphore(self.params.max_inflight_requests_per_peer)
        )
        try:
            async with slots:
                return await self._request_once(pid, protocol, data)
        finally:
            if (
                slots.value == self.params.max_inflight_requests_per_peer
                and not slots.statistics().tasks_waiting
            ):
                self._out_slots.pop(key, None)

    async def _request_once(self, pid: ID, protocol: str, data: bytes) -> bytes:
        stream = await self._open_stream(pid, protocol)
        outcome: tuple[Status, bytes] | FramingError
        try:
            # Read while writing: a server refusing an oversized request answers
            # before it has read it. Resetting the stream (finally) ends a write
            # still in progress at a frame boundary; the writer reports nothing,
            # the reader says what happened.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write_whole_frames, stream, encode_request(data), math.inf)
                try:
                    outcome = await FrameReader(stream).read_response(
                        self.params.max_response_bytes
                    )
                except FramingError as exc:
                    outcome = exc
                finally:
                    await _close_stream(stream, reset=True)
        finally:
            await _close_stream(stream, reset=True)
        return self._interpret(pid, protocol, outcome)

    def _interpret(
        self, pid: ID, protocol: str, outcome: tuple[Status, bytes] | FramingError
    ) -> bytes:
        peer = str(pid)
        if isinstance(outcome, FrameTooLarge):
            raise MessageTooLarge(f"response from {peer} on {protocol}: {outcome}")
        if isinstance(outcome, FramingError):
            if not self._host.get_network().get_connections(pid):
                raise PeerUnreachable(f"connection to {peer} lost during {protocol} request")
            raise RemoteError(f"{peer} broke the {protocol} stream: {outcome}")
        status, body = outcome
        text = body[: self.params.max_error_bytes].decode(errors="replace")
        if status == Status.OK:
            return body
        if status == Status.TOO_LARGE:
            raise MessageTooLarge(f"{peer} refused the {protocol} request: {text}")
        raise RemoteError(f"{peer} answered {protocol} with {status.name}: {text}")

    async def _open_stream(self, pid: ID, protocol: str) -> INetStream:
        network = self._host.get_network()
        had_connection = bool(network.get_connections(pid))
        try:
            try:
                return await self._host.new_stream(pid, [TProtocol(protocol)])
            except SwarmException:
                if not had_connection:
                    raise
                # The connection we held had died unnoticed: forget it, dial once.
                await network.close_peer(pid)
                return await self._host.new_stream(pid, [TProtocol(protocol)])
        except StreamFailure as exc:
            if network.get_connections(pid):
                raise RemoteError(f"{pid} does not serve {protocol}") from exc
            raise PeerUnreachable(f"cannot reach {pid}: {exc}") from exc
        except Exception as exc:  # dial failures, errors of a dying connection
            raise PeerUnreachable(f"cannot reach {pid}: {exc}") from exc

    # ------------------------------------------------------- peers and discovery

    async def connect(self, multiaddr_text: str) -> str:
        """Dial ``/ip4/../tcp/../p2p/<id>``; return the peer id. PeerUnreachable
        if the dial fails within ``connect_timeout_s``."""
        self._require_running()
        peer_id, maddr = self._split_p2p_addr(multiaddr_text)
        if peer_id == self.peer_id:
            raise ValueError("cannot connect to ourselves")
        if peer_id in self._blocked:
            raise PeerUnreachable(f"peer {peer_id} is blocked")
        self._host.get_network().unblock_peer(ID.from_base58(peer_id))  # fresh attempt
        await self._dial(peer_id, [maddr])
        return peer_id

    async def _dial(self, peer_id: str, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        self._count("dials")
        info = info_from_p2p_addr(addrs[0]) if addrs else None
        pid = ID.from_base58(peer_id)
        if addrs:
            self._host.get_peerstore().add_addrs(pid, list(addrs), self.params.known_addr_ttl_s)
        try:
            with trio.fail_after(self.params.connect_timeout_s):
                if info is not None:
                    info.addrs = list(addrs)
                    await self._host.connect(info)
                else:
                    await self._host.get_network().dial_peer(pid)
        except Exception as exc:  # dial errors, TooSlowError
            self._count("dials_failed")
            self._note_dial_failure(peer_id)
            raise PeerUnreachable(f"cannot connect to {peer_id}: {exc}") from exc
        self._remember(peer_id)

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our GossipSub mesh for ``topic`` (we forward to them)."""
        return [str(p) for p in self._gossipsub.mesh.get(topic, ())]

    def connected_peers(self) -> list[str]:
        if self._state not in ("running", "stopping"):
            return []
        return [str(p) for p in self._host.get_connected_peers()]

    def known_addrs(self, peer_id: str) -> list[str]:
        """Addresses we hold for ``peer_id`` (with ``/p2p/<id>``)."""
        try:
            addrs = self._host.get_peerstore().addrs(_parse_peer_id(peer_id))
        except Exception:
            return []
        out = []
        for a in addrs:
            text = str(a).split("/p2p/")[0]
            out.append(f"{text}/p2p/{peer_id}")
        return list(dict.fromkeys(out))

    def _remember(self, peer_id: str) -> None:
        if peer_id == self.peer_id or peer_id in self._blocked:
            return
        self._known[peer_id] = 0
        self._known.move_to_end(peer_id)
        while len(self._known) > self.params.known_peers_max:
            self._known.popitem(last=False)

    def _note_dial_failure(self, peer_id: str) -> None:
        if peer_id in self._known:
            self._known[peer_id] += 1
            if self._known[peer_id] >= self.params.max_dial_failures:
                del self._known[peer_id]  # only peer exchange can bring it back

    def _on_connected(self, peer_id: str) -> None:
        nursery = self._nursery
        if nursery is None:
            return
        if self._refuses(peer_id) or len(self._host.get_connected_peers()) > self.params.max_peers:
            self._count("refused_peers")
            nursery.start_soon(self._drop_peer, peer_id)
            return
        self._remember(peer_id)
        self._wake_discovery.set()

    async def _drop_peer(self, peer_id: str) -> None:
        try:
            await self._host.disconnect(ID.from_base58(peer_id))
        except Exception as exc:
            log.debug("disconnecting %s failed: %r", peer_id, exc)

    async def _discovery_loop(self) -> None:
        p = self.params
        while True:
            self._wake_discovery = trio.Event()
            await self._discovery_round()
            with trio.move_on_after(p.peer_exchange_interval_s):
                await self._wake_discovery.wait()
            await trio.sleep(p.peer_exchange_min_gap_s)  # coalesce bursts of wakes

    async def _dial_quietly(self, peer_id: str, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        try:
            await self._dial(peer_id, addrs)
        except PeerUnreachable as exc:
            log.debug("%s", exc)

    async def _dial_bootstrap(self) -> None:
        """Dial configured bootstrap peers we are not connected to. They are
        never forgotten, and each round is a fresh attempt (libp2p would
        otherwise refuse to redial a failed peer for 60 s)."""
        connected = set(self.connected_peers())
        todo = [
            (q, a)
            for q, a in self._bootstrap
            if q not in connected and q != self.peer_id and q not in self._blocked
        ]
        async with trio.open_nursery() as nursery:
            for peer_id, maddr in todo:
                self._host.get_network().unblock_peer(ID.from_base58(peer_id))
                nursery.start_soon(self._dial_quietly, peer_id, [maddr])

    async def _discovery_round(self) -> None:
        p = self.params
        self._enforce_app_score()
        if len(self.connected_peers()) >= p.target_peers:
            return
        await self._dial_bootstrap()
        connected = self.connected_peers()
        asked = random.sample(connected, min(p.peer_exchange_fanout, len(connected)))
        async with trio.open_nursery() as nursery:
            for peer_id in asked:
                nursery.start_soon(self._ask_for_peers, peer_id)
        connected_set = set(self.connected_peers())
        candidates = [
            k
            for k in reversed(self._known)
            if k not in connected_set and k not in self._blocked and k != self.peer_id
        ][: p.target_peers - len(connected_set)]
        limiter = trio.CapacityLimiter(p.max_parallel_dials)

        async def dial_one(peer_id: str) -> None:
            async with limiter:
                await self._dial_quietly(peer_id, [])

        async with trio.open_nursery() as nursery:
            for peer_id in candidates:
                nursery.start_soon(dial_one, peer_id)

    async def _ask_for_peers(self, peer_id: str) -> None:
        p = self.params
        try:
            body = await self.request(
                peer_id,
                PX_PROTOCOL,
                px.encode_px_request(p.max_px_peers),
                timeout_s=p.connect_timeout_s,
            )
            entries = px.decode_px_response(body, p.max_px_peers, p.max_px_addrs_per_peer)
        except (NetError, ValueError) as exc:
            log.debug("peer exchange with %s failed: %s", peer_id, exc)
            return
        self._count("px_rounds")
        store = self._host.get_peerstore()
        for other, addrs in entries:
            if other == self.peer_id or other in self._blocked:
                continue
            maddrs = [multiaddr.Multiaddr(f"{a}/p2p/{other}") for a in addrs]
            store.add_addrs(ID.from_base58(other), maddrs, p.known_addr_ttl_s)
            if other not in self._known:
                self._remember(other)

    async def _serve_px(self, peer_id: str, body: bytes) -> bytes:
        want = px.decode_px_request(body, self.params.max_px_peers)
        others = [q for q in self.connected_peers() if q != peer_id and q not in self._blocked]
        random.shuffle(others)
        entries = [(q, self.known_addrs(q)) for q in others]
        return px.encode_px_response(entries, want, self.params.max_px_addrs_per_peer)

    # ---------------------------------------------------------- reputation, blocks

    def set_app_score(self, fn: AppScore) -> None:
        """Feed meshd's reputation ``fn(peer_id) -> float`` (sync, cheap; 0 is
        neutral) into GossipSub's application-specific score, weighted by
        ``app_score_weight``; peers below ``app_score_disconnect_below`` are
        disconnected and refused."""
        self._app_score = fn

    def _app_score_of(self, peer: ID) -> float:
        fn = self._app_score
        if fn is None:
            return 0.0
        try:
            return float(fn(str(peer)))
        except Exception:
            self._count("handler_errors")
            return 0.0

    def _refuses(self, peer_id: str) -> bool:
        if peer_id in self._blocked:
            return True
        threshold = self.params.app_score_disconnect_below
        return (
            self._app_score is not None and self._app_score_of(ID.from_base58(peer_id)) < threshold
        )

    def _enforce_app_score(self) -> None:
        if self._app_score is None or self._nursery is None:
            return
        for peer_id in self.connected_peers():
            if self._refuses(peer_id):
                self._count("refused_peers")
                self._nursery.start_soon(self._drop_peer, peer_id)

    def block_peer(self, peer_id: str) -> None:
        """Disconnect ``peer_id`` and refuse its connections, streams and gossip
        from now on (for the life of this host)."""
        pid = _parse_peer_id(peer_id)
        self._blocked[peer_id] = None
        self._blocked.move_to_end(peer_id)
        self._known.pop(peer_id, None)
        running = self._state == "running" and self._nursery is not None
        while len(self._blocked) > self.params.max_blocked_peers:
            oldest, _ = self._blocked.popitem(last=False)
            if running:
                self._pubsub.remove_from_blacklist(ID.from_base58(oldest))
        if running and self._nursery is not None:
            self._pubsub.add_to_blacklist(pid)
            self._nursery.start_soon(self._drop_peer, peer_id)

    # ------------------------------------------------------------------ stats

    def _count(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    def statistics(self) -> NetStats:
        """An immutable snapshot of counters and gauges."""
        return NetStats(
            **self._counts,
            connected_peers=len(self.connected_peers()),
            known_peers=len(self._known),
        )
