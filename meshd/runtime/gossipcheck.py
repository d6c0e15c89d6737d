"""Gossip topic validators: the core's cheap checks, run before libp2p forwards a message.

Theory of operation
-------------------
libp2p runs a topic's validator on every inbound message before it delivers
*or forwards* it (specs/NETWORK.md, "Gossip topics", rule 2). Without one, a
forged or malformed message travels the whole mesh before each core rejects
it. :class:`GossipValidator` repeats, for one topic, the message-acceptance
checks of specs/PROTOCOL.md §4 that need no protocol state, plus two that need
only a look-up; the first failure drops the message (counted in the node's
registry as ``meshd_gossip_messages_total{topic, outcome=<reason>}``, read
back by reason as ``rejected``, and by the host as ``dropped_invalid``):

1. ``oversize``: larger than ``max_message_bytes``;
2. the codec's decode and signature check (``malformed``, ``bad_version``,
   ``unknown_type``, ``bad_signature``, ``bad_body``);
3. ``author_mismatch``: the envelope's signer is not the libp2p publisher
   (``from``, itself signed under GossipSub strict signing). Honest nodes
   publish only what they signed, so this drops another peer's messages
   re-published under a new libp2p message id;
4. the core's own acceptance checks, asked of ``Node.acceptance_reason`` (so
   the two cannot drift): ``wrong_channel`` (the type does not belong on this
   topic), ``future`` / ``stale`` (outside ``max_clock_skew_ms`` /
   ``max_message_age_ms``), ``replay`` (the core already accepted
   ``(sender, nonce)``), ``banned`` (the core bans the signer).

A rejection for a reason in :data:`PROVABLE` is returned as
``PROVABLY_INVALID``: the host blocks a neighbour that hands over many.

Rate limits stay in the core (they charge a bucket per accepted message). The
core still runs every check itself: the validator is a filter in front of the
mesh, not a replacement (defence in depth; the core is also driven without it
by the simulator and CoreNet).

Signatures are verified once per message: the validator opens the envelope
through :class:`CachingCodec`, which keeps the result in a small LRU keyed by
the sha256 of the bytes; the core's ``open`` of the same bytes moments later
takes it from there. A miss (the entry was evicted under load) just verifies
again. Own publishes pass unchecked (the core built and signed them).

Rules: a validator is synchronous, cheap and never raises; every bound is a
parameter (``CoreParams`` for the checks, ``RuntimeParams`` for the cache).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from meshd.core.identity import Identity
from meshd.core.node import Node, gossip_types
from meshd.core.peers import parse_advert_topic, shard_of
from meshd.core.wire import Body, Opened, Rejected, open_envelope, seal
from meshd.net import PROVABLY_INVALID
from meshd.net.gossip import TopicValidator
from meshd.net.standing import TopicVerdict

from .metrics import Metrics, by_label

PROVABLE = frozenset({"malformed", "bad_signature", "author_mismatch"})
"""Reasons no honest forwarder could share (it runs the same checks before
forwarding, and they depend on nothing local: not the clock, the replay cache,
bans or the protocol version's type list); the host holds them against the
neighbour (``NetParams.invalid_forwarder_limit``)."""

log = logging.getLogger("meshd.gossipcheck")


ACCEPTED = "accepted"
"""The ``outcome`` of a message that passed (any other outcome names why it was refused)."""


class CachingCodec:
    """The wire codec, with a bounded memory of envelopes the validator opened.

    ``verify`` opens and remembers; ``open`` (the core's call) uses a
    remembered result once and forgets it, or opens afresh. Both are pure
    functions of ``(data, max_bytes)``, so a cached answer is always right."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self._cache: OrderedDict[bytes, tuple[int, Opened | Rejected]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def seal(self, identity: Identity, body: Body, ts_ms: int, nonce: bytes) -> bytes:
        return seal(identity, body, ts_ms, nonce)

    def verify(self, data: bytes, max_bytes: int) -> Opened | Rejected:
        """Open ``data`` and remember the outcome for the core's ``open``."""
        key = hashlib.sha256(data).digest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == max_bytes:
            self._cache.move_to_end(key)
            return hit[1]
        result = open_envelope(data, max_bytes)
        self._cache[key] = (max_bytes, result)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return result

    def open(self, data: Any, max_bytes: int) -> Opened | Rejected:
        if isinstance(data, (bytes, bytearray)) and len(data) <= max_bytes and self._cache:
            hit = self._cache.pop(hashlib.sha256(data).digest(), None)
            if hit is not None and hit[0] == max_bytes:
                self.hits += 1
                return hit[1]
        self.misses += 1
        return open_envelope(data, max_bytes)

    def cached(self) -> int:
        """Entries held now. (Deliberately not ``__len__``: an empty codec must stay truthy.)"""
        return len(self._cache)


class GossipValidator:
    """The validators of one daemon's gossip topics (one per topic, shared state)."""

    def __init__(
        self,
        node: Node,
        codec: CachingCodec,
        clock_ms: Callable[[], int],
        metrics: Metrics | None = None,
    ) -> None:
        self.node = node
        self.codec = codec
        self.clock_ms = clock_ms
        self.metrics = metrics if metrics is not None else Metrics()

    @property
    def rejected(self) -> Counter[str]:
        """Drops by reason, all topics (the host counts them all as ``dropped_invalid``)."""
        outcomes = by_label(self.metrics.gossip, "outcome")
        del outcomes[ACCEPTED]
        return outcomes

    @property
    def passed(self) -> int:
        """Messages accepted, all topics."""
        return by_label(self.metrics.gossip, "outcome")[ACCEPTED]

    def for_topic(self, topic: str) -> TopicValidator:
        """The ``fn(author_peer_id, data) -> bool`` to register for ``topic``."""
        types = gossip_types(topic)
        assert types is not None, f"no gossip topic: {topic!r}"
        allowed = frozenset(types)
        shard = parse_advert_topic(topic)
        count = self.metrics.gossip.labels

        def validate(author: str, data: bytes) -> TopicVerdict:
            try:
                if shard is not None and shard_of(author, shard[0]) != shard[1]:
                    reason: str | None = "wrong_shard"  # its author's shard is another (§5.2)
                else:
                    reason = self.check(allowed, author, data)
            except Exception:  # a bug here must not stop gossip; the message is dropped
                log.exception("gossip validator failed on a message from %s", author)
                reason = "validator_error"
            if reason is None:
                count(topic, ACCEPTED).inc()
                return True
            count(topic, reason).inc()
            return PROVABLY_INVALID if reason in PROVABLE else False

        return validate

    def check(self, allowed: frozenset[str], author: str, data: bytes) -> str | None:
        """The reason to drop ``data`` published by ``author``, or None to pass it."""
        node = self.node
        if author == node.peer_id:
            return None
        p = node.params
        if len(data) > p.max_message_bytes:
            return "oversize"
        opened = self.codec.verify(data, p.max_message_bytes)
        if isinstance(opened, Rejected):
            return opened.reason
        if opened.sender != author:
            return "author_mismatch"
        return node.acceptance_reason(opened, allowed, self.clock_ms())
