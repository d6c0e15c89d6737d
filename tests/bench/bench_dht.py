"""What the Kademlia DHT costs and brings on real daemons: the time to a full
mesh and the idle CPU, with ``dht = true`` against ``dht = false``.

Run: ``python tests/bench/bench_dht.py [--nodes 7] [--runs 2] [--topology star]``
(not collected by pytest; real ``meshd start`` processes on loopback,
:mod:`meshd.testing.procs`, the process executor, the daemon's default
protocol parameters; no Docker, no root).

Each run starts ``--nodes`` daemons: the first alone, then the others all at
once, each bootstrapped from the first (``star``) or from the one started
before it (``line``: peer exchange needs several rounds there). The runs
alternate off, on, off, on ... (``--runs`` of each) so a load change on the
shared machine hits both alike. Per run:

- **time to a full mesh**: until every daemon's status lists all
  ``nodes - 1`` others (polled every 0.2 s), printed from the launch of the
  others (daemon start-up included, seconds on a loaded machine) and from
  the moment the last of them answered its API (the figure compared);
- **idle CPU**: after ``--settle-s``, every daemon's ``utime + stime``
  (``/proc/<pid>/stat``) over ``--window-s``, the median over daemons in % of
  one core.

The figures are printed per run and as ratios on / off (medians over the
runs), the baseline measured in the same invocation. Bounded: every wait has
a time-out, a hard limit (``--limit-s``, SIGALRM) ends the run, and every
daemon is stopped in any case; exit 1 with "FAILED" on a failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench_testbed import cpu_seconds, run_bounded, stop_together

from meshd.testing.procs import DaemonProcess


def full_mesh_s(procs: list[DaemonProcess], t0: float, timeout_s: float) -> float:
    """Seconds from ``t0`` until every daemon lists all the others."""
    want = len(procs) - 1
    end = time.monotonic() + timeout_s
    while True:
        if all((p.status() or {}).get("peers", 0) >= want for p in procs):
            return time.monotonic() - t0
        if time.monotonic() > end:
            seen = sorted((p.status() or {}).get("peers", 0) for p in procs)
            raise TimeoutError(f"no full mesh within {timeout_s:.0f}s (peers per node {seen})")
        time.sleep(0.2)


def one_run(
    args: argparse.Namespace, root: Path, dht: bool, procs: list[DaemonProcess]
) -> tuple[float, float]:
    """(seconds from the last daemon's API answering to a full mesh, median
    idle CPU in % of a core) of one run."""
    name = f"{'on' if dht else 'off'}-{len(list(root.iterdir()))}"
    config = {"allow_process_executor": True, "dht": dht}
    for i in range(args.nodes):
        procs.append(DaemonProcess(root / f"{name}-{i}", params={}, config=dict(config)))
    for p in procs:
        p.init()
    procs[0].start(timeout_s=120)
    addrs = [procs[0].addr]
    t0 = time.monotonic()
    if args.topology == "star":
        for p in procs[1:]:
            p.bootstrap = [addrs[0]]
            p.launch()
    else:  # each from the one before: wait for its address
        for p in procs[1:]:
            p.bootstrap = [addrs[-1]]
            p.start(timeout_s=120)
            addrs.append(p.addr)
    for p in procs[1:]:
        p.wait_for(lambda p=p: p.status() is not None, 120, "the daemon's API")
    up = time.monotonic() - t0
    formed = full_mesh_s(procs, t0, args.form_timeout_s)
    time.sleep(args.settle_s)
    pids = [p.proc.pid for p in procs if p.proc is not None]
    cpu0 = [cpu_seconds(pid) for pid in pids]
    w0 = time.monotonic()
    time.sleep(args.window_s)
    cpu1 = [cpu_seconds(pid) for pid in pids]
    window = time.monotonic() - w0
    cpu = statistics.median(100 * (b - a) / window for a, b in zip(cpu0, cpu1, strict=True))
    print(f"  dht {'on ' if dht else 'off'}: full mesh {formed:5.2f} s after launch, "
          f"{formed - up:5.2f} s after the last API answered; "
          f"idle CPU median {cpu:5.2f} % of a core", flush=True)  # fmt: skip
    stop_together(procs)
    procs.clear()
    return formed - up, cpu


def run(args: argparse.Namespace, root: Path, procs: list[DaemonProcess]) -> None:
    print(f"{args.nodes} daemons on loopback, {args.topology} bootstrap, "
          f"window {args.window_s:.0f}s, {args.runs} runs each", flush=True)  # fmt: skip
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.runs):
        for dht in (False, True):
            results[dht].append(one_run(args, root, dht, procs))
    off_t = statistics.median(r[0] for r in results[False])
    on_t = statistics.median(r[0] for r in results[True])
    off_c = statistics.median(r[1] for r in results[False])
    on_c = statistics.median(r[1] for r in results[True])
    print(f"medians: full mesh (after the last API) off {off_t:.2f} s, on {on_t:.2f} s "
          f"(on/off {on_t / max(off_t, 1e-9):.2f}); "
          f"idle CPU off {off_c:.2f} %, on {on_c:.2f} % (on/off {on_c / max(off_c, 1e-9):.2f})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=7, help="daemons in each run's mesh")
    parser.add_argument("--runs", type=int, default=2, help="runs with the DHT off, and on")
    parser.add_argument("--topology", choices=("star", "line"), default="star")
    parser.add_argument("--window-s", type=float, default=30.0, help="idle window measured")
    parser.add_argument("--settle-s", type=float, default=10.0, help="wait before the window")
    parser.add_argument("--form-timeout-s", type=float, default=120.0)
    parser.add_argument("--limit-s", type=int, default=1200, help="hard limit of the whole run")
    args = parser.parse_args()
    if args.nodes < 2:
        print("--nodes must be at least 2", file=sys.stderr)
        return 2

    return run_bounded(args.limit_s, "meshd-bench-dht-", lambda root, procs: run(args, root, procs))


if __name__ == "__main__":
    sys.exit(main())
