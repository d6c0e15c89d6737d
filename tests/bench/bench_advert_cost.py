"""The marginal CPU cost of one received advert, on real daemons.

Run: ``python tests/bench/bench_advert_cost.py [--nodes 8] [--window-s 30]``
(not collected by pytest; real ``meshd start`` processes on loopback,
:mod:`meshd.testing.procs`, the process executor; no Docker, no root).

Why a slope: ``bench_testbed.py`` divides a node's whole idle CPU by the
adverts it received, charging to adverts everything an idle daemon does
(timers, peer exchange, gossipsub's own heartbeats, the control API polled by
the bench). That is an upper bound. Here the same mesh of ``--nodes`` daemons
is run twice, identical but for the advert pacing:

- **slow**: the daemon's defaults (``advert_interval_ms`` 2,000,
  ``advert_rate_budget`` 2.0): each node heartbeats every
  ``1.5 × nodes / 2`` s;
- **fast**: ``advert_interval_ms = --fast-interval-ms`` (and ``advert_ttl_ms``
  ten times it, so a late heartbeat on a loaded machine loses no peer) with a
  budget too large to bind, so each node heartbeats every
  ``--fast-interval-ms``.

In each run, after the mesh formed and ``--settle-s`` passed, every daemon's
``utime + stime`` (``/proc/<pid>/stat``, all its threads) and its
``accepted_advert`` counter (adverts that passed acceptance and reached the
core) are read at both ends of a ``--window-s`` window. The figure is

    cost per received advert = (CPU_fast − CPU_slow) / (adverts_fast − adverts_slow)

per node (each node's CPU-seconds and adverts received, the two runs'
windows of equal length), reported as the median over nodes and the total
(sum of ΔCPU over the sum of Δadverts). What the idle daemon does whatever
the advert rate cancels out. What stays in is everything a node spends
because the mesh gossips more adverts: receiving, validating (signature,
acceptance) and forwarding each one through gossipsub (to its mesh peers),
the core's step and the view update, plus the node's own publishes, one per
``nodes − 1`` adverts received (sealing, sending): the membership cost a
node pays per advert it receives.

With ``--profile PATH``, one extra daemon (bootstrapped like the others) runs
under ``cProfile`` in the fast run and its profile is written to ``PATH`` when
it stops; ``--top N`` prints its hottest functions (cumulative time). cProfile
slows small functions more than large ones: use it for where the time goes,
the slope for what it costs.

A mesh that does not form within ``--form-timeout-s`` (a loaded machine: late
heartbeats, peers flapping) is said so and measured anyway, since the figure
divides by the adverts really received. Bounded: every wait has a time-out
and a hard limit (``--limit-s``, SIGALRM) ends the run; every daemon is
stopped in any case and the run exits 1 with "FAILED". Exit 0 prints the
figures.
"""

from __future__ import annotations

import argparse
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_testbed import (  # noqa: E402
    ADVERTS_RECEIVED,
    counters,
    cpu_seconds,
    diagnosis,
    pct,
    run_bounded,
    stop_together,
)

from meshd.testing.procs import DaemonProcess, wait_mesh


class ProfiledDaemon(DaemonProcess):
    """A daemon run under ``cProfile`` (the profile is written when it exits cleanly)."""

    profile_path: Path = Path("advert.prof")

    def wrap(self, cmd: list[str]) -> list[str]:
        # cmd starts with the meshd entry point; swap it for the module under cProfile
        start = cmd.index("start")
        return [sys.executable, "-m", "cProfile", "-o", str(self.profile_path),
                "-m", "meshd.cli", *cmd[start:]]  # fmt: skip


def pacing(fast: bool, interval_ms: int) -> dict[str, Any]:
    """The run's protocol parameters: the defaults, or a fast heartbeat."""
    if not fast:
        return {}
    return {
        "advert_interval_ms": interval_ms,
        "advert_ttl_ms": 10 * interval_ms,
        "advert_rate_budget": 1_000_000.0,
    }


def measure(
    args: argparse.Namespace, root: Path, fast: bool, procs: list[DaemonProcess]
) -> tuple[list[float], list[int], list[int]]:
    """One run: (CPU seconds, adverts received, adverts sent) per node over the window."""
    params = pacing(fast, args.fast_interval_ms)
    name = "fast" if fast else "slow"
    for i in range(args.nodes):
        procs.append(DaemonProcess(root / f"{name}{i}", params=params))
    for p in procs:
        p.init()
    procs[0].start(timeout_s=120)
    for p in procs[1:]:
        p.bootstrap = [procs[0].addr]
        p.start(timeout_s=120)
    measured = list(procs)
    if fast and args.profile:
        prof = ProfiledDaemon(root / "profiled", params=params)
        prof.profile_path = Path(args.profile).resolve()
        prof.init()
        prof.bootstrap = [procs[0].addr]
        procs.append(prof)
        prof.start(timeout_s=120)
    try:
        wait_mesh(procs, timeout_s=args.form_timeout_s)
    except TimeoutError:
        # measured all the same: the slope divides by the adverts really received
        seen = [(p.status() or {}).get("peers", 0) for p in procs]
        print(f"  {name}: not every node saw all {len(procs) - 1} others within "
              f"{args.form_timeout_s:.0f}s (peers per node {sorted(seen)}); measuring anyway",
              flush=True)  # fmt: skip
    time.sleep(args.settle_s)
    pids = [p.proc.pid for p in measured if p.proc is not None]
    c0 = [counters(p) for p in measured]
    cpu0 = [cpu_seconds(pid) for pid in pids]
    w0 = time.monotonic()
    time.sleep(args.window_s)
    cpu1 = [cpu_seconds(pid) for pid in pids]
    window = time.monotonic() - w0
    c1 = [counters(p) for p in measured]
    cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    got = [b.get(ADVERTS_RECEIVED, 0) - a.get(ADVERTS_RECEIVED, 0) for a, b in zip(c0, c1, strict=True)]  # fmt: skip
    sent = [b.get("adverts_sent", 0) - a.get("adverts_sent", 0) for a, b in zip(c0, c1, strict=True)]  # fmt: skip
    print(f"  {name}: window {window:.1f}s; per node CPU median "
          f"{100 * statistics.median(cpu) / window:.2f} % of a core; adverts received median "
          f"{statistics.median(got) / window:.2f}/s, sent {statistics.median(sent) / window:.2f}/s",
          flush=True)  # fmt: skip
    print(f"    first node's counters: {diagnosis(c1[0])}", flush=True)
    stop_together(procs)
    procs.clear()
    return cpu, got, sent


def run(args: argparse.Namespace, root: Path, procs: list[DaemonProcess]) -> None:
    print(f"{args.nodes} daemons on loopback, window {args.window_s:.0f}s per run", flush=True)
    cpu_s, got_s, _ = measure(args, root, False, procs)
    cpu_f, got_f, sent_f = measure(args, root, True, procs)
    per_node = []
    for cs, cf, gs, gf in zip(cpu_s, cpu_f, got_s, got_f, strict=True):
        if gf - gs > 0:
            per_node.append(1000.0 * (cf - cs) / (gf - gs))
    if not per_node:
        raise RuntimeError("the fast run received no more adverts than the slow one")
    d_cpu, d_got = sum(cpu_f) - sum(cpu_s), sum(got_f) - sum(got_s)
    total_ms = 1000.0 * d_cpu / max(1, d_got)
    upper = 1000.0 * sum(cpu_f) / max(1, sum(got_f))
    print(
        f"cost per received advert = ΔCPU / Δadverts received (fast − slow run, per node, "
        f"/proc/<pid>/stat utime+stime; counter {ADVERTS_RECEIVED}):"
    )
    print(
        f"  median {statistics.median(per_node):.2f} ms, p90 {pct(per_node, 0.9):.2f} ms, "
        f"over {len(per_node)} nodes; all nodes {total_ms:.2f} ms "
        f"({d_cpu:.2f} CPU-s / {d_got} adverts)"
    )
    print(f"  (the fast run's CPU / adverts, idle work included, for comparison: {upper:.2f} ms; "
          f"own publishes in it: 1 per {statistics.median(got_f) / max(1, statistics.median(sent_f)):.1f} received)")  # fmt: skip
    if args.profile:
        print(f"profile of one fast-run daemon: {args.profile}")
        if args.top:
            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(args.top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8, help="daemons in each run's mesh")
    parser.add_argument("--window-s", type=float, default=30.0, help="window measured per run")
    parser.add_argument("--settle-s", type=float, default=10.0, help="wait before each window")
    parser.add_argument("--fast-interval-ms", type=int, default=500,
                        help="heartbeat interval of the fast run")  # fmt: skip
    parser.add_argument("--form-timeout-s", type=float, default=120.0)
    parser.add_argument("--limit-s", type=int, default=900, help="hard limit of the whole run")
    parser.add_argument("--profile", default="", help="write a cProfile of one fast-run daemon")
    parser.add_argument("--top", type=int, default=0, help="print the profile's top N functions")
    args = parser.parse_args()
    if args.nodes < 2:
        print("--nodes must be at least 2", file=sys.stderr)
        return 2

    return run_bounded(
        args.limit_s, "meshd-bench-advert-", lambda root, procs: run(args, root, procs)
    )


if __name__ == "__main__":
    sys.exit(main())
