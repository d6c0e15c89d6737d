"""Ledgers converge on real daemons (ledger anti-entropy, specs/CREDITS.md §7.4).

Rule checked on an in-process cluster (real libp2p on loopback, LevelDB logs,
the process executor): of four nodes, one is stopped during a stream of jobs
(so it misses the countersigned receipts gossiped meanwhile, and on restart
loses the third parties' receipts it had, which are not in its log) and then
restarted; within 30 s of its restart every node computes the same balance for
every peer, and holds the same receipts. With ``ledger_sync_interval_ms = 0``
the restarted node stays behind (checked by hand when the test was written).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from meshd.testing.cluster import FAST_CORE, Cluster
from meshd.testing.faults import log_records

SYNC_CORE = dataclasses.replace(FAST_CORE, ledger_sync_interval_ms=1_000)
"""The cluster's test timings, with a short ledger sync interval."""


def job(i: int) -> dict[str, object]:
    return {
        "image": "meshd/busybox:1",
        "command": ["sh", "-c", f"echo {i} > $MESH_OUTPUTS/ok"],
        "replicas": 1,
        "bounty": 1.0 + i / 7,
    }


def ledger_keys(c: Cluster, i: int) -> set[tuple[str, int]]:
    node = c.daemon(i).node
    assert node is not None
    return set(node.ledger.entries)


def balances(c: Cluster, i: int) -> dict[str, dict[str, float]]:
    node = c.daemon(i).node
    assert node is not None
    return node.ledger.balances()


async def test_a_restarted_node_agrees_on_every_balance_within_30s(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 4, core_params=SYNC_CORE) as c:
        origins = [0, 1]
        ids: list[tuple[int, str]] = []
        for i in range(4):
            ids.append((origins[i % 2], await c.submit(origins[i % 2], job(i))))
            await trio.sleep(0.2)
        for o, j in ids:
            assert (await c.wait_job(o, j, timeout_s=60)).state == "succeeded"
        await c.wait_for(lambda: bool(ledger_keys(c, 3)), 30, "node 3 to hold receipts")
        held_before = len(ledger_keys(c, 3))

        stopped = c.peer_id(3)
        await c.kill(3)
        for i in range(4, 10):  # the stream goes on without node 3
            ids.append((origins[i % 2], await c.submit(origins[i % 2], job(i))))
            await trio.sleep(0.2)
        for o, j in ids:
            assert (await c.wait_job(o, j, timeout_s=90)).state == "succeeded"
        # Every receipt the origins logged is countersigned (or given up on).
        await c.wait_for(
            lambda: all(
                (c.peer_id(o), b["seq"]) in ledger_keys(c, o)
                for o in origins
                for b in log_records(c.daemon(o), "receipt")
                if b["worker"] != stopped
            ),
            60,
            "the receipts of the stream to be countersigned",
        )
        known = ledger_keys(c, 0) | ledger_keys(c, 1) | ledger_keys(c, 2)
        assert len(known) > held_before

        await c.restart(3)
        # Right after the restart it holds only what it countersigned itself.
        assert len(ledger_keys(c, 3)) < len(known)

        def converged() -> bool:
            keys = [ledger_keys(c, i) for i in range(4)]
            views = [balances(c, i) for i in range(4)]
            return (
                keys[0] >= known
                and all(k == keys[0] for k in keys)
                and all(v == views[0] for v in views)
            )

        await c.wait_for(converged, 30, "every node to agree on every balance")
        restarted = c.daemon(3).node
        assert restarted is not None
        assert restarted.counters["ledger_sync_receipts_added"] > 0
