"""A simulation split over processes against the same run in one (run by hand, not by pytest).

    python tests/bench/bench_sim_parallel.py [--nodes 2000] [--jobs 4000] [--procs 2]
                                             [--seed 1] [--timeout 3600]

Runs ``python -m simulations run scale`` with the same seed, nodes and jobs
twice, each in its own process tree, one after the other: the baseline in one
process and the measured run split over ``--procs`` processes
(``simulations/parallel.py``). For each it prints the run's wall seconds
(``wall_s``: the run itself, without building the mesh or the report), its
CPU over all its processes (``cpu_s``; a split run's includes the time its
processes poll for each other), core steps, late bids, virtual seconds to the
last job and completion against an omniscient scheduler; for the split run
also the windows run and, per process, the events it sent the others and
its wall seconds exchanging (pickling, the pipes and waiting for the other
process to end its window). Then the split run's wall as a ratio of the
baseline's (the two runs place jobs differently, so their last jobs end
at different virtual times: compare ``virtual``).

Each run is bounded by ``--timeout`` seconds (killed past it, reported, exit
1); a run that fails its invariants also exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sim import simulate  # noqa: E402  (a sibling script, not a package)


def row(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name:9} procs {r.get('procs', 1)}: wall {r['wall_s']:7.1f} s, cpu {r['cpu_s']:7.1f} s, "
        f"{r['events']:>10,} steps, bid_late {r['counters']['bid_late']:>7,}, "
        f"virtual {r['virtual_s']:6.1f} s, completion {r['ratio_mean_vs_omniscient']:.3f}x "
        f"omniscient, trace {r['trace']}, "
        f"{'ok' if r['ok'] else 'FAILED: ' + str(r['failure'])[:80]}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=2_000)
    ap.add_argument("--jobs", type=int, default=4_000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3_600.0, help="seconds per run")
    a = ap.parse_args()
    results = {}
    for name, procs in (("baseline", 1), ("split", a.procs)):
        r = simulate(a.seed, a.nodes, a.jobs, a.timeout, procs)
        if r is None:
            print(
                f"{name}: {a.nodes} nodes / {a.jobs} jobs over {procs} process(es) "
                f"did not finish within {a.timeout:.0f} s"
            )
            return 1
        print(row(name, r), flush=True)
        results[name] = r
    b, s = results["baseline"], results["split"]
    print(f"split: {s['windows']:,} windows")
    for i, part in enumerate(s.get("split") or []):
        if part:
            print(
                f"  process {i}: sent {part['sent']:,} events, exchanging {part['exchange_s']:.1f} s "
                f"of its {part['cpu_s']:.1f} s CPU"
            )
    wall = s["wall_s"] / max(b["wall_s"], 1e-9)
    print(f"split / baseline: wall {wall:.2f}x")
    return 0 if b["ok"] and s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
