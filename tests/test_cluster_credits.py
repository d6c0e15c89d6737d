"""Credits survive restarts of real daemons (meshd/core/credits.py "Restart", specs/CREDITS.md §7.3).

Rules checked on an in-process cluster (real libp2p on loopback, LevelDB logs,
the process executor):
- a restarted worker has the receipts it countersigned back in its ledger,
  from its own log, before it hears anything from the mesh;
- a restarted origin asks its workers again and gets its receipts back: its
  ledger and balances equal what they were before the restart;
- the next sequence number it issues is larger than any it issued before.
"""

from __future__ import annotations

from pathlib import Path

import trio

from meshd.testing.cluster import Cluster
from meshd.testing.faults import log_records

JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/ok"],
    "replicas": 1,
    "bounty": 1.0,
}


def ledger(c: Cluster, i: int, worker: str | None = None) -> dict[tuple[str, int], float]:
    node = c.daemon(i).node
    assert node is not None
    return {
        k: e.credits for k, e in node.ledger.entries.items() if worker is None or e.worker == worker
    }


def balance(c: Cluster, i: int, peer: str) -> dict[str, float]:
    node = c.daemon(i).node
    assert node is not None
    return node.ledger.balances().get(peer, {"earned": 0.0, "spent": 0.0, "balance": 0.0})


def issued_seqs(c: Cluster, i: int) -> list[int]:
    return [b["seq"] for kind in ("receipt", "attestation") for b in log_records(c.daemon(i), kind)]


async def test_balances_and_ledger_survive_restarts_of_worker_and_origin(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 3) as c:
        ids = [
            await c.submit(0, {**JOB, "command": ["sh", "-c", f"echo {i} > $MESH_OUTPUTS/ok"]})
            for i in range(3)
        ]
        for job_id in ids:
            assert (await c.wait_job(0, job_id, timeout_s=60)).state == "succeeded"
        await c.wait_for(
            lambda: len(ledger(c, 0)) == len(ids), 30, "the origin's receipts countersigned"
        )
        origin = c.peer_id(0)
        before = ledger(c, 0)
        spent = balance(c, 0, origin)["spent"]
        assert spent >= len(ids) * 1.0  # the bounty alone
        workers = sorted({i for i in (1, 2) if ledger(c, i, c.peer_id(i))})
        own = {i: ledger(c, i, c.peer_id(i)) for i in workers}
        earned = {i: balance(c, i, c.peer_id(i))["earned"] for i in workers}
        max_seq = max(issued_seqs(c, 0))

        for i in workers:  # worker restart: its own log gives the ledger back at once
            await c.wait_durable(i)
            await c.restart(i)
            assert ledger(c, i, c.peer_id(i)) == own[i]
            assert balance(c, i, c.peer_id(i))["earned"] == earned[i]

        await c.restart(0)  # origin restart: it asks its workers again
        assert not ledger(c, 0)
        await c.wait_for(lambda: ledger(c, 0) == before, 30, "the origin's ledger to come back")
        assert balance(c, 0, origin)["spent"] == spent

        await c.wait_mesh()
        job_id = await c.submit(
            0, {**JOB, "command": ["sh", "-c", "echo after > $MESH_OUTPUTS/ok"]}
        )
        assert (await c.wait_job(0, job_id, timeout_s=60)).state == "succeeded"
        (receipt,) = [b for b in log_records(c.daemon(0), "receipt") if b["job_id"] == job_id]
        assert receipt["seq"] > max_seq
        for i in c.running():
            node = c.daemon(i).node
            assert node is not None and not node.ledger.equivocations
