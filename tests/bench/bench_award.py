"""Submit-to-award latency on a loopback mesh of real `meshd` processes, by the
path direct messages take (run by hand, not by pytest).

    python tests/bench/bench_award.py [--nodes 6] [--jobs 40] [--gap 0.2] [--hog]

For each path, in the same run: start N real `meshd start` processes
(node 0 a client, the others process workers), submit ``--jobs`` small jobs to node 0 one at a time
(each after the previous one finished, ``--gap`` seconds apart) and read
submit→award from the origin's own job history (its clock); then stop the
mesh. The paths:

- ``per-request``: ``direct_channels = false``, one libp2p stream per direct
  message (``/meshd/direct/1``), the path before persistent channels;
- ``channels``: the default, one persistent channel per peer
  (``/meshd/direct/2``).

Printed: p50 and p99 of each, the ratio channels / per-request, and the
baseline measured in the same run on the same daemon: the control API's
round trip (GET /v1/status). ``--hog`` runs a bounded busy loop on every
core meanwhile. Target (issue 14): p50 ≤ 30 ms, p99 ≤ 100 ms on 6 processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_placement import JOB, PhaseTimeout, history_ts, pct, start_hog, wait_all  # noqa: E402

from meshd.testing.procs import DaemonProcess, stop_all  # noqa: E402

PATHS = {"per-request": False, "channels": True}
"""Each path's ``config.toml`` ``direct_channels``."""


def start_client_mesh(root: Path, n: int, channels: bool) -> list[DaemonProcess]:
    """Node 0 a client (no executor: it never runs its own jobs, §8.5), nodes
    1..n-1 process workers bootstrapped from it; waits until node 0 sees them
    all."""
    procs = [
        DaemonProcess(
            root / "node0",
            executor="auto",
            config={"allow_process_executor": False, "direct_channels": channels},
            env={"DOCKER_HOST": f"unix://{root}/no-engine.sock"},
        )
    ]
    procs += [
        DaemonProcess(root / f"node{i}", config={"direct_channels": channels}) for i in range(1, n)
    ]
    try:
        for p in procs:
            p.init()
        procs[0].start()
        for p in procs[1:]:
            p.bootstrap = [procs[0].addr]
            p.start()
        procs[0].wait_for(
            lambda: (procs[0].status() or {}).get("peers", 0) >= n - 1, 120, "the mesh"
        )
    except BaseException:
        stop_all(procs)
        raise
    return procs


def measure(args: argparse.Namespace, root: Path, channels: bool) -> tuple[list[int], float, dict]:
    """submit→award of each job (ms), the API round trip p50 (ms), and the
    origin's network counters, on a fresh mesh whose direct messages take
    the given path."""
    procs = start_client_mesh(root, args.nodes, channels)
    try:
        client = procs[0].client()
        time.sleep(2)
        rtt = []
        for _ in range(30):
            t = time.perf_counter()
            client.status()
            rtt.append((time.perf_counter() - t) * 1000)
        award: list[int] = []
        for _ in range(args.jobs):
            jid = client.submit(dict(JOB))["job_id"]
            try:
                job = wait_all(client, [jid], time.monotonic() + args.timeout, "one job")[jid]
            except PhaseTimeout as exc:
                print("job not finished:", exc)
                continue
            aw = history_ts(job, "awarded")
            if job["state"] != "succeeded" or aw is None:
                print("job failed:", job["reason"])
                continue
            award.append(aw - job["submitted_at"])
            time.sleep(args.gap)
        counters = (procs[0].status() or {}).get("counters") or {}
        return award, statistics.median(rtt), counters
    finally:
        stop_all(procs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between jobs")
    ap.add_argument("--hog", action="store_true", help="a busy loop on every core meanwhile")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per job")
    args = ap.parse_args()
    hogs = start_hog(2 * args.jobs * args.timeout) if args.hog else []
    results: dict[str, tuple[list[int], float, dict]] = {}
    try:
        for name, channels in PATHS.items():
            root = Path(tempfile.mkdtemp(prefix=f"bench-award-{name}-"))
            results[name] = measure(args, root, channels)
    finally:
        for h in hogs:  # the loop is timeout's child: end the whole group
            os.killpg(h.pid, signal.SIGKILL)
    print(
        f"\nsubmit→award on a {args.nodes}-process loopback mesh, {args.jobs} jobs one at a "
        f"time, {args.gap:g} s apart{', CPU hog on every core' if args.hog else ''}"
    )
    print(f"{'path':12} {'p50':>8} {'p99':>8} {'API RTT p50':>12}  origin's direct traffic")
    if not all(award for award, _, _ in results.values()):
        print(
            "FAILED: no job of a path was awarded in time:",
            {k: len(v[0]) for k, v in results.items()},
        )
        return 1
    for name, (award, rtt, net) in results.items():
        traffic = ", ".join(
            f"{k} {net['net_' + k]}"
            for k in ("requests_out", "calls_out", "channels_out")
            if "net_" + k in net
        )
        print(f"{name:12} {pct(award, 50):6.0f}ms {pct(award, 99):6.0f}ms {rtt:10.1f}ms  {traffic}")
    old, new = results["per-request"][0], results["channels"][0]
    print(
        f"{'ratio':12} {pct(new, 50) / max(1, pct(old, 50)):8.2f} "
        f"{pct(new, 99) / max(1, pct(old, 99)):8.2f}   (channels / per-request)"
    )
    print("target: submit→award p50 ≤ 30 ms, p99 ≤ 100 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
