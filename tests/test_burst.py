"""Issue 10: a burst of jobs on real daemons beside a CPU hog completes, with
every queue on the path inside its bound and no message handled later than
the stale window after it arrived.

Four real `meshd start` processes (process executor) share the 2 cores with a
bounded busy loop on every core. Nothing here asserts a speed: the deadline
is a liveness bound (the livelock this guards against never finished at all),
and what is checked is behaviour: all 20 jobs succeed, no job needed more
than two awards, every inbox lane and send queue stayed within its bound, and
no peer's message waited in an inbox longer than ``max_message_age_ms``
(nor was rejected as stale by a core)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.core.params import CoreParams
from meshd.testing.procs import start_mesh, stop_all

pytestmark = pytest.mark.slow

JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/o"],
    "replicas": 1,
    "requirements": {"runtime": "process"},  # the workers run the process executor
}
LIVENESS_S = 420.0
"""The whole burst must end within this (before the fix it never ended)."""


def _hog(seconds: float) -> list[subprocess.Popen[bytes]]:
    cmd = ["timeout", str(int(seconds)), "sh", "-c", "while :; do :; done"]
    return [subprocess.Popen(cmd, start_new_session=True) for _ in range(os.cpu_count() or 1)]


def test_a_burst_beside_a_cpu_hog_completes_within_every_bound(tmp_path: Path) -> None:
    hogs = _hog(LIVENESS_S + 120)
    procs = start_mesh(
        tmp_path,
        4,
        params={"advert_interval_ms": 1000, "advert_ttl_ms": 8000, "advert_rate_budget": 1000.0},
    )
    try:
        client = procs[0].client()
        ids = [client.submit(dict(JOB))["job_id"] for _ in range(20)]
        deadline = time.monotonic() + LIVENESS_S
        views: dict[str, dict[str, Any]] = {}
        while len(views) < len(ids) and time.monotonic() < deadline:
            for jid in ids:
                if jid not in views and (v := client.job(jid))["state"] in (
                    "succeeded",
                    "failed",
                    "cancelled",
                ):
                    views[jid] = v
            time.sleep(0.2)
        states = {jid: views[jid]["state"] if jid in views else "unfinished" for jid in ids}
        assert all(s == "succeeded" for s in states.values()), states
        assert max(len(v["awards"]) for v in views.values()) <= 2, [
            len(v["awards"]) for v in views.values()
        ]
        stale_ms = CoreParams().max_message_age_ms
        for p in procs:
            st = p.status()
            assert st is not None
            backlog, counters = st["backlog"], st["counters"]
            for lane, q in backlog["inbox"].items():
                assert q["high_water"] <= q["bound"], (lane, q)
                if lane != "local":
                    assert q["wait_max_ms"] < stale_ms, (lane, q)
            sq = backlog["send_queues"]
            assert sq["high_water"] <= sq["bound"] and sq["high_water_peer"] <= sq["bound_peer"]
            assert counters.get("rejected_stale", 0) == 0, counters
            origin = backlog["origin"]
            assert origin["rounds_open"] <= origin["rounds_ceiling"]
    finally:
        stop_all(procs)
        for h in hogs:  # the loop is timeout's child: end the whole group
            os.killpg(h.pid, signal.SIGKILL)
