"""Abuse protection: token buckets (meshd/core/ratelimit.py) and a flood into a live node.

Rules checked (ratelimit.py header, specs/CREDITS.md "Abuse protection"):
- a peer over its limit has messages dropped and counted
  (``rejected_rate_limited``), never stalls the node;
- buckets refill with the node's clock; memory is bounded (LRU of peers);
- every message is first charged to the peer that carried it, before it is
  decoded (``rejected_rate_limited_transport``);
- forged, malformed and oversized messages are rejected and counted while
  jobs keep completing.
"""

from __future__ import annotations

import dataclasses

from meshd.core.events import TOPIC_ADVERTS, TOPIC_OFFERS, DirectReceived, GossipReceived
from meshd.core.identity import Identity
from meshd.core.jobspec import JobSpec
from meshd.core.params import CoreParams
from meshd.core.ratelimit import RateLimiter, classes_of
from meshd.core.wire import Bid, Offer, OfferRequirements, seal
from meshd.testing.corenet import CoreNet

P = CoreParams()
MALLORY = Identity.from_seed_int(666)
DIGEST = "sha256:" + "ab" * 32
_nonce = iter(range(1, 1 << 40))


def test_bucket_allows_the_burst_then_the_rate() -> None:
    rl = RateLimiter(dataclasses.replace(P, rate_bid_burst=5, rate_bid_per_s=2.0))
    got = [rl.allow("p", ("bid",), 0) for _ in range(8)]
    assert got == [True] * 5 + [False] * 3
    assert rl.allow("p", ("bid",), 500)  # one token back after 0.5 s at 2/s
    assert not rl.allow("p", ("bid",), 500)
    assert rl.allow("q", ("bid",), 500)  # another peer has its own bucket


def test_message_charged_to_two_classes_takes_nothing_when_one_is_empty() -> None:
    rl = RateLimiter(
        dataclasses.replace(
            P, rate_offer_burst=1, rate_gossip_burst=3, rate_offer_per_s=0.0, rate_gossip_per_s=0.0
        )
    )
    assert rl.allow("p", classes_of("offer", True), 0)
    assert not rl.allow("p", classes_of("offer", True), 0)  # offer bucket empty
    assert rl.allow("p", classes_of("advert", True), 0) and rl.allow(
        "p", classes_of("advert", True), 0
    )
    assert not rl.allow("p", classes_of("advert", True), 0)


def test_classes() -> None:
    assert classes_of("offer", True) == ("offer", "gossip")
    assert classes_of("advert", True) == ("gossip",)
    assert classes_of("bid", False) == classes_of("decline", False) == ("bid",)
    assert classes_of("heartbeat", False) == ("direct",)


def test_peer_table_is_bounded() -> None:
    rl = RateLimiter(dataclasses.replace(P, rate_limit_peers=10))
    for i in range(1000):
        rl.allow(f"p{i}", ("gossip",), 0)
    assert len(rl) == 10


def test_peer_table_forgets_the_least_recently_charged_peer() -> None:
    """The LRU order follows every charge, the same peer's second charge in a
    row (a message's transport and author buckets) included: a peer charged
    again stays, with its empty bucket, while an older one is forgotten."""
    rl = RateLimiter(dataclasses.replace(P, rate_limit_peers=2))
    while rl.allow("a", ("gossip",), 0):
        pass
    assert rl.allow("b", ("gossip",), 0) and rl.allow("b", ("transport",), 0)
    assert not rl.allow("a", ("gossip",), 0)  # a is now the most recent
    assert rl.allow("c", ("gossip",), 0)  # forgets b
    assert not rl.allow("a", ("gossip",), 0)  # a kept its empty bucket
    assert rl.allow("b", ("gossip",), 0) and len(rl) == 2  # b came back full; c forgotten
    assert not rl.allow("a", ("gossip",), 0)


def test_a_full_peer_table_forgets_the_eighth_charged_least_recently() -> None:
    """Room is made an eighth at a time (one sort per ``max / 8`` new peers,
    not a scan per new peer), and it is the least recently charged eighth:
    drained peers charged since keep their empty buckets."""
    rl = RateLimiter(dataclasses.replace(P, rate_limit_peers=64))
    for i in range(64):
        while rl.allow(f"p{i}", ("gossip",), 0):
            pass
    for i in range(8, 16):  # charged again: now more recent than p16 … p63
        assert not rl.allow(f"p{i}", ("gossip",), 0)
    assert rl.allow("new", ("gossip",), 0)
    assert len(rl) == 64 - 8 + 1
    assert not any(rl.allow(f"p{i}", ("gossip",), 0) for i in range(8, 64))  # kept, empty
    assert all(rl.allow(f"p{i}", ("gossip",), 0) for i in range(7))  # forgotten: back full


def offer(i: int) -> Offer:
    return Offer(
        job_id=f"job-flood{i:08d}",
        attempt=1,
        spec_digest=DIGEST,
        requirements=OfferRequirements(image="meshd/busybox:1"),
        timeout_s=10.0,
        bid_window_ms=250,
    )


def test_flood_is_rejected_and_counted_while_jobs_keep_completing() -> None:
    net = CoreNet(4, seed=17)
    net.run_for(3_000)
    target = net.order[0]
    honest = net.order[1]
    specs = [
        JobSpec(image="meshd/busybox:1", command=["echo", str(i)], timeout_s=60) for i in range(10)
    ]
    ids = []
    start_ms = net.now_ms
    for i, spec in enumerate(specs):
        ids.append(net.submit(0, spec))
        for k in range(600):  # 600 bad messages per job, interleaved with the protocol
            n = i * 600 + k
            now = net.now_ms
            good = seal(MALLORY, offer(n), now, next(_nonce).to_bytes(8, "big"))
            kind = k % 6
            if kind == 0:  # forged: signature bit flipped
                data = bytearray(good)
                data[-1] ^= 1
                net.input(target, GossipReceived(TOPIC_OFFERS, honest, bytes(data)))
            elif kind == 1:
                net.input(target, GossipReceived(TOPIC_ADVERTS, honest, b"\xc1garbage" * 3))
            elif kind == 2:
                net.input(target, DirectReceived(honest, b"\x00" * (P.max_message_bytes + 1)))
            elif kind in (3, 4):  # validly signed, over the offer rate
                net.input(target, GossipReceived(TOPIC_OFFERS, honest, good))
            else:  # validly signed bids for nothing, over the bid rate
                bid = Bid(
                    job_id=f"job-flood{n:08d}",
                    attempt=1,
                    price=0.1,
                    est_start_ms=0,
                    est_duration_ms=1000,
                    score_gflops=1.0,
                )
                net.input(
                    target,
                    DirectReceived(
                        MALLORY.peer_id, seal(MALLORY, bid, now, next(_nonce).to_bytes(8, "big"))
                    ),
                )
        net.run_for(300)
    assert net.run_until(lambda: all(net.job(0, j).state == "succeeded" for j in ids), 120_000)
    c = net.node(0).counters
    elapsed_s = (net.now_ms - start_ms) / 1000
    assert c["rejected_bad_signature"] == 1000
    assert c["rejected_malformed"] == 1000
    assert c["rejected_oversize"] == 1000
    max_offers = P.rate_offer_burst + elapsed_s * P.rate_offer_per_s
    max_bids = P.rate_bid_burst + elapsed_s * P.rate_bid_per_s
    assert c["accepted_offer"] <= max_offers
    assert c["rejected_rate_limited"] >= (2000 - max_offers) + (1000 - max_bids)


def test_transport_bucket_caps_decoding_per_carrying_peer() -> None:
    import random

    from meshd.core.node import Node

    params = dataclasses.replace(P, rate_transport_burst=100, rate_transport_per_s=10.0)
    node = Node(params, Identity.from_seed_int(5), random.Random(1), 1_000_000)
    junk_peer, other = Identity.from_seed_int(6).peer_id, Identity.from_seed_int(7).peer_id
    for i in range(300):
        inp = (
            GossipReceived(TOPIC_ADVERTS, junk_peer, b"\xc1junk")
            if i % 2
            else DirectReceived(junk_peer, b"\xc1junk")
        )
        node.step(inp, 1_000_000)
    c = node.counters
    assert c["rejected_malformed"] == 100  # only the burst was decoded at all
    assert c["rejected_rate_limited_transport"] == 200
    node.step(
        GossipReceived(TOPIC_ADVERTS, other, b"\xc1junk"), 1_000_000
    )  # others are not affected
    assert c["rejected_malformed"] == 101
    for _ in range(20):
        node.step(
            DirectReceived(junk_peer, b"\xc1junk"), 1_001_000
        )  # refilled: 10 more a second later
    assert c["rejected_malformed"] == 111 and c["rejected_rate_limited_transport"] == 210


def test_transport_defaults_never_bind_before_the_author_buckets() -> None:
    # An honest peer carries its own messages: whatever its author buckets let
    # through must fit its transport bucket, in a burst and sustained.
    assert P.rate_transport_burst >= P.rate_gossip_burst + P.rate_bid_burst + P.rate_direct_burst
    assert P.rate_transport_per_s >= P.rate_gossip_per_s + P.rate_bid_per_s + P.rate_direct_per_s


def test_peer_buckets_refill_and_forget_the_least_recently_used() -> None:
    from meshd.core.ratelimit import PeerBuckets

    b = PeerBuckets(per_s=10.0, burst=3.0, max_peers=2)
    assert [b.take("a", 0) for _ in range(4)] == [True, True, True, False]
    assert b.take("a", 100)  # 100 ms at 10/s: one token back
    assert not b.take("a", 100)
    assert b.take("b", 100) and b.take("c", 100)  # "a" (least recently used) is forgotten ...
    assert [b.take("a", 100) for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]  # ... and comes back full
    assert not b.take("a", 50)  # a clock going backwards refills nothing
