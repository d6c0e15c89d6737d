"""Membership on real daemons (specs/PROTOCOL.md §5.2, §7.1, §7.8): with
heartbeats minutes apart, a newcomer still sees the mesh in seconds, because
it asks the first peers it connects to for the adverts they hold; daemons
whose adverts are split into shards still place each other's jobs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from meshd.config import init_node
from meshd.core.events import TOPIC_OFFERS, TOPIC_RECEIPTS
from meshd.core.peers import advert_topic
from meshd.testing.cluster import FAST_CORE, Cluster

SLOW_HEARTBEATS = dataclasses.replace(FAST_CORE, advert_rate_budget=0.01)
"""Heartbeats every ``1.5 × est_nodes / 0.01`` s (150 s alone, 300 s between two)."""


async def test_newcomer_sees_the_mesh_from_pulls_not_heartbeats(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    c = Cluster(nursery, tmp_path, 3, core_params=SLOW_HEARTBEATS)
    try:
        for m in c.members:
            init_node(m.data_dir, listen="/ip4/127.0.0.1/tcp/0")
        await c.start(0)
        await c.start(1)
        await c.wait_mesh()
        await trio.sleep(1.0)  # the two have said all they will say for minutes
        await c.start(2)
        await c.wait_for(lambda: c.sees(2, 0) and c.sees(2, 1), 15.0, "the newcomer's view")
        node = c.daemon(2).node
        assert node is not None
        assert node.worker.advert_interval() >= 100_000  # no heartbeat brought them
        assert node.counters["advert_pulls_sent"] >= 1
        assert node.counters["relayed_adverts"] >= 2
    finally:
        await c.stop_all()


async def test_a_clean_stop_leaves_the_views_at_once_a_crash_ages_out(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A daemon stopped cleanly publishes its leave notice (§7.1): the others
    drop it within moments, not after its TTL (minutes here); one that
    crashes (its task cancelled, no notice) is still held until the TTL."""
    c = Cluster(nursery, tmp_path, 4, core_params=SLOW_HEARTBEATS)
    try:
        await c.start_all()
        await c.wait_mesh()
        left, crashed = c.peer_id(3), c.peer_id(2)
        node = c.daemon(0).node
        assert node is not None
        assert node.peers.get(left).advert.ttl_ms >= 300_000  # type: ignore[union-attr]
        await c.kill(2)
        await c.stop(3)

        def holds(i: int, peer: str) -> bool:
            n = c.daemon(i).node
            assert n is not None
            return any(e.peer_id == peer for e in n.peers.alive(n.now_ms))

        await c.wait_for(
            lambda: not holds(0, left) and not holds(1, left), 10.0, "the leaver to leave the views"
        )
        for i in (0, 1):
            n = c.daemon(i).node
            assert n is not None
            assert n.counters["peers_left"] == 1
            assert n.peers.get(left) is None
            assert holds(i, crashed)  # no notice: held until its TTL
    finally:
        await c.stop_all()


SHARDED = dataclasses.replace(FAST_CORE, advert_shard_nodes=2, advert_shard_transition_ms=3_000)
"""Advert shards of about two nodes (specs/PROTOCOL.md §5.2): six daemons split."""


async def test_daemons_in_different_shards_still_get_offers_and_jobs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Six real daemons whose adverts split into shards: each subscribes to
    its shard's topic alone (besides offers and receipts), hears only its
    shard, and jobs submitted anywhere are still placed, also on workers the
    origin has never heard an advert of."""
    c = Cluster(nursery, tmp_path, 6, core_params=SHARDED)
    try:
        for m in c.members:
            init_node(m.data_dir, listen="/ip4/127.0.0.1/tcp/0")
        await c.start(0)
        for i in range(1, 6):
            await c.start(i)

        def settled() -> bool:
            nodes = [c.daemon(i).node for i in range(6)]
            return all(
                n is not None and n.peers.shards > 1 and n.peers.shards_from is None for n in nodes
            )

        await c.wait_for(settled, 60.0, "every daemon in a shard, its change over")
        for i in range(6):
            node = c.daemon(i).node
            assert node is not None
            topics = set(c.daemon(i).host.subscribed())
            mine = advert_topic(c.peer_id(i), node.peers.shards)
            assert topics == {mine, TOPIC_OFFERS, TOPIC_RECEIPTS}, (i, topics)
            assert node.counters["rejected_wrong_shard"] == 0
        # peers of other shards are no longer heard: their adverts age out
        await c.wait_for(
            lambda: any(not c.sees(i, j) for i in range(6) for j in range(6) if i != j),
            30.0,
            "a daemon to stop hearing a peer of another shard",
        )
        spec = {"image": "meshd/busybox:1", "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/o"]}
        jobs, views = [], {}
        for i in range(6):
            node = c.daemon(i).node
            assert node is not None
            views[i] = {e.peer_id for e in node.peers.alive(node.now_ms)}
            jobs += [(i, await c.submit(i, spec)) for _ in range(2)]
        unseen = 0
        for i, job_id in jobs:
            job = await c.wait_job(i, job_id, timeout_s=60)
            assert job.state == "succeeded", job.reason
            worker = next(r.worker for r in job.runs.values() if r.state == "done")
            unseen += worker != c.peer_id(i) and worker not in views[i]
        assert unseen, "every job ran on a worker its origin heard adverts of"
    finally:
        await c.stop_all()
