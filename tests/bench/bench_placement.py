"""Placement latency on a 5-process loopback mesh (run by hand, not by pytest).

    python tests/bench/bench_placement.py [--jobs 40] [--burst 40]

Starts 5 real `meshd start` processes (process executor), then:

1. sequential small jobs from node 0: submit→award and submit→result latency
   (p50, p99), read from the origin's own job history (its clock), and the
   share of submit→award spent inside the bid window;
2. a burst of jobs submitted at once: jobs/s sustained until all finished.

Baseline measured in the same run: the control API's round trip (GET
/v1/status) on the same daemon — the floor of anything a client observes —
so figures print as absolute values and as ratios to it. Targets (issue 3):
submit→award p50 ≤ 100 ms and p99 ≤ 300 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshd.testing.procs import start_mesh, stop_all  # noqa: E402

JOB = {"image": "meshd/busybox:1", "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/o"], "replicas": 1}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def history_ts(job: dict, state: str) -> int | None:
    return next((h["ts_ms"] for h in job["history"] if h["state"] == state), None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--burst", type=int, default=40)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    procs = start_mesh(root, 5, params={"advert_interval_ms": 1000, "advert_ttl_ms": 8000})
    try:
        client = procs[0].client()
        time.sleep(2)
        rtt = []
        for _ in range(50):
            t = time.perf_counter()
            client.status()
            rtt.append((time.perf_counter() - t) * 1000)
        award, result, window = [], [], []
        for _ in range(args.jobs):
            jid = client.submit(dict(JOB))["job_id"]
            while (job := client.job(jid))["state"] not in ("succeeded", "failed"):
                time.sleep(0.05)
            sub, off, aw, done = (job["submitted_at"], history_ts(job, "offered"), history_ts(job, "awarded"),
                                  history_ts(job, "succeeded"))
            if job["state"] != "succeeded" or aw is None or done is None or off is None:
                print("job failed:", job["reason"])
                continue
            award.append(aw - sub)
            result.append(done - sub)
            window.append((aw - off) / max(1, aw - sub))
        t0 = time.perf_counter()
        ids = [client.submit(dict(JOB))["job_id"] for _ in range(args.burst)]
        pending = set(ids)
        while pending:
            for jid in list(pending):
                if client.job(jid)["state"] in ("succeeded", "failed"):
                    pending.discard(jid)
            time.sleep(0.05)
        burst_s = time.perf_counter() - t0
        base = statistics.median(rtt)
        print(f"\nplacement on a 5-process loopback mesh ({len(award)} sequential jobs, burst of {args.burst})")
        print(f"{'metric':32} {'value':>10} {'× API RTT':>10}")
        print(f"{'baseline: API round trip p50':32} {base:8.1f}ms {1.0:10.2f}")
        for name, xs in (("submit→award", award), ("submit→result", result)):
            for p in (50, 99):
                v = pct(xs, p)
                print(f"{name + f' p{p}':32} {v:8.1f}ms {v / base:10.2f}")
        print(f"{'bid-window share of submit→award':32} {statistics.median(window) * 100:9.0f}%")
        print(f"{'burst throughput':32} {args.burst / burst_s:7.1f}/s")
        print("targets: submit→award p50 ≤ 100 ms, p99 ≤ 300 ms")
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
