"""Membership on real daemons (specs/PROTOCOL.md §7.1, §7.8): with heartbeats
minutes apart, a newcomer still sees the mesh in seconds, because it asks the
first peers it connects to for the adverts they hold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from meshd.config import init_node
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
