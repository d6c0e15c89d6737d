"""Every bound of the libp2p adapter, in one frozen value.

Rules:
- Every queue, size, rate, timeout and peer count the adapter uses is a field
  here with a documented default; nothing in ``meshd.net`` hides a literal
  bound. ``specs/NETWORK.md`` carries the same table (checked by
  ``tests/test_spec_net_params.py``; regenerate it with
  ``python -m tests.test_spec_net_params``).
- Construction validates the values (``ValueError`` names the field), so a
  bad configuration fails at start-up, not in the middle of a run.
- Units are the last part of each name (``_s`` seconds, ``_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

LIBP2P_OUTBOUND_QUEUE_ENTRIES = 32
"""Capacity of py-libp2p 0.8.1's per-peer pubsub outbound queue
(``OutBoundQueueSize``): a fact of the library, not a setting; it bounds
``publish_queue_entries``."""


def _frozen_map(m: Mapping[str, float] | None = None) -> Mapping[str, float]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class NetParams:
    """Bounds of one :class:`~meshd.net.host.MeshHost`. All fields have defaults."""

    # --- GossipSub -----------------------------------------------------------
    gossip_heartbeat_s: float = 1.0
    """GossipSub heartbeat (mesh maintenance, IHAVE gossip). libp2p's default
    is 120 s; the GossipSub spec's is 1 s."""
    degree: int = 6
    """GossipSub D: target number of mesh peers per topic;
    1 <= degree_low <= degree <= degree_high."""
    degree_low: int = 4
    """GossipSub D_lo: graft when the mesh is smaller than this."""
    degree_high: int = 12
    """GossipSub D_hi: prune when the mesh is larger than this."""
    idontwant_min_bytes: int = 1024
    """Smallest gossip message (protobuf bytes) we send IDONTWANT for. py-libp2p
    0.8.1 sends one RPC per mesh peer for every message; for small messages
    that costs receivers more than the duplicate it saves. 1 KiB is
    go-libp2p's ``IDontWantMessageThreshold``. 0 restores libp2p's behaviour."""
    max_gossip_bytes: int = 48 * 1024
    """Largest gossip payload we publish or accept. Larger inbound messages are
    rejected by the topic validator (not delivered, not forwarded). Kept well
    under yamux's 64 KiB frame: py-libp2p 0.8.1 can interleave the frames of
    two multi-frame RPCs on one pubsub stream, which garbles both."""
    topic_rate_limit_per_s: float = 100.0
    """Default per-topic forwarding budget per neighbour: the most first-seen
    messages per second on one topic that we forward when they arrive from one
    neighbour. Excess messages are still delivered locally but not forwarded,
    and the neighbour's GossipSub behaviour penalty grows. Our own publishes
    are exempt. libp2p's default is 10/s for every topic, which silently loses
    a quarter of a 40 msg/s burst; 100/s sits above what one Python host can
    carry (~40 msg/s on 3 hosts), so it only bites on real floods."""
    forwarder_rate_per_s: float = 500.0
    """Gossip messages per second (all topics) one neighbour may hand us; they
    are charged before any signature check, and beyond the budget dropped
    unchecked and counted (``dropped_over_budget``). Far above what a Python
    host carries honestly (~40 msg/s), so only floods meet it."""
    forwarder_burst: float = 2_500.0
    """Size of that budget's bucket: messages a neighbour may send at once."""
    invalid_forwarder_limit: int = 100
    """A neighbour that hands us this many gossip messages our validator calls
    provably invalid (``PROVABLY_INVALID``: forged signature, undecodable,
    re-published under another author) within ``invalid_forwarder_window_s``
    is blocked for the life of the host. Honest nodes validate before they
    forward, so they never send one."""
    invalid_forwarder_window_s: float = 10.0
    """The window of that count."""
    topic_rate_limits_per_s: Mapping[str, float] = field(default_factory=_frozen_map, hash=False)
    """Per-topic overrides of :attr:`topic_rate_limit_per_s` (topic -> msgs/s)."""
    topic_rate_window_s: float = 1.0
    """Length of the sliding window the per-topic forwarding budget counts
    messages in."""
    tracked_neighbours_per_peer: int = 4
    """Per-neighbour gossip state (forwarder token buckets, provably-invalid
    counts) is kept for at most this many times ``max_peers`` neighbours; the
    least recently seen is forgotten beyond it."""
    gossip_rpc_overhead_bytes: int = 64 * 1024
    """Room in one inbound pubsub RPC frame beyond ``max_gossip_bytes``
    (signature, key, signed peer record, control messages); larger frames
    reset the pubsub stream."""
    sender_record_memo_peers: int = 4096
    """Peers whose last verified signed peer record is remembered, so an
    unchanged record is not verified again on every RPC (py-libp2p 0.8.1
    attaches one to each)."""
    local_record_reuse_s: float = 5.0
    """How long our own signed peer record, as py-libp2p 0.8.1 attaches it to
    every pubsub RPC we publish or forward, is reused before the library is
    asked again (it rebuilds and compares our listen addresses on each call,
    a large part of forwarding a gossip message). A changed address reaches
    peers' records at most this late. 0: ask every time."""
    seen_ttl_s: int = 120
    """How long a gossip message id is remembered for de-duplication."""
    inbox_size: int = 1024
    """Gossip messages waiting for the subscriber's handler. When full, new
    messages are dropped and counted (``dropped_inbox_full``)."""
    publish_queue_entries: int = 16
    """Most entries of a peer's outbound queue in py-libp2p 0.8.1 (32 entries,
    full ones drop silently) that our own publishes may fill, 2..32. A publish waits
    until the queue of every peer it goes to holds at most this minus two
    (one publish takes two: the message and an IDONTWANT); the rest of the 32
    stays free for forwarding and GossipSub control messages."""
    publish_wait_s: float = 2.0
    """Longest one publish, once it is its turn, waits for room in its peers'
    outbound queues. A peer whose queue does not drain within it is treated
    as stalled (not waited for again until its queue moves); it misses the
    message, counted in ``dropped_queue_full``."""
    max_pending_publishes: int = 1024
    """Publishes waiting their turn (publishes go out one at a time, in call
    order). Beyond this, ``publish`` raises ``PublishDropped`` and counts
    ``publish_dropped``."""

    # --- Request/response streams --------------------------------------------
    max_request_bytes: int = 1 * 1024 * 1024
    """Largest request body we send or accept."""
    max_response_bytes: int = 64 * 1024 * 1024
    """Largest response body we send or accept (blobs travel as responses)."""
    max_error_bytes: int = 1024
    """Longest error text carried in an error response (longer is truncated)."""
    request_timeout_s: float = 10.0
    """Default deadline of one request: open stream, send, handle, receive."""
    handler_timeout_s: float = 30.0
    """Deadline for serving one inbound stream (read, handler, write)."""
    max_inflight_requests_per_peer: int = 16
    """Inbound streams served concurrently per peer; more are refused with a
    BUSY response. Outbound requests to one peer queue behind the same bound."""
    stream_read_chunk_bytes: int = 256 * 1024
    """Most bytes asked of a request/response stream or channel per read call
    (a frame reader asks for this much and buffers what arrived)."""

    # --- Persistent channels ---------------------------------------------------
    channel_max_inflight: int = 32
    """Calls in flight on one peer's channel: a sender waits for a free slot
    before it writes another (nothing is buffered beyond it), and a server
    answers BUSY to a peer's calls beyond it."""
    channel_idle_s: float = 30.0
    """A channel that carried no call for this long is closed by its opener
    (and reopened by the next call); a server closes a channel stream on
    which no call arrived for twice this."""
    channel_fallback_s: float = 300.0
    """How long calls to a peer that does not serve the channel protocol go by
    the per-request fallback before the channel is tried again."""

    # --- Connections and discovery -------------------------------------------
    connect_timeout_s: float = 5.0
    """Deadline of one dial (TCP + Noise + yamux). A loopback dial takes
    ~250 ms because of libp2p's fixed happy-eyeballs delay."""
    max_peers: int = 64
    """Most peers connected at once. Inbound peers beyond this are
    disconnected at once; discovery never dials beyond it."""
    target_peers: int = 16
    """Discovery dials known peers until this many are connected."""
    wanted_peers: int = 6
    """Discovery also dials known peers the app wants among its connections
    (``MeshHost.want_peers``: meshd's peers of its advert shard, whose topic
    only they share, specs/PROTOCOL.md §5.2) until this many of them are
    connected, beyond ``target_peers`` (never beyond ``max_peers``): a
    topic's GossipSub mesh is made of connected peers. The gossip degree."""
    peer_exchange_interval_s: float = 5.0
    """Period of the discovery round (peer exchange + redial)."""
    peer_exchange_fanout: int = 3
    """Connected peers asked for their peers in one discovery round; 0: none
    (discovery by bootstrap, mDNS and the DHT only; peers are still answered)."""
    max_px_peers: int = 32
    """Most peers one peer-exchange response carries (sent and accepted)."""
    max_px_addrs_per_peer: int = 4
    """Most addresses per peer in a peer-exchange response."""
    max_px_addr_chars: int = 256
    """Longest multiaddr text accepted in a peer-exchange entry (longer ones
    are skipped)."""
    max_px_request_bytes: int = 16
    """Longest peer-exchange request accepted (it is one msgpack integer)."""
    peer_exchange_min_gap_s: float = 0.2
    """Shortest pause between discovery rounds (a new connection wakes the
    loop early; this coalesces bursts of wake-ups)."""
    max_parallel_dials: int = 8
    """Dials a discovery round runs concurrently."""
    known_peers_max: int = 1024
    """Most peers remembered as dial candidates (addresses in the peerstore)."""
    max_dial_failures: int = 3
    """Consecutive failed dials after which a known peer is forgotten (until
    peer exchange reports it again)."""
    known_addr_ttl_s: int = 600
    """How long addresses learned from bootstrap or peer exchange are kept."""
    max_connections_per_peer: int = 2
    """libp2p connections kept per peer (two when both sides dialled at once)."""
    dial_retries: int = 1
    """libp2p's retries of a failed dial (its default, 3, makes a dead peer
    cost ~0.7 s); 0 = no retry."""
    mdns: bool = False
    """Also discover peers on the local link with mDNS (the daemon sets it from
    ``config.toml``'s ``mdns``). Only a host with a listen address off
    loopback runs it."""
    dht: bool = True
    """Run the Kademlia DHT (``/ipfs/kad/1.0.0``) as a second discovery source
    beside peer exchange (the daemon sets it from ``config.toml``'s ``dht``):
    lookups of random keys whose results become dial candidates; served
    (FIND_NODE only) while reachability is ``public``."""
    dht_interval_s: float = 30.0
    """Period of the DHT lookup while discovery is short of peers (a new
    connection brings the next one forward, see ``dht_min_gap_s``)."""
    dht_min_gap_s: float = 2.0
    """Shortest pause between two DHT lookups: at most one lookup runs at a
    time, so at most one per this many seconds."""
    dht_lookup_timeout_s: float = 10.0
    """Longest one DHT lookup may take (py-libp2p asks up to 10 peers at once,
    each within 10 s); what it found by then is dropped."""
    dht_closer_peers: int = 20
    """Most peers a FIND_NODE answer carries (sent; the lookup keeps this many
    closest): Kademlia's k."""
    dht_table_peers: int = 256
    """Most peers in the DHT routing table (the farthest from us are dropped
    beyond it after each lookup; no peer is added at the bound)."""
    dht_max_message_bytes: int = 65536
    """Largest DHT message read, request or answer (larger ones reset the
    stream). Process-wide for answers: py-libp2p reads them with one module
    constant, set from the last host built."""
    dht_max_key_bytes: int = 64
    """Longest key a FIND_NODE request may name (a peer id is 38 bytes, a
    random key 32)."""
    dht_max_inbound_streams: int = 8
    """DHT requests served at once; a stream beyond it is reset."""

    # --- Reachability and relays ----------------------------------------------
    reachability: str = "auto"
    """``auto``: the dial-back check decides; ``public`` or ``private``: fixed
    (an operator who knows the node is behind a NAT, or has a port mapping),
    and no check runs."""
    autonat_interval_s: float = 60.0
    """Period of the dial-back check once reachability is known."""
    autonat_retry_s: float = 2.0
    """Period of the dial-back check while reachability is unknown (no answer yet)."""
    autonat_peers: int = 3
    """Directly connected peers asked in one dial-back check."""
    autonat_dial_timeout_s: float = 3.0
    """Longest a dial-back (a TCP connect to the requester's listen port at its
    observed IP) may take; no answer in time counts as unreachable."""
    autonat_max_dialbacks: int = 8
    """Dial-backs a node runs for others at once; beyond it a request is
    answered "could not try"."""
    relay_service: bool = True
    """Serve circuit relay v2 (hop) once the dial-back check says this node is
    publicly reachable. False: never relay for others."""
    relay_max_reservations: int = 32
    """Most peers holding a reservation with us as their relay."""
    relay_max_circuits: int = 64
    """Most relayed connections we carry at once."""
    relay_circuit_max_bytes: int = 256 * 1024 * 1024
    """Bytes one relayed connection may carry (both directions) before the
    relay resets it; above ``max_response_bytes`` so one blob fits."""
    relay_circuit_max_duration_s: int = 3600
    """Seconds one relayed connection may last before the relay resets it."""
    relay_reservation_ttl_s: int = 3600
    """How long a reservation we grant lasts; clients renew at half of it."""
    relay_reservations: int = 2
    """Relays a node that is not publicly reachable reserves a slot with."""
    hole_punching: bool = True
    """Run DCUtR: try to turn each relayed connection into a direct one.
    False: relayed connections stay relayed."""
    reach_sample_s: float = 1.0
    """How often the host notes which peers it reaches only through a relay
    (a later direct connection to one of them is reported hole-punched)."""
    relay_retry_s: float = 5.0
    """Pause before asking a peer that refused a reservation again, and the
    longest pause of the reservation loop of a private node."""

    # --- Reputation ------------------------------------------------------------
    app_score_weight: float = 1.0
    """Weight of meshd's reputation (``set_app_score``) in the GossipSub peer
    score (py-libp2p 0.8.1 calls it P6 ``p6_appl_slack_weight``; the spec's
    application-specific P5)."""
    app_score_disconnect_below: float = -math.inf
    """Peers whose application score is below this are disconnected and refused
    (checked on connect and every discovery round). Default: never."""

    max_blocked_peers: int = 4096
    """Most peers on the block list; beyond it the oldest block is lifted."""

    # --- Shutdown --------------------------------------------------------------
    shutdown_timeout_s: float = 5.0
    """Longest the shielded close of listener and connections may take."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "topic_rate_limits_per_s", _frozen_map(self.topic_rate_limits_per_s)
        )
        positive = (
            "gossip_heartbeat_s",
            "max_gossip_bytes",
            "topic_rate_limit_per_s",
            "forwarder_rate_per_s",
            "forwarder_burst",
            "invalid_forwarder_limit",
            "invalid_forwarder_window_s",
            "topic_rate_window_s",
            "tracked_neighbours_per_peer",
            "gossip_rpc_overhead_bytes",
            "sender_record_memo_peers",
            "seen_ttl_s",
            "inbox_size",
            "publish_wait_s",
            "max_pending_publishes",
            "max_request_bytes",
            "max_response_bytes",
            "max_error_bytes",
            "request_timeout_s",
            "handler_timeout_s",
            "max_inflight_requests_per_peer",
            "stream_read_chunk_bytes",
            "channel_max_inflight",
            "channel_idle_s",
            "channel_fallback_s",
            "connect_timeout_s",
            "max_peers",
            "target_peers",
            "peer_exchange_interval_s",
            "max_px_peers",
            "max_px_addrs_per_peer",
            "max_px_addr_chars",
            "max_px_request_bytes",
            "max_connections_per_peer",
            "max_parallel_dials",
            "peer_exchange_min_gap_s",
            "max_dial_failures",
            "known_peers_max",
            "known_addr_ttl_s",
            "max_blocked_peers",
            "shutdown_timeout_s",
            "autonat_interval_s",
            "autonat_retry_s",
            "autonat_peers",
            "autonat_dial_timeout_s",
            "autonat_max_dialbacks",
            "relay_max_reservations",
            "relay_max_circuits",
            "relay_circuit_max_bytes",
            "relay_circuit_max_duration_s",
            "relay_reservation_ttl_s",
            "relay_reservations",
            "relay_retry_s",
            "reach_sample_s",
            "dht_interval_s",
            "dht_min_gap_s",
            "dht_lookup_timeout_s",
            "dht_closer_peers",
            "dht_table_peers",
            "dht_max_message_bytes",
            "dht_max_key_bytes",
            "dht_max_inbound_streams",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"NetParams.{name} must be > 0, got {getattr(self, name)!r}")
        if not 1 <= self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("NetParams needs 1 <= degree_low <= degree <= degree_high")
        if self.reachability not in ("auto", "public", "private"):
            raise ValueError("NetParams.reachability must be auto, public or private")
        if self.dial_retries < 0:
            raise ValueError("NetParams.dial_retries must be >= 0")
        if self.peer_exchange_fanout < 0:
            raise ValueError("NetParams.peer_exchange_fanout must be >= 0")
        if self.idontwant_min_bytes < 0:
            raise ValueError("NetParams.idontwant_min_bytes must be >= 0")
        if not 2 <= self.publish_queue_entries <= LIBP2P_OUTBOUND_QUEUE_ENTRIES:
            raise ValueError(
                f"NetParams.publish_queue_entries must be in 2..{LIBP2P_OUTBOUND_QUEUE_ENTRIES}"
            )
        if self.target_peers > self.max_peers:
            raise ValueError("NetParams.target_peers must be <= max_peers")
        if not 0 <= self.wanted_peers <= self.max_peers:
            raise ValueError("NetParams.wanted_peers must be within 0 .. max_peers")
        for topic, rate in self.topic_rate_limits_per_s.items():
            if not rate > 0:
                raise ValueError(f"NetParams.topic_rate_limits_per_s[{topic!r}] must be > 0")

    def rate_limit_for(self, topic: str) -> float:
        """The forwarding budget (msgs/s per neighbour) of ``topic``."""
        return self.topic_rate_limits_per_s.get(topic, self.topic_rate_limit_per_s)
