"""Every place meshd overrides or patches py-libp2p internals (and only here).

Theory of operation:
    py-libp2p 0.8.1 does several things meshd cannot live with (silent drops,
    host-killing exceptions, per-RPC signature checks, redials of blocked
    peers). Each fix is a narrow override of one library hook, listed below;
    the rest of ``meshd.net`` uses these subclasses and functions and calls
    only py-libp2p's public API. When py-libp2p is upgraded, this file is the
    whole list to re-check.

Hooks (what it overrides -- why -- checked against libp2p 0.8.1):
- ``GossipSub._check_spam_protection`` -- per-topic forwarding budget instead of one 10 msg/s limit
  for every topic, own publishes exempt, every drop reported -- checked against libp2p 0.8.1.
- ``GossipSub.publish`` -- marks small messages so no IDONTWANT goes out for them (py-libp2p
  sends one to every mesh peer for every message; go-libp2p only from 1 KiB)
  -- checked against libp2p 0.8.1.
- ``GossipSub._emit_idontwant_for_message`` -- skips the messages ``publish`` marked
  -- checked against libp2p 0.8.1.
- ``GossipSub.remove_peer`` -- also forgets the gone peer's rate windows
  -- checked against libp2p 0.8.1.
- ``GossipSub._handle_dropped_rpc`` -- reports messages a full outbound queue dropped (the
  library only logs them at DEBUG) -- checked against libp2p 0.8.1.
- ``Pubsub.handle_sending_messages`` -- hands the sending loop a queue view that signals each pop,
  so a publish can wait for room instead of being dropped -- checked against libp2p 0.8.1.
- ``Pubsub.notify_subscriptions`` -- delivers to one callback instead of a 32-slot channel per
  topic that drops silently -- checked against libp2p 0.8.1.
- ``Pubsub.push_msg`` -- charges a per-neighbour token bucket before any signature check
  -- checked against libp2p 0.8.1.
- ``Pubsub._teardown_if_connected`` -- tolerates a peer that disconnects while being
  blacklisted (the library's ``del`` raises KeyError and kills the host)
  -- checked against libp2p 0.8.1.
- ``Pubsub.stream_handler`` -- contains protobuf's DecodeError from an undecodable RPC (it
  escapes and takes the swarm down) -- checked against libp2p 0.8.1.
- ``libp2p.pubsub.{pubsub,gossipsub}.maybe_consume_signed_record`` (module function, patched
  process-wide) -- verifies a peer's unchanged signed peer record once, not on every RPC
  -- checked against libp2p 0.8.1.
- ``AutoConnector.maybe_connect`` -- no-op: meshd's discovery owns dialing (the library would
  redial blocked and dead peers) -- checked against libp2p 0.8.1.
- ``RelayResourceManager._reservations`` (read only) -- which peers hold a relay reservation
  with us, to list their relayed addresses in peer exchange (the library has no accessor)
  -- checked against libp2p 0.8.1.
- ``Swarm.retry_config`` (attribute) -- fewer dial retries (the default 3 makes a dead peer
  cost ~0.7 s) -- checked against libp2p 0.8.1.
- ``Swarm.auto_connector`` (attribute) -- installs the no-op auto-connector above
  -- checked against libp2p 0.8.1.
- ``PeerBroadcaster._resolve_host_addrs`` (instance attribute of the host's mDNS broadcaster)
  -- a wildcard listen address (``/ip4/0.0.0.0``) is advertised as the interfaces' addresses:
  the library puts it in the TXT records as is, and a peer that dials ``0.0.0.0`` reaches
  its own listener (on the same port, as in containers) and fails the security handshake
  -- checked against libp2p 0.8.1.
- ``libp2p.stream_muxer.yamux.yamux.MAX_MESSAGE_SIZE`` (module constant, process-wide) --
  yamux frames of at most one Noise message (65519 bytes, not 64 KiB, which Noise splits
  into a full message and a 29-byte one): half the Noise messages, encryptions and reads
  per byte of a bulk transfer (blobs); smaller frames are always valid yamux
  -- checked against libp2p 0.8.1.
- ``YamuxStream._auto_tune_and_send_window_update`` (method, patched process-wide) -- receive
  credit goes back in one WINDOW_UPDATE once half the stream's window is consumed, as go-yamux
  does, instead of after every read: py-libp2p 0.8.1 sends one for each read (2.8 per message
  on meshd's streams, then 1.0 with its ``PY_YAMUX_RELEASE_ON_READ=0``), which doubles the
  frames, encryptions and wake-ups of every small message; the window and its auto-tuning are
  unchanged, and the peer's view of flow control is the yamux spec's -- checked against libp2p 0.8.1.
- ``libp2p.kad_dht.peer_routing.MAX_DHT_MESSAGE_SIZE`` (module constant, process-wide) --
  a DHT lookup reads each answer up to ``NetParams.dht_max_message_bytes`` (64 KiB), not 4 MiB:
  every peer an answer names is stored in the peerstore, so the cap bounds what one
  answer can add -- checked against libp2p 0.8.1.

Rules: the callbacks are synchronous and must not raise; the host's parts own
them. Reading public attributes (``peer_queues``, ``mesh``, ``fanout``) is not a
hook, but reads of library state for meshd are also kept here.
"""

from __future__ import annotations

import collections
import math
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, cast

import libp2p.kad_dht.peer_routing as _libp2p_kad_routing
import libp2p.pubsub.gossipsub as _libp2p_gossipsub
import libp2p.pubsub.pubsub as _libp2p_pubsub
import libp2p.security.noise.io as _libp2p_noise_io
import libp2p.stream_muxer.yamux.yamux as _libp2p_yamux
import trio
from libp2p.abc import INetStream
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import RetryConfig
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import OutBoundQueueSize, RpcQueue

from meshd.core.ratelimit import PeerBuckets

PUBLISH_QUEUE_ENTRIES = 2
"""Most outbound queue entries one own publish takes per mesh peer in
py-libp2p 0.8.1: the message, and (at or above ``idontwant_min_bytes``) an
IDONTWANT control message about it."""
OUTBOUND_QUEUE_SIZE = OutBoundQueueSize
"""Capacity of libp2p's per-peer outbound queue (32 in 0.8.1)."""


class MeshGossipSub(GossipSub):
    """GossipSub with per-topic forwarding budgets and counted drops."""

    def __init__(
        self,
        *args: Any,
        rate_limit_for: Callable[[str], float],
        rate_window_s: float,
        on_rate_limited: Callable[[ID, str], None],
        on_queue_full: Callable[[ID, int], None],
        idontwant_min_bytes: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._idontwant_min_bytes = idontwant_min_bytes
        self._no_idontwant: set[bytes] = set()  # ids of small messages being published now
        self._rate_limit_for = rate_limit_for
        self._rate_window_s = rate_window_s
        self._on_rate_limited = on_rate_limited
        self._on_queue_full = on_queue_full
        # (forwarder, topic) -> arrival times within the window
        self._windows: dict[tuple[ID, str], collections.deque[float]] = {}

    def _check_spam_protection(self, peer_id: ID, msg: rpc_pb2.Message) -> bool:
        if self.pubsub is not None and peer_id == self.pubsub.my_id:
            return True  # our own publishes are never throttled here
        now = time.monotonic()
        for topic in msg.topicIDs:
            window = self._windows.setdefault((peer_id, topic), collections.deque())
            while window and window[0] <= now - self._rate_window_s:
                window.popleft()
            if len(window) >= self._rate_limit_for(topic):
                self._on_rate_limited(peer_id, topic)
                return False
            window.append(now)
        return True

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        # A small message costs a peer less to receive twice than one IDONTWANT
        # RPC per mesh peer costs every receiver (each RPC carries and has
        # verified a signed peer record in 0.8.1); go-libp2p's threshold is 1 KiB.
        if self.pubsub is None or pubsub_msg.ByteSize() >= self._idontwant_min_bytes:
            await super().publish(msg_forwarder, pubsub_msg)
            return
        msg_id = self.pubsub.get_message_id(pubsub_msg)
        self._no_idontwant.add(msg_id)
        try:
            await super().publish(msg_forwarder, pubsub_msg)
        finally:
            self._no_idontwant.discard(msg_id)

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        if msg_id in self._no_idontwant:
            return
        await super()._emit_idontwant_for_message(msg_id, topic_ids)

    def remove_peer(self, peer_id: ID) -> None:
        super().remove_peer(peer_id)
        for key in [k for k in self._windows if k[0] == peer_id]:
            del self._windows[key]

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        # send_rpc calls this for every chunk a full (or oversize-refusing)
        # outbound queue rejected; libp2p itself only logs it at DEBUG.
        super()._handle_dropped_rpc(peer_id, rpc, reason)
        if rpc.publish:
            self._on_queue_full(peer_id, len(rpc.publish))

    def publish_targets(self, topic: str) -> set[ID]:
        """Peers a publish on ``topic`` is queued for (a superset when the
        topic has neither mesh nor fanout yet: all its subscribers)."""
        assert self.pubsub is not None
        peers = set(self.mesh.get(topic) or self.fanout.get(topic) or ())
        if not peers:
            peers = set(self.pubsub.peer_topics.get(topic, ()))
        return peers | set(self.direct_peers)


class MeshPubsub(Pubsub):
    """Pubsub that delivers to one synchronous callback, never to a channel,
    and survives a peer's garbage on the pubsub stream."""

    def __init__(
        self,
        *args: Any,
        deliver: Callable[[rpc_pb2.Message], None],
        on_broken_stream: Callable[[ID, Exception], None],
        forwarder_rate_per_s: float = math.inf,
        forwarder_burst: float = math.inf,
        max_forwarder_buckets: int,
        on_over_budget: Callable[[ID], None] = lambda peer: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._deliver = deliver
        self._on_broken_stream = on_broken_stream
        self._budget = PeerBuckets(forwarder_rate_per_s, forwarder_burst, max_forwarder_buckets)
        self._on_over_budget = on_over_budget
        self._queue_moved = trio.Event()  # set (and replaced) whenever a peer queue pops
        self._stalled: set[ID] = set()  # peers whose full queue did not drain in time
        self.writing = 0  # RPCs popped from a queue whose write has not returned

    # ------------------------------------------------- outbound back-pressure

    async def handle_sending_messages(
        self, peer_id: ID, stream: INetStream, queue: RpcQueue
    ) -> None:
        # libp2p's sending loop only pops from the queue; hand it a view that
        # reports each pop, so publishers waiting for room wake up.
        view = _PopSignallingQueue(queue, lambda: self._on_queue_pop(peer_id))
        await super().handle_sending_messages(peer_id, stream, cast(RpcQueue, view))

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        # counted, so a clean shutdown can wait until what it queued was written
        self.writing += 1
        try:
            return await super().write_msg(stream, rpc_msg)
        finally:
            self.writing -= 1

    def _on_queue_pop(self, peer_id: ID) -> None:
        self._stalled.discard(peer_id)
        self._queue_moved.set()
        self._queue_moved = trio.Event()

    def crowded_peers(self, peers: Iterable[ID], most_entries: int) -> list[ID]:
        """Those of ``peers`` (not stalled) whose outbound queue holds more
        than ``most_entries``."""
        self._stalled.intersection_update(self.peer_queues)
        crowded = []
        for peer in peers:
            queue = self.peer_queues.get(peer)
            if queue is not None and peer not in self._stalled and len(queue) > most_entries:
                crowded.append(peer)
        return crowded

    async def wait_for_room(
        self, peers: Callable[[], Iterable[ID]], most_entries: int, timeout_s: float
    ) -> list[ID]:
        """Wait until no queue of ``peers()`` holds more than ``most_entries``
        or ``timeout_s`` passes; then return the peers still crowded, marked
        stalled (not waited for again until their queue moves)."""
        with trio.move_on_after(timeout_s):
            while self.crowded_peers(peers(), most_entries):
                await self._queue_moved.wait()
            return []
        crowded = self.crowded_peers(peers(), most_entries)
        self._stalled.update(crowded)
        return crowded

    def outbound_queue_lengths(self) -> tuple[int, int]:
        """(entries in all per-peer outbound queues, entries in the fullest one)."""
        lengths = [len(q) for q in self.peer_queues.values()]
        return sum(lengths), max(lengths, default=0)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._deliver(publish_message)

    # ------------------------------------------------- inbound budget

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        # py-libp2p checks the message's signature (strict signing), then our
        # validator opens and verifies the envelope: two Ed25519 checks per
        # message before GossipSub's own per-topic limit looks at it.
        if msg_forwarder != self.my_id and not self._budget.take(
            msg_forwarder, int(time.monotonic() * 1000)
        ):
            self._on_over_budget(msg_forwarder)
            return
        await super().push_msg(msg_forwarder, msg)

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        # py-libp2p 0.8.1's add_to_blacklist schedules this teardown, which
        # resets the peer's stream and then does ``del self.peers[peer_id]``.
        # When the peer disconnects meanwhile (MeshHost.block_peer hangs up on
        # it at the same moment) the disconnect has already removed the entry,
        # the del raises KeyError, pubsub's task manager fails and takes the
        # host down - the daemon died as soon as it banned a lying worker.
        # Tolerate the race and also clear the router and queue state the
        # library's own teardown leaves behind.
        stream = self.peers.get(peer_id)
        if stream is not None:
            try:
                await stream.reset()
            except Exception:
                pass
        if self.peers.pop(peer_id, None) is not None:
            queue = self.peer_queues.pop(peer_id, None)
            if queue is not None:
                queue.close()
            if self.router is not None:
                self.router.remove_peer(peer_id)
        self._forget_all_subscriptions(peer_id)

    async def stream_handler(self, stream: INetStream) -> None:
        # py-libp2p 0.8.1 catches only its own parse errors here; protobuf's
        # DecodeError (any undecodable RPC) escapes and takes the whole swarm
        # down. It also happens between honest py-libp2p peers: two of its
        # writers can interleave yamux frames of one RPC on the same stream.
        try:
            await super().stream_handler(stream)
        except Exception as exc:
            peer_id = stream.muxed_conn.peer_id
            try:
                await stream.reset()
            except Exception:
                pass
            self._handle_dead_peer(peer_id)
            self._on_broken_stream(peer_id, exc)


class _PopSignallingQueue:
    """The consumer's view of an :class:`RpcQueue` (``pop`` only) that calls
    ``on_pop`` after each item it hands out, and when the queue closes (the
    peer is gone, so nobody need wait for it)."""

    def __init__(self, queue: RpcQueue, on_pop: Callable[[], None]) -> None:
        self._queue = queue
        self._on_pop = on_pop

    async def pop(self) -> rpc_pb2.RPC | None:
        item = await self._queue.pop()
        self._on_pop()
        return item


# ------------------------------------------------------- signed peer records


class _RecordMemo(collections.OrderedDict[ID, bytes]):
    """Last verified signed peer record per peer, at most ``max_peers`` peers."""

    def __init__(self, max_peers: int) -> None:
        super().__init__()
        self.max_peers = max_peers


_consume_signed_record = _libp2p_pubsub.maybe_consume_signed_record
# peerstore -> (peer -> the last signed record accepted from it), per meshd host
_verified_records: weakref.WeakKeyDictionary[Any, _RecordMemo] = weakref.WeakKeyDictionary()


def _consume_signed_record_once(msg: rpc_pb2.RPC, host: Any, peer_id: ID) -> bool:
    """py-libp2p 0.8.1 attaches the sender's signed peer record (~213 bytes) to
    every pubsub RPC and verifies its Ed25519 signature and stores it each
    time. The record only changes when the sender's addresses do: a record
    byte-identical to the last one this host accepted from the same peer is
    accepted without checking it again (anything else goes to the library).
    Hosts without a memo (:func:`remember_sender_records`) always ask the library."""
    if not msg.HasField("senderRecord"):
        return True
    record = msg.senderRecord
    try:
        memo = _verified_records.get(host.get_peerstore())
    except TypeError:  # a peerstore that cannot be weakly referenced: no memo
        memo = None
    if memo is None:
        return bool(_consume_signed_record(msg, host, peer_id))
    if memo.get(peer_id) == record:
        memo.move_to_end(peer_id)
        return True
    ok = bool(_consume_signed_record(msg, host, peer_id))
    if ok:
        memo[peer_id] = record
        memo.move_to_end(peer_id)
        while len(memo) > memo.max_peers:
            memo.popitem(last=False)
    return ok


class _LocalRecord:
    """Our own signed peer record as last handed out, and when (monotonic s)."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.taken_s = -math.inf
        self.data = b""


_env_to_send = _libp2p_gossipsub.env_to_send_in_RPC
# libp2p host -> our record as last attached to an RPC, per meshd host
_local_records: weakref.WeakKeyDictionary[Any, _LocalRecord] = weakref.WeakKeyDictionary()


def _env_to_send_reused(host: Any) -> tuple[bytes, bool]:
    """py-libp2p 0.8.1 calls ``env_to_send_in_RPC`` for every RPC gossipsub
    publishes or forwards: it rebuilds the host's listen addresses as
    multiaddrs (parsing strings, base58) to compare them with its cached
    record. Within ``max_age_s`` of the last call the same bytes are
    returned; hosts without a memo (:func:`reuse_local_record`) always ask the
    library."""
    try:
        memo = _local_records.get(host)
    except TypeError:  # a host that cannot be weakly referenced: no memo
        memo = None
    if memo is None:
        return _env_to_send(host)
    now = time.monotonic()
    if memo.data and now - memo.taken_s < memo.max_age_s:
        return memo.data, False
    data, new = _env_to_send(host)
    memo.taken_s, memo.data = now, data
    return data, new


def reuse_local_record(host: Any, max_age_s: float) -> None:
    """Reuse ``host``'s own signed peer record for ``max_age_s`` (0: never) on
    the RPCs gossipsub sends (idempotent; the lookup it patches is shared by
    every host in the process, and hosts without a memo are unaffected)."""
    if max_age_s > 0:
        try:
            _local_records.setdefault(host, _LocalRecord(max_age_s))
        except TypeError:
            return
    if getattr(_libp2p_gossipsub, "env_to_send_in_RPC", None) is _env_to_send:
        _libp2p_gossipsub.env_to_send_in_RPC = _env_to_send_reused


def remember_sender_records(host: Any, max_peers: int) -> None:
    """Give ``host`` a memo of verified signed peer records for ``max_peers`` peers."""
    try:
        _verified_records.setdefault(host.get_peerstore(), _RecordMemo(max_peers))
    except TypeError:  # a peerstore that cannot be weakly referenced: no memo
        pass


def verify_sender_records_once(host: Any, max_peers: int) -> None:
    """Install :func:`_consume_signed_record_once` where py-libp2p's pubsub
    looks the check up (idempotent; affects every host in the process) and
    give ``host`` its memo (see :func:`remember_sender_records`)."""
    remember_sender_records(host, max_peers)
    for module in (_libp2p_pubsub, _libp2p_gossipsub):
        if getattr(module, "maybe_consume_signed_record", None) is _consume_signed_record:
            module.maybe_consume_signed_record = _consume_signed_record_once  # type: ignore[attr-defined]


# -------------------------------------------------------------------- dialing


class _NoAutoDial(AutoConnector):
    """libp2p's auto-connector with dialing switched off (meshd's discovery
    owns dialing: it honours the block list and target_peers)."""

    async def maybe_connect(self) -> None:
        await trio.lowlevel.checkpoint()


def take_over_dialing(swarm: Any, dial_retries: int) -> None:
    """Make ``swarm`` retry a failed dial ``dial_retries`` times and never dial
    on its own (no auto-connector)."""
    swarm.retry_config = RetryConfig(max_retries=dial_retries)
    swarm.auto_connector = _NoAutoDial(swarm)


def relay_reserved_peers(protocol: Any) -> set[str]:
    """Peer ids holding an unexpired reservation with this relay (a
    ``CircuitV2Protocol``); empty if the library's layout is not as expected."""
    try:
        reservations = protocol.resource_manager._reservations
        return {str(pid) for pid, r in reservations.items() if not r.is_expired()}
    except Exception:
        return set()


def advertise_concrete_mdns_addrs(host: Any, expand: Callable[[list[str]], list[str]]) -> None:
    """Make ``host``'s mDNS broadcaster advertise ``expand(listen addresses)``
    instead of the listen addresses as bound (no-op without mDNS)."""
    broadcaster = getattr(getattr(host, "mDNS", None), "broadcaster", None)
    if broadcaster is None:
        return
    resolve = broadcaster._resolve_host_addrs
    broadcaster._resolve_host_addrs = lambda: expand(resolve())


# -------------------------------------------------------------------- muxing


def fit_yamux_frames_to_noise() -> None:
    """Make yamux send frames no larger than one Noise message (idempotent;
    affects every host in the process)."""
    _libp2p_yamux.MAX_MESSAGE_SIZE = min(
        _libp2p_yamux.MAX_MESSAGE_SIZE, _libp2p_noise_io.MAX_PLAINTEXT_LENGTH
    )


_library_window_update = _libp2p_yamux.YamuxStream._auto_tune_and_send_window_update


async def _window_update_at_half(self: Any, *, bytes_read: int = 0) -> None:
    """go-yamux's hysteresis: no WINDOW_UPDATE until the credit owed (bytes
    consumed, not yet returned) reaches half the receive window; then the
    library's own update (with its auto-tuning) returns all of it."""
    buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
    owed = self.target_recv_window - (self.recv_window + buffered)
    if owed < self.target_recv_window // 2:
        return
    await _library_window_update(self, bytes_read=bytes_read)


def batch_yamux_window_updates() -> None:
    """Return yamux receive credit once half a window is consumed, not per
    read (idempotent; affects every host in the process)."""
    _libp2p_yamux.YamuxStream._auto_tune_and_send_window_update = _window_update_at_half  # type: ignore[method-assign]


def limit_dht_messages(max_bytes: int) -> None:
    """Cap the DHT answers py-libp2p's lookups read at ``max_bytes``
    (affects every host in the process: the last host built sets it)."""
    _libp2p_kad_routing.MAX_DHT_MESSAGE_SIZE = max_bytes
