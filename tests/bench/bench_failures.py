"""What a failing job costs, and whom it marks (run by hand, not by pytest).

    python tests/bench/bench_failures.py

Starts four real `meshd start` daemons (process executor, loopback; one origin
and three workers, replication off so runs can be counted) and submits from
the origin:

- A: ``sleep 1; exit 3`` — runs, the cost shown (``cost.actual``), what the
  origin's ledger charged (its countersigned receipts), the estimate and its
  basis, the reason, and every worker's reputation before and after;
- B: the same with ``sleep 2`` and ``max_budget`` of 3 s of the fastest
  worker's rate (each run costs about 2/3 of it; timeout 2.9 s so that a
  timeout-bound estimate does not refuse it) — the award states, shown,
  charged, and whether the charge is within the budget;
- C0, C1: two ``sleep 1`` jobs that succeed — the estimate (and its basis)
  before and after the image has a run on record, against the charge.

Figures are credits; they depend on the machine's measured score, so compare
the rows of one run (and old and new code on the same machine), not across
machines. Every wait has a timeout: a hang is a failure.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from meshd.testing.procs import FAST_PARAMS, DaemonProcess, start_mesh, stop_all

PARAMS = {
    **FAST_PARAMS,
    "replication_fraction": 0.0,
    "untrusted_replication": 0.0,
    "peer_score_interval_ms": 500,
}
IMAGE = "meshd/busybox:1"


def charged(origin: DaemonProcess, job_id: str) -> float:
    me = origin.status()["peer_id"]  # type: ignore[index]
    return math.fsum(
        r["credits"]
        for r in origin.client().credits()["receipts"]
        if r["origin"] == me and r["job_id"] == job_id
    )


def reputations(origin: DaemonProcess) -> dict[str, float]:
    return {p["peer_id"][-6:]: p["reputation"] for p in origin.client().peers()["peers"]}


def run(origin: DaemonProcess, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    job_id = origin.client().submit(spec)["job_id"]
    origin.wait_for(
        lambda: origin.client().job(job_id)["state"] in ("succeeded", "failed"), 120, job_id
    )
    time.sleep(3)  # the receipts' countersignatures come back
    return job_id, origin.client().job(job_id)


def row(name: str, origin: DaemonProcess, job_id: str, job: dict[str, Any]) -> None:
    cost = job["cost"]
    print(
        f"{name}: awards {[a['state'] for a in job['awards']]} | shown {cost['actual']:.5g}"
        f" | ledger {charged(origin, job_id):.5g} | estimate {cost['estimate']:.5g}"
        f" ({cost.get('basis', '?')}) | reason: {job['reason'] or '-'}"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        procs = start_mesh(Path(d), 4, params=dict(PARAMS))
        origin = procs[0]
        try:
            origin.wait_for(
                lambda: all(v > 0 for v in reputations(origin).values()), 30, "standing"
            )
            peers = origin.client().peers()["peers"]
            rate = max(p["score_gflops"] * p["price"] / 3600 for p in peers)
            print(f"fastest worker's rate: {rate:.5g} credits per second of a run")
            before = reputations(origin)
            job_id, job = run(origin, {"image": IMAGE, "command": ["sh", "-c", "sleep 1; exit 3"]})
            row("A exit 3", origin, job_id, job)
            print(f"  reputations before {before} after {reputations(origin)}")
            budget = 3.0 * rate
            job_id, job = run(
                origin,
                {
                    "image": IMAGE,
                    "command": ["sh", "-c", "sleep 2; exit 3"],
                    "timeout_s": 2.9,
                    "max_budget": budget,
                },
            )
            row(f"B exit 3, max_budget {budget:.5g}", origin, job_id, job)
            print(f"  charged within the budget: {charged(origin, job_id) <= budget + 1e-12}")
            for i in range(2):
                command = ["sh", "-c", f'sleep 1; echo {i} > "$MESH_OUTPUTS/x"']
                job_id, job = run(origin, {"image": IMAGE, "command": command})
                row(f"C{i} sleep 1", origin, job_id, job)
        finally:
            stop_all(procs)


if __name__ == "__main__":
    main()
