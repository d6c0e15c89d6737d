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


async def test_a_node_whose_log_lost_its_tail_does_not_go_on_silently(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Issue 16 "Noticing a lost tail" (CREDITS.md §8.1): node 0's log is rolled
    back to a copy taken before it signed more receipts (as a lost write-ahead
    log would); once restarted, its peers hold receipts it signed with later
    sequence numbers, and it says so: a ``tail_lost`` record, an ERROR line,
    ``tail_lost`` in its status."""
    import shutil

    async with Cluster.started(nursery, tmp_path, 3, core_params=SYNC_CORE) as c:
        log_dir = c.members[0].data_dir / "log"
        first = await c.submit(0, job(1))
        assert (await c.wait_job(0, first, timeout_s=60)).state == "succeeded"
        await c.wait_for(lambda: len(ledger_keys(c, 1)) >= 1, 30, "the first receipt")
        await c.kill(0)
        shutil.copytree(log_dir, tmp_path / "log-before")
        await c.start(0)
        await c.wait_mesh()
        later = [await c.submit(0, job(i)) for i in (2, 3)]
        for j in later:
            assert (await c.wait_job(0, j, timeout_s=60)).state == "succeeded"
        issued = {r["seq"] for r in log_records(c.daemon(0), "receipt")}
        await c.wait_for(
            lambda: {s for o, s in ledger_keys(c, 1) if o == c.peer_id(0)} >= issued,
            30,
            "node 1 to hold every receipt node 0 signed",
        )
        await c.kill(0)
        shutil.rmtree(log_dir)
        shutil.copytree(tmp_path / "log-before", log_dir)  # the tail is gone
        await c.start(0)
        head = max(r["seq"] for r in log_records(c.daemon(0), "receipt"))
        assert head < max(issued)
        node = c.daemon(0).node
        assert node is not None
        await c.wait_for(lambda: node.ledger.lost_tail is not None, 30, "the lost tail to show")
        lost = node.ledger.lost_tail
        assert lost is not None and lost["log_head_seq"] == head and lost["seen_seq"] in issued
        await c.wait_for(  # the record is durable at the batch's group commit
            lambda: any(r["seen_seq"] in issued for r in log_records(c.daemon(0), "tail_lost")),
            30,
            "the tail_lost record",
        )
        view = c.daemon(0).view
        # a second peer's receipt may name a later seq meanwhile: the status
        # shows what the ledger holds now, never an earlier report
        assert view is not None and view.status()["tail_lost"] == node.ledger.lost_tail
        assert view.status()["tail_lost"]["seen_seq"] >= lost["seen_seq"]
