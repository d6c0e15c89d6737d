"""Say who cannot be reached (specs/PROTOCOL.md §8.6), on real daemons.

Node 2 hears everything (offers, adverts) but cannot deliver a direct message
to node 0, as a worker behind a NAT with no relay: its bids are lost on the
way. Node 2 marks node 0 unreachable and says so in its log; node 0 notices
that candidate 2 never answers, shows it as `cannot reach us`, and stops
offering it work until it reaches node 0 again.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.testing.cluster import FAST_CORE, Cluster
from tests.test_cluster import _client_first

JOB = {
    "image": "meshd/busybox:1",
    "replicas": 1,
    "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/ok"],
    "requirements": {"runtime": "process"},
}
PARAMS = dataclasses.replace(
    FAST_CORE, silent_rounds=2, silent_after_ms=1_000, silent_exclude_ms=8_000
)


def reached(c: Cluster, i: int, j: int) -> str | None:
    """What node i's `mesh peers` says of how node j is reached."""
    view = c.daemon(i).view
    assert view is not None
    return next((p["reached"] for p in view.peers()["peers"] if p["peer_id"] == c.peer_id(j)), None)


async def test_a_worker_that_cannot_reach_the_origin_is_marked_on_both_sides(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-engine.sock")
    caplog.set_level(logging.INFO, logger="meshd")
    async with Cluster.started(
        nursery, tmp_path, 3, configure=_client_first, core_params=PARAMS
    ) as c:
        origin = c.daemon(0).node
        assert origin is not None
        c.host(2).unsendable.add(c.peer_id(0))
        for _ in range(6):  # rounds in which node 2 is a candidate whose bids are lost
            job = await c.wait_job(0, await c.submit(0, dict(JOB)), timeout_s=120)
            assert job.state == "succeeded", job.reason
            if reached(c, 0, 2) == "cannot reach us":
                break
        assert reached(c, 0, 2) == "cannot reach us"
        assert reached(c, 2, 0) == "unreachable"
        assert any("cannot reach peer " + c.peer_id(0) in r.getMessage() for r in caplog.records), (
            "node 2 says in its log that it cannot reach node 0"
        )
        assert origin.counters["peers_cannot_reach_us"] == 1

        # While marked, node 2 is not offered work: named in the offers'
        # exclude lists, it bids no more (no more lost bids).
        worker2 = c.daemon(2).node
        assert worker2 is not None
        lost = worker2.counters["send_failed"]
        job = await c.wait_job(0, await c.submit(0, dict(JOB)), timeout_s=120)
        assert job.state == "succeeded" and c.peer_id(2) not in job.round_candidates
        assert worker2.counters["send_failed"] == lost

        # Once it can reach us again, the first message that gets through
        # ends the mark (after silent_exclude_ms it is a candidate again).
        c.host(2).unsendable.clear()
        await c.wait_for(
            lambda: reached(c, 0, 2) != "cannot reach us", 30, "node 0 to hear from node 2"
        )
        for _ in range(6):
            job = await c.wait_job(0, await c.submit(0, dict(JOB)), timeout_s=120)
            if reached(c, 2, 0) != "unreachable":
                break
        assert reached(c, 2, 0) != "unreachable"
        assert origin.counters["peers_reach_us_again"] == 1
