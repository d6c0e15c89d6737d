"""The daemon's gossip topic validators (meshd/runtime/gossipcheck.py), without a network.

Rules checked (module header, specs/NETWORK.md "meshd's topic validators"):
- each check drops with its own reason, and a valid message passes;
- the envelope the validator opened is what the core uses: one signature
  check per message; a result is used once, and evicted entries are simply
  opened again;
- the validator never raises.
"""

from __future__ import annotations

import random

from meshd.core.events import TOPIC_ADVERTS, TOPIC_OFFERS, GossipReceived
from meshd.core.identity import Identity
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.peers import advert_topic, shard_of
from meshd.core.wire import Advert, Bid, seal
from meshd.net import PROVABLY_INVALID
from meshd.runtime.gossipcheck import CachingCodec, GossipValidator

NOW = 1_700_000_000_000
ME, ALICE, BOB = Identity.from_seed_int(1), Identity.from_seed_int(2), Identity.from_seed_int(3)
_nonce = iter(range(1, 1 << 30))


def advert(seq: int = 1) -> Advert:
    return Advert(seq=seq, ttl_ms=10_000, cores=2, ram_mb=1024, score_gflops=1.0, price=0.1)


def sealed(who: Identity, body: object, ts: int = NOW) -> bytes:
    return seal(who, body, ts, next(_nonce).to_bytes(8, "big"))  # type: ignore[arg-type]


def setup(cache: int = 16) -> tuple[Node, CachingCodec, GossipValidator]:
    codec = CachingCodec(cache)
    node = Node(CoreParams(), ME, random.Random(1), NOW, codec=codec)
    return node, codec, GossipValidator(node, codec, lambda: NOW)


def test_each_check_drops_with_its_reason() -> None:
    node, _, v = setup()
    adverts = v.for_topic(TOPIC_ADVERTS)
    good = sealed(ALICE, advert())
    forged = bytearray(good)
    forged[-1] ^= 1
    bid = Bid(
        job_id="job-00000001",
        attempt=1,
        price=1.0,
        est_start_ms=0,
        est_duration_ms=1,
        score_gflops=1.0,
    )
    cases = {
        "oversize": (ALICE, b"\x00" * (node.params.max_message_bytes + 1)),
        "malformed": (ALICE, b"\xc1junk"),
        "bad_signature": (ALICE, bytes(forged)),
        "wrong_channel": (ALICE, sealed(ALICE, bid)),
        "author_mismatch": (BOB, sealed(ALICE, advert())),
        "future": (ALICE, sealed(ALICE, advert(), NOW + node.params.max_clock_skew_ms + 1)),
        "stale": (ALICE, sealed(ALICE, advert(), NOW - node.params.max_message_age_ms - 1)),
    }
    for reason, (author, data) in cases.items():
        verdict = adverts(author.peer_id, data)
        assert not verdict, reason
        # Only verdicts no honest forwarder could share are held against the neighbour.
        assert (verdict is PROVABLY_INVALID) == (
            reason in ("malformed", "bad_signature", "author_mismatch")
        ), reason
        assert v.rejected[reason] == 1, (reason, dict(v.rejected))
    assert adverts(ALICE.peer_id, good)
    node.step(GossipReceived(TOPIC_ADVERTS, ALICE.peer_id, good), NOW)  # the core accepts it ...
    assert adverts(ALICE.peer_id, good) is False  # ... so the same bytes again are a replay
    assert v.rejected["replay"] == 1
    node.trust.ban_forever(BOB.peer_id, "test", NOW)
    assert not adverts(BOB.peer_id, sealed(BOB, advert()))
    assert v.rejected["banned"] == 1
    assert adverts(ME.peer_id, b"our own: not checked here")
    assert sum(v.rejected.values()) == len(cases) + 2 and v.passed == 2


def test_the_core_uses_what_the_validator_opened() -> None:
    node, codec, v = setup()
    data = sealed(ALICE, advert())
    assert v.for_topic(TOPIC_ADVERTS)(ALICE.peer_id, data)
    node.step(GossipReceived(TOPIC_ADVERTS, ALICE.peer_id, data), NOW)
    assert (codec.hits, codec.misses) == (1, 0) and codec.cached() == 0
    assert node.counters["accepted_advert"] == 1
    node.step(GossipReceived(TOPIC_ADVERTS, ALICE.peer_id, data), NOW)  # used once: opened afresh
    assert codec.misses == 1 and node.counters["rejected_replay"] == 1


def test_cache_is_bounded_and_a_miss_only_costs_a_second_check() -> None:
    node, codec, v = setup(cache=4)
    adverts = v.for_topic(TOPIC_ADVERTS)
    msgs = [sealed(ALICE, advert(i)) for i in range(10)]
    for data in msgs:
        assert adverts(ALICE.peer_id, data)
        assert codec.cached() <= 4
    for data in msgs:
        node.step(GossipReceived(TOPIC_ADVERTS, ALICE.peer_id, data), NOW)
    assert codec.hits == 4 and codec.misses == 6
    assert node.counters["accepted_advert"] == 10


def test_validator_never_raises() -> None:
    node, _, v = setup()
    node.ctx.trust = None  # type: ignore[assignment]  # a bug: the ban check will fail
    assert not v.for_topic(TOPIC_OFFERS)(
        ALICE.peer_id, sealed(ALICE, advert())
    )  # wrong channel first
    assert not v.for_topic(TOPIC_ADVERTS)(ALICE.peer_id, sealed(ALICE, advert()))
    assert v.rejected["validator_error"] == 1


def test_an_advert_on_another_shard_s_topic_is_dropped_before_it_is_opened() -> None:
    """specs/PROTOCOL.md §5.2: a shard's topic carries its own peers' adverts
    only; the author's shard is read off its id, before any signature check."""
    _, codec, v = setup()
    mine = shard_of(ALICE.peer_id, 4)
    good = sealed(ALICE, advert())
    assert v.for_topic(advert_topic(ALICE.peer_id, 4))(ALICE.peer_id, good) is True
    other = f"/meshd/adverts/1/4/{(mine + 1) % 4}"
    opened = codec.cached()
    assert not v.for_topic(other)(ALICE.peer_id, sealed(ALICE, advert(2)))
    assert v.rejected["wrong_shard"] == 1
    assert codec.cached() == opened, "its signature was checked"
