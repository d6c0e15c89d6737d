"""Stability of the compute score across restarts (run by hand, not by pytest).

    python tests/bench/bench_score.py [--measurements 10] [--hog]

Takes ``--measurements`` fresh CPU score measurements
(``meshd.exec.score.measure_cpu``: each one a new child process, as a daemon
restart would do) with the default ``ScoreParams``, and prints each score,
its within-measurement spread (slowest ÷ fastest run), and across the
measurements max ÷ min of the scores (target ≤ 1.2). As baselines in the same
run it does the same timed by wall clock (``timing="wall"``) on one thread,
and by wall clock with the BLAS thread count set to every core
(``threads = os.cpu_count()``), the setting closest to the old one-shot score.
Exits 1 when the default series misses the target.

``--hog`` runs a bounded busy loop on every core meanwhile (a ``timeout``
process per core in its own session, killed by process group at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshd.exec.score import ScoreParams, measure_cpu  # noqa: E402


def start_hog(seconds: float) -> list[subprocess.Popen[bytes]]:
    """A busy loop on every core, each bounded by ``timeout`` so none outlives the run."""
    cmd = ["timeout", str(int(seconds)), "sh", "-c", "while :; do :; done"]
    return [subprocess.Popen(cmd, start_new_session=True) for _ in range(os.cpu_count() or 1)]


def series(params: ScoreParams, count: int) -> list[float]:
    scores = []
    print(f"threads={params.threads}, timing={params.timing}:")
    for i in range(count):
        t0 = time.perf_counter()
        m = measure_cpu(params)
        took = time.perf_counter() - t0
        spread = "-" if m.spread is None else f"{m.spread:.3f}"
        print(
            f"  #{i + 1:2d}  {m.gflops:8.2f} GFLOPS  spread {spread:>6}  "
            f"runs {len(m.runs)}  {took:.2f} s  {m.method}"
        )
        scores.append(m.gflops)
    ratio = max(scores) / min(scores) if min(scores) > 0 else float("inf")
    print(
        f"  median {statistics.median(scores):.2f}  min {min(scores):.2f}  "
        f"max {max(scores):.2f}  max/min {ratio:.3f}"
        f"  {'OK' if ratio <= 1.2 else 'ABOVE TARGET'} (target ≤ 1.2)"
    )
    return scores


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measurements", type=int, default=10)
    ap.add_argument("--hog", action="store_true", help="a busy loop on every core meanwhile")
    args = ap.parse_args()
    hogs = start_hog(600) if args.hog else []
    try:
        if hogs:
            time.sleep(1.0)  # let the hogs reach full speed
        print(
            f"{args.measurements} fresh measurements, {os.cpu_count()} cores"
            f"{', CPU hog on every core' if hogs else ''}"
        )
        default = ScoreParams()
        scores = series(default, args.measurements)
        series(dataclasses.replace(default, timing="wall"), args.measurements)
        every_core = dataclasses.replace(default, timing="wall", threads=os.cpu_count() or 1)
        series(every_core, args.measurements)
        ratio = max(scores) / min(scores)
        return 0 if ratio <= 1.2 else 1
    finally:
        for h in hogs:  # the loop is timeout's child: end the whole group
            os.killpg(h.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
