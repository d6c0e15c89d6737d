"""Counters of the libp2p adapter and their immutable snapshot."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class NetStats:
    """A snapshot of one host's counters (since start) and gauges (now)."""

    # gossip
    published: int = 0  # messages we published
    publish_dropped: int = 0  # publishes refused: max_pending_publishes were waiting
    publish_wait_timeouts: int = 0  # publishes that gave up waiting for a stalled peer's queue
    dropped_queue_full: int = 0  # messages (ours or forwarded) a peer's full outbound queue lost
    delivered: int = 0  # messages handed to a subscriber's handler
    dropped_invalid: int = 0  # inbound messages our topic validator rejected
    dropped_oversize: int = 0  # inbound messages over max_gossip_bytes
    dropped_rate_limited: int = 0  # messages not forwarded: neighbour over its topic budget
    dropped_over_budget: int = (
        0  # inbound messages dropped unchecked: neighbour over forwarder_rate_per_s
    )
    forwarders_blocked: int = 0  # neighbours blocked for passing on provably invalid messages
    dropped_inbox_full: int = 0  # messages dropped because the inbox was full
    dropped_blocked: int = 0  # inbound messages authored by a blocked peer
    handler_errors: int = 0  # gossip handlers or validators that raised
    broken_streams: int = 0  # pubsub streams that carried undecodable data
    # request/response (the application's; peer exchange counts in px_rounds)
    requests_out: int = 0  # requests we sent
    requests_out_failed: int = 0  # ... that raised a NetError
    requests_in: int = 0  # inbound request streams
    requests_in_failed: int = 0  # ... answered with anything but OK
    # persistent channels (meshd.net.channels)
    channels_out: int = 0  # channel streams we opened
    channels_in: int = 0  # channel streams peers opened to us
    calls_out: int = 0  # calls we sent on channels (fallbacks count here too)
    calls_out_failed: int = 0  # ... that raised a NetError
    calls_in: int = 0  # calls peers sent us on channels
    calls_in_busy: int = 0  # ... answered BUSY (the peer was over channel_max_inflight)
    channel_bad_frames: int = 0  # channel streams reset: malformed or oversized frame, unknown id
    channel_fallbacks: int = 0  # calls sent per request: the peer does not serve the channel
    # connections and discovery
    dials: int = 0  # dials started by connect(), bootstrap or discovery
    dials_failed: int = 0
    px_rounds: int = 0  # peer-exchange requests that got an answer
    dht_lookups: int = 0  # Kademlia lookups we ran (meshd.net.dht)
    dht_found: int = 0  # peers our lookups handed to discovery (not connected, with addresses)
    dht_served: int = 0  # FIND_NODE requests we answered
    dht_rejected: int = 0  # inbound DHT streams reset: bad, oversized, unserved or over the bound
    refused_peers: int = 0  # connections/streams refused (blocked, low score, full)
    # reachability and relays
    autonat_checks: int = 0  # dial-back check rounds that asked at least one peer
    relay_reservations: int = 0  # relay slots reserved (renewals not counted)
    relayed_dials: int = 0  # connections opened through a relay
    peers_unreachable: int = 0  # peers marked unreachable (a dial or stream open failed)
    # gauges
    connected_peers: int = 0
    known_peers: int = 0


COUNTER_NAMES = frozenset(
    f.name for f in fields(NetStats) if f.name not in ("connected_peers", "known_peers")
)
