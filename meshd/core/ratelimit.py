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

Memory is bounded: buckets are kept for at most ``rate_limit_peers`` peers;
when the table is full, the eighth charged least recently are forgotten at
once (a forgotten peer comes back with full buckets, which only forgives it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

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


CLASSES = ("offer", "bid", "direct", "gossip", "sync", "transport")
"""Every bucket class; a peer's buckets are a flat list with two places per
class, in this order (tokens, then when they were last refilled)."""
_AT = {cls: 2 * i for i, cls in enumerate(CLASSES)}


class RateLimiter:
    """Token buckets keyed by (peer, class), for at most ``rate_limit_peers`` peers.

    A peer's buckets are one flat list (``[tokens, updated_ms]`` per class of
    :data:`CLASSES`, None until the class is first charged) rather than a
    dict of bucket objects, and the table a plain dict whose LRU order is a
    use stamp at the end of each list rather than an ``OrderedDict`` moved on
    every charge: a node holds buckets for thousands of peers, and the
    simulator for thousands of nodes (``tests/bench/bench_ratelimit.py``)."""

    def __init__(self, params: CoreParams) -> None:
        self.limits: dict[str, tuple[float, float]] = {
            "offer": (params.rate_offer_per_s, float(params.rate_offer_burst)),
            "bid": (params.rate_bid_per_s, float(params.rate_bid_burst)),
            "direct": (params.rate_direct_per_s, float(params.rate_direct_burst)),
            "gossip": (params.rate_gossip_per_s, float(params.rate_gossip_burst)),
            "sync": (params.rate_sync_per_s, float(params.rate_sync_burst)),
            "transport": (params.rate_transport_per_s, float(params.rate_transport_burst)),
        }
        self._rate = [0.0] * (2 * len(CLASSES))
        """Per place of a peer's list: the class's (per_s, burst) at the tokens' place."""
        for cls, at in _AT.items():
            self._rate[at], self._rate[at + 1] = self.limits[cls]
        self.max_peers = max(1, params.rate_limit_peers)
        self._peers: dict[str, list[Any]] = {}
        """Per peer, its buckets and, last, when it was charged (:attr:`_uses`)."""
        self._uses = 0
        """Charges so far to a peer other than the one before (an LRU clock)."""
        self._last: str | None = None
        """The peer charged last (the end of the LRU order), and its buckets."""
        self._last_buckets: list[Any] = []

    def allow(self, peer: str, classes: tuple[str, ...], now_ms: int) -> bool:
        """Take one token from each class bucket of ``peer``; False (and take none) if any is empty."""
        peers = self._peers
        if peer == self._last:  # the most recently used already (a message's second charge)
            buckets = self._last_buckets
        else:
            self._uses += 1
            got = peers.get(peer)
            if got is None:
                if len(peers) >= self.max_peers:
                    self._forget_least_used()
                got = peers[peer] = [None] * (2 * len(CLASSES)) + [self._uses]
            else:
                got[-1] = self._uses
            buckets = self._last_buckets = got
            self._last = peer
        if len(classes) == 1:  # most messages: one bucket (_refilled, inline)
            at = _AT[classes[0]]
            tokens = buckets[at]
            if tokens is None:
                tokens = self._rate[at + 1]
                buckets[at + 1] = now_ms
            else:
                updated = buckets[at + 1]
                if now_ms > updated:
                    rate = self._rate
                    tokens = min(rate[at + 1], tokens + (now_ms - updated) * rate[at] / 1000.0)
                    buckets[at + 1] = now_ms
            if tokens < 1.0:
                buckets[at] = tokens
                return False
            buckets[at] = tokens - 1.0
            return True
        places = [_AT[c] for c in classes]
        if min([self._refilled(buckets, at, now_ms) for at in places]) < 1.0:
            return False
        for at in places:
            buckets[at] -= 1.0
        return True

    def _forget_least_used(self) -> None:
        """Make room: forget the eighth of peers charged least recently (at
        least one), so a stream of new peers costs a sort every
        ``max_peers / 8`` of them rather than a scan each."""
        peers = self._peers
        drop = max(1, len(peers) - self.max_peers + 1, self.max_peers // 8)
        for peer in sorted(peers, key=lambda p: peers[p][-1])[:drop]:
            del peers[peer]
        if self._last not in peers:
            self._last, self._last_buckets = None, []

    def _refilled(self, buckets: list[Any], at: int, now_ms: int) -> float:
        """The tokens of the bucket at place ``at``, refilled to ``now_ms`` (a
        new bucket is full), stored back; returned."""
        tokens = buckets[at]
        if tokens is None:
            tokens = buckets[at] = self._rate[at + 1]
            buckets[at + 1] = now_ms
            return tokens
        updated = buckets[at + 1]
        if now_ms > updated:
            tokens = buckets[at] = min(
                self._rate[at + 1],
                tokens + (now_ms - updated) * self._rate[at] / 1000.0,
            )
            buckets[at + 1] = now_ms
        return tokens

    def __len__(self) -> int:
        return len(self._peers)
