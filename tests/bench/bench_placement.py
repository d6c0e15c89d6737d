"""Placement latency on a 5-process loopback mesh (run by hand, not by pytest).

    python tests/bench/bench_placement.py [--jobs 40] [--burst 40]

Starts 5 real `meshd start` processes (process executor), then:

1. sequential small jobs from node 0: submit→award and submit→result latency
   (p50, p99), read from the origin's own job history (its clock), and the
   share of submit→award spent inside the bid window;
2. a burst of jobs submitted at once: jobs/s sustained until all finished;
3. a burst of one-second jobs (``--long-burst``): time until all finished as a
   ratio to the ideal (1 s × jobs ÷ all workers' slots, rounded up), and the
   most jobs one worker ran as a ratio to the fair share (1.0 = even);
4. the CPU the idle mesh uses (sum over all daemons, in cores).

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

JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/o"],
    "replicas": 1,
}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def history_ts(job: dict, state: str) -> int | None:
    return next((h["ts_ms"] for h in job["history"] if h["state"] == state), None)


def mesh_cpu_cores(procs: list, seconds: float) -> float:
    """CPU time all daemons used over ``seconds`` of wall time, in cores."""
    import os

    def cpu(p: object) -> float:
        fields = open(f"/proc/{p.proc.pid}/stat").read().split(")")[1].split()  # type: ignore[attr-defined]
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = sum(cpu(p) for p in procs)
    time.sleep(seconds)
    return (sum(cpu(p) for p in procs) - before) / seconds


def long_burst(client: object, n: int) -> tuple[float, list[int]]:
    """Submit n one-second jobs at once; (seconds until all ended, jobs per worker)."""
    job = dict(JOB, command=["sh", "-c", "sleep 1; echo ok > $MESH_OUTPUTS/o"])
    t0 = time.perf_counter()
    ids = [client.submit(dict(job))["job_id"] for _ in range(n)]  # type: ignore[attr-defined]
    views: dict[str, dict] = {}
    while len(views) < n:
        for jid in ids:
            if jid not in views and (v := client.job(jid))["state"] in ("succeeded", "failed"):  # type: ignore[attr-defined]
                views[jid] = v
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    per: dict[str, int] = {}
    for v in views.values():
        if v.get("result"):
            per[v["result"]["worker"]] = per.get(v["result"]["worker"], 0) + 1
    return elapsed, list(per.values()) or [0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--burst", type=int, default=40)
    ap.add_argument("--long-burst", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    procs = start_mesh(root, args.nodes, params={"advert_interval_ms": 1000, "advert_ttl_ms": 8000})
    try:
        client = procs[0].client()
        time.sleep(2)
        idle_cores = mesh_cpu_cores(procs, 5.0)
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
            sub, off, aw, done = (
                job["submitted_at"],
                history_ts(job, "offered"),
                history_ts(job, "awarded"),
                history_ts(job, "succeeded"),
            )
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
        long_s, spread = long_burst(client, args.long_burst)
        workers = args.nodes - 1
        slots = sum(p.status()["load"]["capacity"] for p in procs[1:])
        fair_s = float(-(-args.long_burst // slots))
        base = statistics.median(rtt)
        print(
            f"\nplacement on a {args.nodes}-process loopback mesh ({len(award)} sequential jobs, "
            f"burst of {args.burst})"
        )
        print(f"{'metric':32} {'value':>10} {'× API RTT':>10}")
        print(f"{'baseline: API round trip p50':32} {base:8.1f}ms {1.0:10.2f}")
        for name, xs in (("submit→award", award), ("submit→result", result)):
            for p in (50, 99):
                v = pct(xs, p)
                print(f"{name + f' p{p}':32} {v:8.1f}ms {v / base:10.2f}")
        print(f"{'bid-window share of submit→award':32} {statistics.median(window) * 100:9.0f}%")
        print(f"{'burst throughput':32} {args.burst / burst_s:7.1f}/s")
        print(
            f"\n{args.long_burst} one-second jobs at once over {workers} workers, {slots} slots "
            f"(fair share {args.long_burst / workers:g} jobs; ideal {fair_s:g} s)"
        )
        print(f"{'all finished':32} {long_s:8.1f}s  {long_s / fair_s:5.2f} × ideal")
        print(
            f"{'most jobs on one worker':32} {max(spread):8d}   {max(spread) / (args.long_burst / workers):5.2f} "
            f"× fair share  (per worker: {sorted(spread, reverse=True)})"
        )
        print(f"{'idle mesh CPU (all daemons)':32} {idle_cores:8.2f} cores")
        print("targets: submit→award p50 ≤ 100 ms, p99 ≤ 300 ms")
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
