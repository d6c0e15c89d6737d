"""Placement on a loopback mesh of real `meshd` processes (run by hand, not by pytest).

    python tests/bench/bench_placement.py [--nodes 6] [--jobs 40] [--burst 40] [--hog]

Starts N real `meshd start` processes (process executor), then:

1. sequential small jobs from node 0: submit→award and submit→result latency
   (p50, p99), read from the origin's own job history (its clock), the share
   of submit→award spent inside the bid window, and jobs/s;
2. a burst of jobs submitted at once: jobs/s until all finished, as a ratio
   to the sequential phase's jobs/s; the most awards any job needed; the
   origin's CPU time per job (burst vs sequential); the origin's backlog
   (inbox waits, shed, send-queue expiries) after the burst;
3. a burst of one-second jobs (``--long-burst``): time until all finished as a
   ratio to the ideal (1 s × jobs ÷ all workers' slots, rounded up), and the
   most jobs one worker ran as a ratio to the fair share (1.0 = even);
4. the CPU the idle mesh uses (sum over all daemons, in cores).

``--hog`` runs a bounded busy loop on every core for the whole run (real
workers are busy machines). Every phase has a deadline (``--phase-timeout``):
a phase that does not finish is reported with the states its jobs are stuck
in and the benchmark exits 1 — a hang is a failure, not a slow result.

Baseline measured in the same run: the control API's round trip (GET
/v1/status) on the same daemon, and the sequential phase's throughput.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshd.testing.procs import start_mesh, stop_all  # noqa: E402

JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/o"],
    "replicas": 1,
    "requirements": {"runtime": "process"},  # the workers run the process executor
}


class PhaseTimeout(Exception):
    pass


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def history_ts(job: dict, state: str) -> int | None:
    return next((h["ts_ms"] for h in job["history"] if h["state"] == state), None)


def proc_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mesh_cpu_cores(procs: list[Any], seconds: float) -> float:
    """CPU time all daemons used over ``seconds`` of wall time, in cores."""
    before = sum(proc_cpu_s(p.proc.pid) for p in procs)
    time.sleep(seconds)
    return (sum(proc_cpu_s(p.proc.pid) for p in procs) - before) / seconds


def wait_all(client: Any, ids: list[str], deadline: float, phase: str) -> dict[str, dict]:
    """Poll until every job is terminal; PhaseTimeout (with the stuck states) past ``deadline``."""
    views: dict[str, dict] = {}
    while len(views) < len(ids):
        for jid in ids:
            if jid not in views and (v := client.job(jid))["state"] in ("succeeded", "failed"):
                views[jid] = v
        if time.monotonic() > deadline:
            stuck = Counter(client.job(j)["state"] for j in ids if j not in views)
            raise PhaseTimeout(
                f"{phase}: {len(ids) - len(views)} of {len(ids)} jobs not finished "
                f"(states: {dict(stuck)})"
            )
        time.sleep(0.05)
    return views


def start_hog(seconds: float) -> list[subprocess.Popen[bytes]]:
    """A busy loop on every core, each bounded by ``timeout`` so none outlives the run."""
    cmd = ["timeout", str(int(seconds)), "sh", "-c", "while :; do :; done"]
    return [subprocess.Popen(cmd, start_new_session=True) for _ in range(os.cpu_count() or 1)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--burst", type=int, default=40)
    ap.add_argument("--long-burst", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--hog", action="store_true", help="a busy loop on every core meanwhile")
    ap.add_argument("--phase-timeout", type=float, default=300.0, help="seconds per phase")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    hogs = start_hog(6 * args.phase_timeout) if args.hog else []
    procs = start_mesh(
        root,
        args.nodes,
        params={"advert_interval_ms": 1000, "advert_ttl_ms": 8000, "advert_rate_budget": 1000.0},
    )
    try:
        return run_phases(args, procs)
    except PhaseTimeout as exc:
        print(f"\nFAILED: a phase did not finish: {exc}")
        st = procs[0].status() or {}
        print("origin backlog:", st.get("backlog"))
        return 1
    finally:
        stop_all(procs)
        for h in hogs:  # the loop is timeout's child: end the whole group
            os.killpg(h.pid, signal.SIGKILL)


def run_phases(args: argparse.Namespace, procs: list[Any]) -> int:
    client = procs[0].client()
    origin_pid = procs[0].proc.pid
    time.sleep(2)
    idle_cores = mesh_cpu_cores(procs, 5.0)
    rtt = []
    for _ in range(50):
        t = time.perf_counter()
        client.status()
        rtt.append((time.perf_counter() - t) * 1000)
    award, result, window = [], [], []
    deadline = time.monotonic() + args.phase_timeout
    cpu0, t_seq = proc_cpu_s(origin_pid), time.perf_counter()
    for _ in range(args.jobs):
        jid = client.submit(dict(JOB))["job_id"]
        job = wait_all(client, [jid], deadline, "sequential")[jid]
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
    seq_rate = args.jobs / (time.perf_counter() - t_seq)
    seq_cpu_per_job = (proc_cpu_s(origin_pid) - cpu0) / args.jobs

    cpu0, t0 = proc_cpu_s(origin_pid), time.perf_counter()
    ids = [client.submit(dict(JOB))["job_id"] for _ in range(args.burst)]
    views = wait_all(client, ids, time.monotonic() + args.phase_timeout, "burst")
    burst_s = time.perf_counter() - t0
    burst_cpu_per_job = (proc_cpu_s(origin_pid) - cpu0) / args.burst
    burst_ok = sum(v["state"] == "succeeded" for v in views.values())
    awards = [len(v["awards"]) for v in views.values()]
    backlog = (procs[0].status() or {}).get("backlog") or {}

    long_s, spread = long_burst(client, args.long_burst, args.phase_timeout)
    workers = args.nodes - 1
    slots = sum(p.status()["load"]["capacity"] for p in procs[1:])
    fair_s = float(-(-args.long_burst // slots))
    base = statistics.median(rtt)
    print(
        f"\nplacement on a {args.nodes}-process loopback mesh ({len(award)} sequential jobs, "
        f"burst of {args.burst}{', CPU hog on every core' if args.hog else ''})"
    )
    print(f"{'metric':34} {'value':>10} {'ratio':>10}")
    print(f"{'baseline: API round trip p50':34} {base:8.1f}ms {1.0:10.2f}  × API RTT")
    for name, xs in (("submit→award", award), ("submit→result", result)):
        for p in (50, 99):
            v = pct(xs, p)
            print(f"{name + f' p{p}':34} {v:8.1f}ms {v / base:10.2f}  × API RTT")
    print(f"{'bid-window share of submit→award':34} {statistics.median(window) * 100:9.0f}%")
    print(f"{'sequential throughput (baseline)':34} {seq_rate:8.1f}/s {1.0:10.2f}")
    print(
        f"{'burst throughput':34} {args.burst / burst_s:8.1f}/s {args.burst / burst_s / seq_rate:10.2f}"
        "  × sequential"
    )
    print(f"{'burst jobs succeeded':34} {burst_ok:8d}/{args.burst}")
    print(
        f"{'awards per burst job (max)':34} {max(awards):8d}   "
        f"(jobs with more than 2: {sum(a > 2 for a in awards)})"
    )
    print(
        f"{'origin CPU per job, burst':34} {burst_cpu_per_job * 1000:8.1f}ms "
        f"{burst_cpu_per_job / max(1e-9, seq_cpu_per_job):10.2f}  × sequential "
        f"({seq_cpu_per_job * 1000:.1f} ms)"
    )
    inbox = backlog.get("inbox") or {}
    sq = backlog.get("send_queues") or {}
    print(
        f"{'origin inbox after burst':34} wait max "
        + ", ".join(f"{k} {v.get('wait_max_ms')} ms" for k, v in inbox.items())
        + f"; shed {sum(v.get('shed', 0) for v in inbox.values())}"
        + f"; send queue expired {sq.get('expired', 0)}, wait max {sq.get('wait_max_ms', 0)} ms"
    )
    print(
        f"\n{args.long_burst} one-second jobs at once over {workers} workers, {slots} slots "
        f"(fair share {args.long_burst / workers:g} jobs; ideal {fair_s:g} s)"
    )
    print(f"{'all finished':34} {long_s:8.1f}s  {long_s / fair_s:5.2f} × ideal")
    print(
        f"{'most jobs on one worker':34} {max(spread):8d}   "
        f"{max(spread) / (args.long_burst / workers):5.2f} "
        f"× fair share  (per worker: {sorted(spread, reverse=True)})"
    )
    print(f"{'idle mesh CPU (all daemons)':34} {idle_cores:8.2f} cores")
    print("targets: submit→award p50 ≤ 100 ms, p99 ≤ 300 ms; every burst job awarded ≤ 2 times")
    return 0 if burst_ok == args.burst and max(awards) <= 2 else 1


def long_burst(client: Any, n: int, timeout_s: float) -> tuple[float, list[int]]:
    """Submit n one-second jobs at once; (seconds until all ended, jobs per worker)."""
    job = dict(JOB, command=["sh", "-c", "sleep 1; echo ok > $MESH_OUTPUTS/o"])
    t0 = time.perf_counter()
    ids = [client.submit(dict(job))["job_id"] for _ in range(n)]
    views = wait_all(client, ids, time.monotonic() + timeout_s, "one-second burst")
    elapsed = time.perf_counter() - t0
    per: dict[str, int] = {}
    for v in views.values():
        if v.get("result"):
            per[v["result"]["worker"]] = per.get(v["result"]["worker"], 0) + 1
    return elapsed, list(per.values()) or [0]


if __name__ == "__main__":
    sys.exit(main())
