"""Abuse protection: per-peer token buckets for the messages a node accepts.

Theory of operation
-------------------
Every accepted message is charged to its *signed author* (the envelope's key,
checked before this runs, so nobody can spend another peer's tokens) in one or
two classes (:func:`classes_of`): offers also count as gossip; bids and
declines share one bucket; the sync messages (``ledger_summary``,
``ledger_delta``, and a newcomer's ``advert_pull`` / ``advert_table``, each
of which may cost many signature checks) a third; every other direct message shares another. A bucket
holds at most ``burst`` tokens and refills at ``per_s`` tokens a second of the
node's clock (time comes from the caller — the module is pure). A message that
finds a bucket empty is dropped and counted by the caller; nothing blocks or
queues, so a flood costs the node one dictionary look-up per message past the
signature check and can never stall it.

Before any of that, every inbound message is charged once to the *transport*
peer it came from (class ``transport``, :data:`TRANSPORT`): the remote peer of
a direct stream, the libp2p publisher of a gossip message. That bucket is
taken before decoding, so it bounds the decoding and signature checks one
peer can make the node do with garbage it never signed.

Memory is bounded: buckets live in an LRU of ``rate_limit_peers`` peers; an
evicted peer comes back with full buckets, which only forgives it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .params import CoreParams

BID_TYPES = frozenset({"bid", "decline"})
SYNC_TYPES = frozenset({"ledger_summary", "ledger_delta", "advert_pull", "advert_table"})
TRANSPORT = ("transport",)
"""The bucket class every inbound message is charged to, by transport peer, before decoding."""


def classes_of(msg_type: str, gossip: bool) -> tuple[str, ...]:
    """The bucket classes one message of ``msg_type`` is charged to."""
    if gossip:
        return ("offer", "gossip") if msg_type == "offer" else ("gossip",)
    if msg_type in SYNC_TYPES:
        return ("sync",)
    return ("bid",) if msg_type in BID_TYPES else ("direct",)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_ms: int

    def refill(self, per_s: float, burst: float, now_ms: int) -> None:
        if now_ms > self.updated_ms:
            self.tokens = min(burst, self.tokens + (now_ms - self.updated_ms) * per_s / 1000.0)
            self.updated_ms = now_ms


class PeerBuckets:
    """One token bucket per key (``per_s`` a second, ``burst`` deep), for the
    shell's limits outside the core (a neighbour's gossip before any check,
    blob requests): at most ``max_peers`` buckets, the least recently used
    forgotten first (it comes back full, which only forgives it)."""

    def __init__(self, per_s: float, burst: float, max_peers: int) -> None:
        self.per_s, self.burst, self.max_peers = per_s, burst, max(1, max_peers)
        self._buckets: OrderedDict[object, _Bucket] = OrderedDict()

    def take(self, key: object, now_ms: int) -> bool:
        """Take one token from ``key``'s bucket; False if it is empty."""
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now_ms)
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.refill(self.per_s, self.burst, now_ms)
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True


class RateLimiter:
    """Token buckets keyed by (peer, class), bounded by an LRU of peers."""

    def __init__(self, params: CoreParams) -> None:
        self.limits: dict[str, tuple[float, float]] = {
            "offer": (params.rate_offer_per_s, float(params.rate_offer_burst)),
            "bid": (params.rate_bid_per_s, float(params.rate_bid_burst)),
            "direct": (params.rate_direct_per_s, float(params.rate_direct_burst)),
            "gossip": (params.rate_gossip_per_s, float(params.rate_gossip_burst)),
            "sync": (params.rate_sync_per_s, float(params.rate_sync_burst)),
            "transport": (params.rate_transport_per_s, float(params.rate_transport_burst)),
        }
        self.max_peers = max(1, params.rate_limit_peers)
        self._peers: OrderedDict[str, dict[str, _Bucket]] = OrderedDict()
        self._last: str | None = None
        """The peer charged last (the end of the LRU order), and its buckets."""
        self._last_buckets: dict[str, _Bucket] = {}

    def allow(self, peer: str, classes: tuple[str, ...], now_ms: int) -> bool:
        """Take one token from each class bucket of ``peer``; False (and take none) if any is empty."""
        peers = self._peers
        if peer == self._last:  # the most recently used already (a message's second charge)
            buckets = self._last_buckets
        else:
            got = peers.get(peer)
            if got is None:
                got = peers[peer] = {}
                while len(peers) > self.max_peers:
                    peers.popitem(last=False)
            else:
                peers.move_to_end(peer)
            buckets = self._last_buckets = got
            self._last = peer
        if len(classes) == 1:  # most messages: one bucket, no list to build
            cls = classes[0]
            b = buckets.get(cls)
            if b is None:
                b = buckets[cls] = _Bucket(self.limits[cls][1], now_ms)
            elif now_ms > b.updated_ms:  # _Bucket.refill, inline (once or twice a message)
                per_s, burst = self.limits[cls]
                b.tokens = min(burst, b.tokens + (now_ms - b.updated_ms) * per_s / 1000.0)
                b.updated_ms = now_ms
            if b.tokens < 1.0:
                return False
            b.tokens -= 1.0
            return True
        current = [self._refilled(buckets, c, now_ms) for c in classes]
        if any(b.tokens < 1.0 for b in current):
            return False
        for b in current:
            b.tokens -= 1.0
        return True

    def _refilled(self, buckets: dict[str, _Bucket], cls: str, now_ms: int) -> _Bucket:
        per_s, burst = self.limits[cls]
        b = buckets.get(cls)
        if b is None:
            b = buckets[cls] = _Bucket(burst, now_ms)
        else:
            b.refill(per_s, burst, now_ms)
        return b

    def __len__(self) -> int:
        return len(self._peers)
