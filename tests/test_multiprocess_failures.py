"""Failures attributed right and budgets that hold, on real `meshd start`
processes (meshd/testing/procs.py): a worker SIGKILLed mid-run, a job that
exits nonzero. What the origin shows as the job's cost is compared with what
its ledger holds (countersigned receipts, ``GET /v1/credits``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from meshd.testing.procs import FAST_PARAMS, DaemonProcess, mesh_cli, start_mesh, stop_all

PARAMS = {
    **FAST_PARAMS,
    "replication_fraction": 0.0,
    "untrusted_replication": 0.0,
    "peer_score_interval_ms": 500,
}
"""One run per job, so runs can be counted (replication is another part's
subject); standing sampled often, so every peer's uptime is known at once."""


def charged(origin: DaemonProcess, job_id: str) -> float:
    """What the origin's ledger charges the job: its countersigned receipts."""
    me = origin.status()["peer_id"]  # type: ignore[index]
    return math.fsum(
        r["credits"]
        for r in origin.client().credits()["receipts"]
        if r["origin"] == me and r["job_id"] == job_id
    )


def workers(origin: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {p["peer_id"]: p for p in origin.client().peers()["peers"]}


def test_a_worker_killed_mid_run_is_not_paid_and_the_budget_holds(tmp_path: Path) -> None:
    procs = start_mesh(tmp_path, 3, params=dict(PARAMS))
    origin = procs[0]
    try:
        peers = workers(origin)
        # credits per second of a run at each worker: score × price (per GFLOP)
        rate = max(p["score_gflops"] * p["price"] / 3600 for p in peers.values())
        budget = 14 * rate  # one 6 s run fits, the 60 s timeout bound does not
        answer = origin.client().submit(
            {
                "image": "meshd/busybox:1",
                "command": ["sh", "-c", 'sleep 6; echo ok > "$MESH_OUTPUTS/ok"'],
                "timeout_s": 60,
                "max_budget": budget,
                "requirements": {"runtime": "process"},
            }
        )
        job_id = answer["job_id"]

        def running_on() -> str | None:
            job = origin.client().job(job_id)
            return job["worker"] if job["state"] == "running" else None

        victim_id = origin.wait_for(running_on, 60, "the job to run")
        victim = next(p for p in procs if p.status()["peer_id"] == victim_id)  # type: ignore[index]
        assert victim is not origin
        victim.kill()
        job = origin.wait_for(
            lambda: (j := origin.client().job(job_id))["state"] in ("succeeded", "failed") and j,
            90,
            "the job to end after its worker was killed",
        )
        assert job["state"] == "succeeded", job["reason"]
        assert [a["state"] for a in job["awards"]] == ["lost", "done"]
        assert job["result"]["worker"] != victim_id
        cost = job["cost"]
        origin.wait_for(lambda: charged(origin, job_id) > 0, 30, "the receipt's countersignature")
        assert cost["actual"] == charged(origin, job_id), "shown = what the ledger charged"
        assert 0 < cost["actual"] <= budget == cost["budget"]
        shown = " ".join(mesh_cli(origin.data_dir, "job", job_id).stdout.split())
        assert f"charged {cost['actual']:.4g} of budget {budget:.4g} credits" in shown, shown
    finally:
        stop_all(procs)


def test_a_job_that_exits_nonzero_fails_after_two_runs_paid_by_its_submitter(
    tmp_path: Path,
) -> None:
    procs = start_mesh(tmp_path, 3, params=dict(PARAMS))
    origin = procs[0]
    try:
        # Every peer has had its first uptime sample: reputations stand still from here
        # unless a job's outcome is recorded against (or for) a worker.
        origin.wait_for(
            lambda: all(p["reputation"] > 0 for p in workers(origin).values()),
            30,
            "standing of every peer",
        )
        before = {p: w["reputation"] for p, w in workers(origin).items()}
        cp = mesh_cli(
            origin.data_dir,
            "submit",
            "--runtime",
            "process",
            "--image",
            "meshd/busybox:1",
            "--wait",
            "--",
            "sh",
            "-c",
            "sleep 1; exit 3",
        )
        assert cp.returncode == 1, cp.stdout + cp.stderr
        job_id = cp.stdout.strip().splitlines()[0]
        job = json.loads(mesh_cli(origin.data_dir, "job", job_id, "--json").stdout)
        assert job["state"] == "failed"
        assert len(job["awards"]) == 2
        assert len({a["peer_id"] for a in job["awards"]}) == 2
        assert job["reason"].count("exit code 3") == 1, job["reason"]
        origin.wait_for(
            lambda: charged(origin, job_id) == job["cost"]["actual"] > 0,
            30,
            "both receipts countersigned",
        )
        after = {p: w["reputation"] for p, w in workers(origin).items()}
        assert after == before
    finally:
        stop_all(procs)
