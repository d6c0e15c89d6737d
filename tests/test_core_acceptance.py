"""Message acceptance in ``Node`` (``meshd/core/node.py``).

Rules checked:
- node.py: "A peer's bad input is data: it is rejected with a reason code,
  counted in ``counters`` and never raised."
- params.py: ``max_clock_skew_ms`` ("a message stamped further in the future
  than this is rejected"), ``max_message_age_ms`` ("older than this is
  rejected as stale"), ``replay_cache_size`` ("(sender, nonce) pairs
  remembered to reject replays").
- A direct stream is authenticated: its signer must be the stream's peer.
- Each topic carries only its own message types.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from meshd.core.events import (
    TOPIC_ADVERTS,
    TOPIC_OFFERS,
    Append,
    DirectReceived,
    ExecutorHealth,
    GossipReceived,
    Publish,
    Send,
)
from meshd.core.identity import Identity
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.wire import (
    Advert,
    Award,
    Bid,
    Body,
    Offer,
    OfferRequirements,
    Opened,
    open_envelope,
    seal,
)
from meshd.testing.corenet import default_caps

NOW = 5_000_000
PARAMS = CoreParams()
ME = Identity.from_seed_int(1)
ALICE = Identity.from_seed_int(2)
MALLORY = Identity.from_seed_int(3)
DIGEST = "sha256:" + "00" * 32


def make_node() -> Node:
    node = Node(PARAMS, ME, random.Random(7), NOW)
    node.step(default_caps(), NOW)
    node.step(ExecutorHealth(True), NOW)
    return node


_nonces = iter(range(1, 1 << 30))


def envelope(
    body: Body, who: Identity = ALICE, ts_ms: int = NOW, nonce: bytes | None = None
) -> bytes:
    return seal(who, body, ts_ms, nonce or next(_nonces).to_bytes(8, "big"))


def advert(seq: int = 1) -> Advert:
    return Advert(
        seq=seq,
        ttl_ms=10_000,
        cores=4,
        ram_mb=4096,
        score_gflops=10.0,
        price=0.01,
        warm=True,
        runtimes=["docker"],
        images=["meshd/busybox:1"],
    )


def offer(job_id: str = "job-000000000001") -> Offer:
    return Offer(
        job_id=job_id,
        attempt=1,
        spec_digest=DIGEST,
        requirements=OfferRequirements(image="meshd/busybox:1"),
        timeout_s=10.0,
        bid_window_ms=250,
    )


def gossip(node: Node, topic: str, data: bytes, now: int = NOW) -> list[object]:
    return node.step(GossipReceived(topic, ALICE.peer_id, data), now)


def rejections(node: Node) -> dict[str, int]:
    return {k: v for k, v in node.counters.items() if k.startswith("rejected_")}


def test_fresh_advert_is_accepted_and_applied() -> None:
    node = make_node()
    gossip(node, TOPIC_ADVERTS, envelope(advert()))
    assert node.counters["accepted_advert"] == 1
    assert node.peers.get(ALICE.peer_id) is not None
    assert rejections(node) == {}


def test_stale_message_is_rejected_and_counted() -> None:
    node = make_node()
    old = NOW - PARAMS.max_message_age_ms - 1
    gossip(node, TOPIC_ADVERTS, envelope(advert(), ts_ms=old))
    assert rejections(node) == {"rejected_stale": 1}
    assert node.peers.get(ALICE.peer_id) is None


def test_message_at_the_edge_of_the_age_window_is_accepted() -> None:
    node = make_node()
    gossip(node, TOPIC_ADVERTS, envelope(advert(), ts_ms=NOW - PARAMS.max_message_age_ms))
    assert node.peers.get(ALICE.peer_id) is not None


def test_future_message_is_rejected_and_counted() -> None:
    node = make_node()
    gossip(node, TOPIC_ADVERTS, envelope(advert(), ts_ms=NOW + PARAMS.max_clock_skew_ms + 1))
    assert rejections(node) == {"rejected_future": 1}
    assert node.peers.get(ALICE.peer_id) is None
    gossip(node, TOPIC_ADVERTS, envelope(advert(), ts_ms=NOW + PARAMS.max_clock_skew_ms))
    assert node.peers.get(ALICE.peer_id) is not None


def test_replayed_message_is_rejected_and_has_no_effect() -> None:
    node = make_node()
    data = envelope(offer())
    first = gossip(node, TOPIC_OFFERS, data)
    assert any(isinstance(e, Send) for e in first), "a fitting warm node bids on the offer"
    again = gossip(node, TOPIC_OFFERS, data, NOW + 100)
    assert rejections(node) == {"rejected_replay": 1}
    assert again == [] or not any(isinstance(e, Send) for e in again)
    assert node.counters["bids_sent"] == 1


def test_same_nonce_from_a_different_sender_is_not_a_replay() -> None:
    node = make_node()
    nonce = b"\x09" * 8
    gossip(node, TOPIC_ADVERTS, envelope(advert(), ALICE, nonce=nonce))
    node.step(
        GossipReceived(TOPIC_ADVERTS, MALLORY.peer_id, envelope(advert(), MALLORY, nonce=nonce)),
        NOW,
    )
    assert rejections(node) == {}
    assert len(node.peers) == 2


def test_replay_cache_is_bounded() -> None:
    params = CoreParams(replay_cache_size=4)
    node = Node(params, ME, random.Random(1), NOW)
    for i in range(10):
        gossip(node, TOPIC_ADVERTS, envelope(advert(seq=i + 1)))
    assert len(node._replay) == 4


def test_direct_message_signed_by_someone_else_is_rejected() -> None:
    """Mallory relays a bid Alice signed over her own stream: wrong_sender."""
    node = make_node()
    bid = Bid(
        job_id="job-000000000001",
        attempt=1,
        price=1.0,
        est_start_ms=0,
        est_duration_ms=1,
        score_gflops=1.0,
    )
    node.step(DirectReceived(MALLORY.peer_id, envelope(bid, ALICE)), NOW)
    assert rejections(node) == {"rejected_wrong_sender": 1}
    assert node.counters["accepted_bid"] == 0
    # The rejection keeps its detail and says whose fault it is: the relay's.
    (r,) = node.rejections
    assert (r.reason, r.peer) == ("wrong_sender", MALLORY.peer_id)
    assert ALICE.peer_id in r.detail


def test_rejections_kept_are_bounded_and_name_the_peer_at_fault() -> None:
    node = make_node()
    for _ in range(PARAMS.rejections_kept + 5):
        node.step(DirectReceived(MALLORY.peer_id, b"\xc1"), NOW)
    assert len(node.rejections) == PARAMS.rejections_kept
    assert {(r.reason, r.peer) for r in node.rejections} == {("malformed", MALLORY.peer_id)}
    assert rejections(node) == {"rejected_malformed": PARAMS.rejections_kept + 5}


def test_message_on_the_wrong_topic_is_rejected() -> None:
    node = make_node()
    gossip(node, TOPIC_ADVERTS, envelope(offer()))  # an offer on the adverts topic
    assert rejections(node) == {"rejected_wrong_channel": 1}
    assert node.counters["bids_sent"] == 0
    gossip(node, TOPIC_OFFERS, envelope(advert()))  # an advert on the offers topic
    assert node.peers.get(ALICE.peer_id) is None
    assert rejections(node) == {"rejected_wrong_channel": 2}


def test_direct_only_message_over_gossip_is_rejected() -> None:
    node = make_node()
    bid = Bid(
        job_id="job-000000000001",
        attempt=1,
        price=1.0,
        est_start_ms=0,
        est_duration_ms=1,
        score_gflops=1.0,
    )
    gossip(node, TOPIC_OFFERS, envelope(bid))
    assert rejections(node) == {"rejected_wrong_channel": 1}


def test_gossip_only_message_on_a_direct_stream_is_rejected() -> None:
    node = make_node()
    node.step(DirectReceived(ALICE.peer_id, envelope(advert())), NOW)
    assert rejections(node) == {"rejected_wrong_channel": 1}
    assert node.peers.get(ALICE.peer_id) is None


def test_unknown_topic_is_rejected() -> None:
    node = make_node()
    gossip(node, "/evil/1", envelope(advert()))
    assert rejections(node) == {"rejected_unknown_topic": 1}


def test_garbage_is_counted_not_raised() -> None:
    node = make_node()
    for data in (b"", b"\xc1", b"\x92\xc4\x00\xc4\x00", b"\xff" * (PARAMS.max_message_bytes + 1)):
        gossip(node, TOPIC_OFFERS, data)
        node.step(DirectReceived(ALICE.peer_id, data), NOW)
    counts = rejections(node)
    assert counts == {"rejected_malformed": 6, "rejected_oversize": 2}


def test_bad_signature_is_counted() -> None:
    node = make_node()
    data = bytearray(envelope(advert()))
    data[-3] ^= 0xFF
    gossip(node, TOPIC_ADVERTS, bytes(data))
    assert rejections(node) == {"rejected_bad_signature": 1}


def test_banned_sender_is_rejected() -> None:
    node = make_node()
    for _ in range(3):
        node.trust.observe(ALICE.peer_id, "invalid", NOW)
    assert node.trust.banned(ALICE.peer_id, NOW)
    gossip(node, TOPIC_ADVERTS, envelope(advert()))
    assert rejections(node) == {"rejected_banned": 1}
    assert node.peers.get(ALICE.peer_id) is None


def test_own_gossip_echo_is_ignored() -> None:
    """Gossip routers echo our own messages back; the node must not bid on its own offer."""
    node = make_node()
    node.step(GossipReceived(TOPIC_OFFERS, ALICE.peer_id, envelope(offer(), ME)), NOW)
    assert node.counters["bids_sent"] == 0
    assert rejections(node) == {}


def test_going_cold_is_advertised_at_once_and_signed() -> None:
    """One failed health check is tolerated; the third makes the node cold (node.py)."""
    node = make_node()
    for i in range(2):
        out = node.step(ExecutorHealth(False, "disk full"), NOW + i)
        assert not any(isinstance(e, Publish) for e in out)
        assert node.worker.warm
    published = [
        e for e in node.step(ExecutorHealth(False, "disk full"), NOW + 2) if isinstance(e, Publish)
    ]
    assert len(published) == 1
    opened = open_envelope(published[0].data, PARAMS.max_message_bytes)
    assert opened.sender == ME.peer_id  # type: ignore[union-attr]
    assert opened.body.warm is False  # type: ignore[union-attr]
    assert opened.body.cold_reason == "disk full"  # type: ignore[union-attr]


@pytest.mark.parametrize("timeout_s", [math.inf, math.nan, 1e300])
def test_an_offer_with_a_hostile_time_out_is_rejected_not_raised(timeout_s: float) -> None:
    """Regression (issue 16): ``timeout_s = inf`` or ``1e300`` raised
    OverflowError inside every core that saw the offer."""
    node = make_node()
    hostile = offer().model_copy(update={"timeout_s": timeout_s})  # skips validation
    effects = gossip(node, TOPIC_OFFERS, envelope(hostile))
    assert effects == []
    assert set(rejections(node)) <= {"rejected_non_finite", "rejected_out_of_range"}
    assert sum(rejections(node).values()) == 1
    assert node.rejections and node.rejections[-1].peer == ALICE.peer_id


def test_an_award_priced_at_infinity_is_rejected_and_never_logged() -> None:
    """Regression (issue 16): such an award was accepted and logged, after
    which the log API answered 500 for every page holding it."""
    node = make_node()
    award = Award.model_construct(
        job_id="job-000000000001",
        attempt=1,
        replica=0,
        spec={},
        price=math.inf,
        lease_ms=15_000,
    )
    effects = node.step(DirectReceived(ALICE.peer_id, envelope(award)), NOW)
    assert not [e for e in effects if isinstance(e, Append)]
    assert rejections(node) == {"rejected_non_finite": 1}


@pytest.mark.parametrize(
    ("runtime", "accepted"),
    [(None, False), ("docker", False), ("process", True)],
)
def test_a_process_worker_refuses_an_award_it_could_not_honour(
    runtime: str | None, accepted: bool
) -> None:
    """Issue 12 "Roles": a peer cannot hand the unsandboxed process executor,
    unoffered, a job that names an image to run in; the award is refused with
    the reason, and only a job asking for runtime process is taken."""
    node = Node(PARAMS, ME, random.Random(7), NOW)
    node.step(dataclasses.replace(default_caps(), runtimes=("process",)), NOW)
    node.step(ExecutorHealth(True), NOW)
    spec: dict[str, object] = {
        "job_id": "job-000000000001",
        "image": "meshd/busybox:1",
        "command": ["true"],
    }
    if runtime is not None:
        spec["requirements"] = {"runtime": runtime}
    award = Award(
        job_id="job-000000000001", attempt=1, replica=0, spec=spec, price=1.0, lease_ms=15_000
    )
    effects = node.step(DirectReceived(ALICE.peer_id, envelope(award)), NOW)
    replies = [e for e in effects if isinstance(e, Send) and e.kind == "awardreply"]
    assert len(replies) == 1
    reply = open_envelope(replies[0].data, PARAMS.max_message_bytes)
    assert isinstance(reply, Opened)
    assert reply.body.accepted is accepted
    if not accepted:
        assert "runs only jobs asking for runtime process" in reply.body.reason
        assert not node.worker.work
    else:
        assert ("job-000000000001", 1, 0) in node.worker.work
