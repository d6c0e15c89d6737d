"""A flood into a real daemon (specs/CREDITS.md §9, specs/NETWORK.md "meshd's topic validators").

Three real daemons (libp2p on loopback, LevelDB logs, the process executor)
and a *test peer*: a bare :class:`~meshd.net.host.MeshHost` with its own key,
connected to daemon A only (it refuses B and C). It floods A with forged
gossip (a victim's key, the test peer's signature; or another key's valid
signature under the test peer's libp2p identity), malformed bytes, oversized
payloads, unknown-type and wrong-topic envelopes, stale messages, replays of
its own messages and of one B really published, and garbage, oversized,
forged and wrong-sender envelopes on the direct protocol.

Rules checked:
- every kind is rejected at A and counted by reason (gossip by the topic
  validator, ``gossip_rejected_<reason>``; direct by the core, ``rejected_*``);
- none of the junk is forwarded: B and C, which hear the test peer only
  through A, never see any of it — while the test peer's valid adverts do
  reach C through A (so the path was open);
- A does not crash, and jobs submitted at A, and at B onto A, finish in
  bounded time during the flood.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from meshd.core.events import DIRECT_PROTOCOL, TOPIC_ADVERTS, TOPIC_OFFERS, TOPIC_RECEIPTS
from meshd.core.identity import Identity
from meshd.core.params import PROTOCOL_VERSION
from meshd.core.wire import SIGNING_DOMAIN, Advert, Bid, Offer, OfferRequirements, seal
from meshd.net.host import MeshHost
from meshd.net.params import NetParams
from meshd.runtime.daemon import now_ms
from meshd.testing.cluster import FAST_CORE, Cluster

A, B, C = 0, 1, 2
MAX_MESSAGE_BYTES = 32 * 1024
"""Below the host's max_gossip_bytes (48 KiB), so an envelope over the core's
limit still reaches the topic validator."""
PER_KIND = 250
"""Gossip messages of each cheap kind; the large ones are fewer."""
DIRECT_PER_KIND = 75
JUNK_REASONS = (
    "bad_signature",
    "author_mismatch",
    "malformed",
    "unknown_type",
    "wrong_channel",
    "oversize",
    "stale",
)
JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/ok"],
    "replicas": 1,
}


def advert(seq: int) -> Advert:
    # Cold: nobody would pick the test peer for work.
    return Advert(
        seq=seq, ttl_ms=60_000, cores=1, ram_mb=64, score_gflops=1.0, price=1.0, warm=False
    )


def envelope(signer: Identity, key: bytes, mtype: str, body: dict[str, Any], ts_ms: int) -> bytes:
    """An envelope claiming ``key`` as its author, signed by ``signer``."""
    payload = msgpack.packb(
        [PROTOCOL_VERSION, mtype, key, ts_ms, secrets.token_bytes(8), body], use_bin_type=True
    )
    return msgpack.packb([payload, signer.sign(SIGNING_DOMAIN + payload)], use_bin_type=True)


class FloodPeer:
    """The flooding peer: a MeshHost that talks to daemon A only."""

    def __init__(self, identity: Identity, refuse: list[str]) -> None:
        self.identity = identity
        params = NetParams(
            gossip_heartbeat_s=0.2,
            target_peers=1,
            max_gossip_bytes=60 * 1024,
            peer_exchange_interval_s=60.0,
        )
        self.host = MeshHost(identity, params, ["/ip4/127.0.0.1/tcp/0"])
        for peer in refuse:
            self.host.block_peer(peer)
        for topic in (TOPIC_ADVERTS, TOPIC_OFFERS, TOPIC_RECEIPTS):  # to be in A's mesh
            self.host.subscribe(topic, lambda author, data: None)
        self.seq = 0

    async def wait_send_room(self, to_peer: str) -> None:
        """Publish as fast as A reads, no faster: py-libp2p 0.8.1 silently drops
        an RPC when its 32-slot outbound queue to a peer is full, and every
        publish queues two (the message and an IDONTWANT)."""
        queues = self.host._pubsub.peer_queues
        while (
            q := next((q for p, q in queues.items() if str(p) == to_peer), None)
        ) is not None and len(q) >= 16:
            await trio.sleep(0.002)

    def valid_advert(self, ts_ms: int | None = None) -> bytes:
        self.seq += 1
        return seal(
            self.identity,
            advert(self.seq),
            now_ms() if ts_ms is None else ts_ms,
            secrets.token_bytes(8),
        )


def junk_gossip(
    peer: FloodPeer, victim: Identity, other: Identity, captured: bytes, replayed: bytes
) -> list[tuple[str, str, bytes]]:
    """(kind, topic, data) of every gossip message of the flood, interleaved."""
    me = peer.identity
    now = now_ms()
    body = advert(1).model_dump(mode="python")
    bid = Bid(
        job_id="job-flood0000",
        attempt=1,
        price=1.0,
        est_start_ms=0,
        est_duration_ms=1,
        score_gflops=1.0,
    )
    cheap: dict[str, Callable[[], tuple[str, bytes]]] = {
        "bad_signature": lambda: (
            TOPIC_ADVERTS,
            envelope(me, victim.public_key, "advert", body, now_ms()),
        ),
        "author_mismatch": lambda: (
            TOPIC_ADVERTS,
            seal(other, advert(2), now_ms(), secrets.token_bytes(8)),
        ),
        "malformed": lambda: (TOPIC_OFFERS, b"\xc1 not msgpack " + secrets.token_bytes(16)),
        "unknown_type": lambda: (
            TOPIC_RECEIPTS,
            envelope(me, me.public_key, "bogus", {"x": 1}, now_ms()),
        ),
        "wrong_channel": lambda: (TOPIC_ADVERTS, seal(me, bid, now_ms(), secrets.token_bytes(8))),
        "stale": lambda: (TOPIC_ADVERTS, peer.valid_advert(now - 3_600_000)),
        "replay": lambda: (TOPIC_ADVERTS, replayed),
        "replay_captured": lambda: (TOPIC_ADVERTS, captured),
    }
    out = [(kind, *make()) for _ in range(PER_KIND) for kind, make in cheap.items()]
    big_body = {**body, "images": ["x" * 200] * 200}  # ~40 KB: over the core's limit
    for i in range(20):
        out.insert(
            i * 50,
            ("oversize", TOPIC_ADVERTS, envelope(me, me.public_key, "advert", big_body, now)),
        )
    for i in range(5):
        out.insert(i * 150, ("host_oversize", TOPIC_OFFERS, b"\x00" * (50 * 1024)))
    return out


def junk_direct(peer: FloodPeer, victim: Identity, other: Identity) -> list[tuple[str, bytes]]:
    me = peer.identity
    bid = Bid(
        job_id="job-flood0000",
        attempt=1,
        price=1.0,
        est_start_ms=0,
        est_duration_ms=1,
        score_gflops=1.0,
    )
    kinds: dict[str, Callable[[], bytes]] = {
        "malformed": lambda: b"\xc1 garbage " + secrets.token_bytes(32),
        "oversize": lambda: b"\x00" * (MAX_MESSAGE_BYTES + 1),
        "bad_signature": lambda: envelope(
            me, victim.public_key, "bid", bid.model_dump(mode="python"), now_ms()
        ),
        "wrong_sender": lambda: seal(other, bid, now_ms(), secrets.token_bytes(8)),
    }
    return [(kind, make()) for _ in range(DIRECT_PER_KIND) for kind, make in kinds.items()]


async def wait_until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    with trio.move_on_after(timeout_s):
        while not pred():
            await trio.sleep(0.05)
        return
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


async def capture_publish(host: MeshHost, topic: str, timeout_s: float = 10.0) -> bytes:
    """The next message ``host`` publishes on ``topic`` (a real one, to replay)."""
    got: list[bytes] = []
    publish = host.publish

    async def spy(t: str, data: bytes) -> None:
        if t == topic:
            got.append(data)
        await publish(t, data)

    host.publish = spy  # type: ignore[method-assign]
    try:
        await wait_until(lambda: bool(got), timeout_s, f"a message on {topic} to capture")
    finally:
        host.publish = publish  # type: ignore[method-assign]
    return got[0]


async def join_only_a(tn: trio.Nursery, peer: FloodPeer, c: Cluster, topic: str) -> None:
    """Start the test peer and wait until A is its only mesh peer on ``topic``."""
    await tn.start(peer.host.run)
    await peer.host.connect(c.daemon(A).host.listen_addrs[0])
    await wait_until(
        lambda: peer.host.mesh_peers(topic) == [c.peer_id(A)],
        10,
        f"the test peer to join A's mesh on {topic}",
    )


async def run_all(*fns: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as n:
        for fn in fns:
            n.start_soon(fn)


async def test_flood_is_rejected_at_the_door_and_jobs_keep_completing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    started = time.monotonic()
    params = dataclasses.replace(FAST_CORE, max_message_bytes=MAX_MESSAGE_BYTES)
    # target_peers=2: once the three daemons are connected they dial nobody
    # else, so B and C never reach the test peer except through A.
    # Counting every kind exactly needs the flood to go on: A would otherwise
    # block the test peer after 100 forged messages (the next test).
    net = NetParams(
        gossip_heartbeat_s=0.2,
        peer_exchange_interval_s=0.5,
        target_peers=2,
        invalid_forwarder_limit=100_000,
    )
    async with Cluster.started(nursery, tmp_path, 3, core_params=params, net_params=net) as c:
        a = c.daemon(A)
        peer = FloodPeer(Identity.generate(), refuse=[c.peer_id(B), c.peer_id(C)])
        victim, other = Identity.from_seed_int(4242), Identity.from_seed_int(4343)
        # B's job can only go to A: B and C stop hearing each other.
        c.partition([B], [C])
        async with trio.open_nursery() as tn:
            await tn.start(peer.host.run)
            await peer.host.connect(a.host.listen_addrs[0])
            await wait_until(
                lambda: all(
                    peer.host.mesh_peers(t) == [c.peer_id(A)]
                    for t in (TOPIC_ADVERTS, TOPIC_OFFERS, TOPIC_RECEIPTS)
                ),
                10,
                "the test peer to join A's mesh",
            )
            # Valid adverts of the test peer reach C through A: the path is open.
            first = peer.valid_advert()
            await peer.host.publish(TOPIC_ADVERTS, first)
            await wait_until(
                lambda: c.daemon(C).node.peers.get(peer.identity.peer_id) is not None,
                10,
                "C to hear the test peer's advert through A",
            )
            captured = await capture_publish(c.daemon(B).host, TOPIC_ADVERTS)
            await wait_until(lambda: not c.sees(B, C), 10, "B to forget C")

            gossip = junk_gossip(peer, victim, other, captured, first)
            direct = junk_direct(peer, victim, other)
            flood_started = time.monotonic()
            job_ids: list[tuple[int, str]] = []

            async def flood_gossip() -> None:
                for _, topic, data in gossip:
                    await peer.wait_send_room(c.peer_id(A))
                    await peer.host.publish(topic, data)

            async def flood_direct() -> None:
                lanes = trio.CapacityLimiter(8)

                async def one(data: bytes) -> None:
                    async with lanes:
                        await peer.host.request(c.peer_id(A), DIRECT_PROTOCOL, data)

                async with trio.open_nursery() as n:
                    for _, data in direct:
                        n.start_soon(one, data)

            async def jobs() -> None:
                for origin in (A, B, A):
                    job_ids.append((origin, await c.submit(origin, JOB)))
                    await trio.sleep(0.5)
                for origin, job_id in job_ids:
                    job = await c.wait_job(origin, job_id, timeout_s=30)
                    assert job.state == "succeeded", job.reason

            await run_all(flood_gossip, flood_direct, jobs)
            flood_s = time.monotonic() - flood_started

            # Everything the test peer sent has been judged at A.
            sent = {k: sum(1 for kind, _, _ in gossip if kind == k) for k, _, _ in gossip}
            rejected = a.gossip_check.rejected  # type: ignore[union-attr]
            await wait_until(
                lambda: sum(rejected.values()) >= len(gossip) - sent["host_oversize"],
                20,
                "A to judge the whole flood",
            )
            tn.cancel_scope.cancel()

        # A: every kind rejected at the door and counted by reason.
        assert rejected["bad_signature"] == sent["bad_signature"]
        assert rejected["author_mismatch"] == sent["author_mismatch"] + sent["replay_captured"]
        for kind in ("malformed", "unknown_type", "wrong_channel", "stale", "replay", "oversize"):
            assert rejected[kind] == sent[kind], (kind, dict(rejected))
        stats = a.host.statistics()
        assert stats.dropped_invalid >= sum(rejected.values())
        assert stats.dropped_oversize >= sent["host_oversize"]
        assert stats.handler_errors == 0  # the validator never raised
        core = a.node.counters  # type: ignore[union-attr]
        for kind in ("malformed", "oversize", "bad_signature", "wrong_sender"):
            assert core["rejected_" + kind] == DIRECT_PER_KIND, (kind, dict(core))
        assert (
            a.core_errors == 0 and c.members[A].done is not None and not c.members[A].done.is_set()
        )

        # B and C never saw any of it: A did not forward it.
        for i in (B, C):
            d = c.daemon(i)
            assert not any(d.gossip_check.rejected[r] for r in JUNK_REASONS), dict(
                d.gossip_check.rejected
            )  # type: ignore[union-attr]
            assert not any(d.node.counters["rejected_" + r] for r in JUNK_REASONS)  # type: ignore[union-attr]
            assert d.host.statistics().dropped_oversize == 0
        assert c.daemon(C).node.peers.get(peer.identity.peer_id) is not None  # type: ignore[union-attr]

        total_s = time.monotonic() - started
        print(
            f"flood: {len(gossip)} gossip + {len(direct)} direct in {flood_s:.1f}s; test {total_s:.1f}s"
        )
        assert total_s < 60


async def test_a_neighbour_forwarding_forged_gossip_is_blocked_and_jobs_keep_completing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """NetParams.invalid_forwarder_limit (100 in 10 s): a neighbour that keeps
    handing A gossip with forged signatures is blocked and disconnected after
    the limit; the rest of its flood never costs A a signature check, and
    the mesh goes on placing work."""
    net = NetParams(gossip_heartbeat_s=0.2, peer_exchange_interval_s=0.5, target_peers=2)
    async with Cluster.started(nursery, tmp_path, 3, core_params=FAST_CORE, net_params=net) as c:
        a = c.daemon(A)
        peer = FloodPeer(Identity.generate(), refuse=[c.peer_id(B), c.peer_id(C)])
        victim = Identity.from_seed_int(4242)
        body = advert(1).model_dump(mode="python")
        async with trio.open_nursery() as tn:
            await join_only_a(tn, peer, c, TOPIC_ADVERTS)
            sent = 0
            with trio.move_on_after(20):
                while c.peer_id(A) in peer.host.connected_peers() and sent < 1_000:
                    await peer.wait_send_room(c.peer_id(A))
                    await peer.host.publish(
                        TOPIC_ADVERTS,
                        envelope(peer.identity, victim.public_key, "advert", body, now_ms()),
                    )
                    sent += 1
            await wait_until(
                lambda: a.host.statistics().forwarders_blocked == 1, 10, "A to block the test peer"
            )
            await wait_until(
                lambda: c.peer_id(A) not in peer.host.connected_peers(), 10, "the disconnect"
            )
            checked = a.gossip_check.rejected["bad_signature"]  # type: ignore[union-attr]
            # Blocked at the 100th; a few more may have been in A's pipeline then.
            print(f"\nforged flood: blocked after {checked} checked of {sent} sent")
            assert 100 <= checked <= 140, (checked, sent)
            assert sent < 1_000  # the flood was cut short by the disconnect
            tn.cancel_scope.cancel()
        for i in (B, C):
            assert c.daemon(i).gossip_check.rejected["bad_signature"] == 0  # type: ignore[union-attr]
        job = await c.wait_job(A, await c.submit(A, JOB), timeout_s=30)
        assert job.state == "succeeded", job.reason
        assert a.core_errors == 0


async def test_hostile_numbers_are_rejected_at_the_door_never_forwarded_never_logged(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Regression (issue 16): an offer with ``timeout_s`` = inf or 1e300 raised
    inside every core and was forwarded mesh-wide; an award priced at inf was
    accepted and logged, after which the log could not be served as JSON."""
    net = NetParams(gossip_heartbeat_s=0.2, peer_exchange_interval_s=0.5, target_peers=2)
    async with Cluster.started(nursery, tmp_path, 3, core_params=FAST_CORE, net_params=net) as c:
        a = c.daemon(A)
        peer = FloodPeer(Identity.generate(), refuse=[c.peer_id(B), c.peer_id(C)])
        me = peer.identity
        offer = Offer(
            job_id="job-hostile000",
            attempt=1,
            spec_digest="sha256:" + "ab" * 32,
            requirements=OfferRequirements(image="meshd/busybox:1"),
            timeout_s=10.0,
            bid_window_ms=250,
        ).model_dump(mode="python")
        award = {
            "job_id": "job-hostile001",
            "attempt": 1,
            "replica": 0,
            "spec": JOB,
            "price": math.inf,
            "lease_ms": 15_000,
        }
        async with trio.open_nursery() as tn:
            await join_only_a(tn, peer, c, TOPIC_OFFERS)
            for timeout_s in (math.inf, 1e300):
                data = envelope(
                    me, me.public_key, "offer", {**offer, "timeout_s": timeout_s}, now_ms()
                )
                await peer.host.publish(TOPIC_OFFERS, data)
            reply = await peer.host.request(
                c.peer_id(A), DIRECT_PROTOCOL, envelope(me, me.public_key, "award", award, now_ms())
            )
            rejected = a.gossip_check.rejected  # type: ignore[union-attr]
            core = a.node.counters  # type: ignore[union-attr]
            await wait_until(
                lambda: (
                    rejected["non_finite"] >= 1
                    and rejected["out_of_range"] >= 1
                    and core["rejected_non_finite"] >= 1
                ),
                10,
                "A to reject both offers and the award",
            )
            tn.cancel_scope.cancel()
        assert reply is not None
        assert a.core_errors == 0 and not c.members[A].done.is_set()  # type: ignore[union-attr]
        # Never forwarded: B and C saw neither offer.
        for i in (B, C):
            d = c.daemon(i)
            assert not d.gossip_check.rejected["non_finite"]  # type: ignore[union-attr]
            assert not d.gossip_check.rejected["out_of_range"]  # type: ignore[union-attr]
            assert d.log is not None
            assert not any("job-hostile" in json.dumps(r.body, default=repr) for r in d.log.iter())
        # Never logged: every record of A's log encodes as strict JSON.
        assert a.log is not None
        for record in a.log.iter():
            json.dumps(record.body, allow_nan=False, default=repr)
        assert not any("job-hostile" in json.dumps(r.body, default=repr) for r in a.log.iter())
        # And A keeps working.
        job_id = await c.submit(A, JOB)
        job = await c.wait_job(A, job_id, timeout_s=30)
        assert job.state == "succeeded", job.reason
