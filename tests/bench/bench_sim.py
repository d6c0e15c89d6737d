"""The simulator's own speed (run by hand, not by pytest).

    python tests/bench/bench_sim.py [--nodes 2000] [--jobs 10000] [--base-nodes 200]
                                    [--base-jobs 1000] [--seed 1] [--timeout 3600]

Runs ``python -m simulations run scale`` (the ``load`` scenario at 50 %
utilisation, replication off, the daemon's core parameters) twice, each in
its own process: a baseline of ``--base-nodes`` / ``--base-jobs`` and the
measured size ``--nodes`` / ``--jobs``. For each it prints the run's CPU
seconds (``cpu_s``: the process's CPU while the run executes, so a busy
machine slows the wall clock but not this figure), its wall seconds, the
core steps (``events``) and steps per CPU second, and whether the run held
its invariants. The measured run is then given as ratios to the baseline of
the same invocation: CPU, CPU per job and CPU per step.

Each run is bounded by ``--timeout`` seconds (killed past it, reported, exit
1); a run that fails its invariants also exits 1. The seeded trace of each
run is printed, so two invocations at one commit can be checked to have
simulated the same thing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def simulate(
    seed: int, nodes: int, jobs: int, timeout: float, procs: int = 1
) -> dict[str, Any] | None:
    """One ``scale`` run in a child process (split over ``procs`` processes,
    ``simulations/parallel.py``); its result dict, or None if it ran past
    ``timeout`` (then its every process is killed)."""
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "simulations",
            "run",
            "scale",
            f"--seed={seed}",
            f"--nodes={nodes}",
            f"--jobs={jobs}",
            f"--procs={procs}",
            f"--json={out}",
        ]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        # A session of its own, so a timeout kills a split run's every process.
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        if not out.exists():
            return None
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def row(name: str, r: dict[str, Any]) -> str:
    per_step = r["events"] / max(r["cpu_s"], 1e-9)
    return (
        f"{name:9} {r['nodes']:>6} nodes {r['jobs']:>7} jobs: cpu {r['cpu_s']:8.1f} s, "
        f"wall {r['wall_s']:8.1f} s, {r['events']:>10} steps ({per_step:,.0f}/cpu s), "
        f"trace {r['trace']}, {'ok' if r['ok'] else 'FAILED: ' + str(r['failure'])[:80]}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=2_000)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--base-nodes", type=int, default=200)
    ap.add_argument("--base-jobs", type=int, default=1_000)
    ap.add_argument("--timeout", type=float, default=3_600.0, help="seconds per run")
    a = ap.parse_args()
    results = {}
    for name, nodes, jobs in (
        ("baseline", a.base_nodes, a.base_jobs),
        ("measured", a.nodes, a.jobs),
    ):
        r = simulate(a.seed, nodes, jobs, a.timeout)
        if r is None:
            print(f"{name}: {nodes} nodes / {jobs} jobs did not finish within {a.timeout:.0f} s")
            return 1
        print(row(name, r), flush=True)
        results[name] = r
    b, m = results["baseline"], results["measured"]
    cpu = m["cpu_s"] / max(b["cpu_s"], 1e-9)
    per_job = (m["cpu_s"] / m["jobs"]) / max(b["cpu_s"] / b["jobs"], 1e-9)
    per_step = (m["cpu_s"] / m["events"]) / max(b["cpu_s"] / b["events"], 1e-9)
    print(
        f"measured / baseline: cpu {cpu:.2f}x, cpu per job {per_job:.2f}x, "
        f"cpu per step {per_step:.2f}x"
    )
    return 0 if b["ok"] and m["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
