"""Verification cost vs. detection at default settings, over several seeds (CoreNet).

Run: ``python tests/bench/bench_trust.py [--seeds 1,2,3,4,5] [--jobs 400]`` (not collected by pytest).

Scenarios (``tests/test_trust_scenarios.py``): one origin, six honest workers
(five in the liar scenarios plus the liar), a job every 200 ms of virtual time:

- honest: extra compute at steady state (jobs submitted once every honest
  worker is trusted), as runs per job − 1 and as BOINC's redundant share of
  all runs (baseline: plain double replication = 100% / 50%);
- constant half-liar (lie_rate 0.5 from its first job): its results until its
  first invalid result and until banned; lies that became canonical;
- patient half-liar (honest until trusted, then lie_rate 0.5): the same,
  counted from the moment it turns.

Mesh scale (the simulator, ``simulations/``; skip with ``--no-mesh``): 100
nodes, every node an origin, 4,000 jobs, seed 1 — once all honest and once
with 10% half-liars. Trust must travel between origins here (the remote
streak, specs/CREDITS.md §4/§6); the figures are extra runs per job for the
jobs submitted in each quarter of the run (the first pays for getting 100
strangers trusted, the last is the steady state) and, per liar, the results
it got accepted before its first invalid verdict.

Targets: redundant share ≤ 10%, a half-liar banned within 30 of its results,
0 honest workers flagged, 0 wrong outputs handed to the submitter.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from test_trust_scenarios import Figures, run_scenario  # noqa: E402


def fmt(values: list[float | int | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    missing = len(values) - len(known)
    tail = f" ({missing} never)" if missing else ""
    return f"median {statistics.median(known):g}, max {max(known):g}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--no-mesh", action="store_true", help="skip the simulator runs (about 3 min)")
    ap.add_argument("--mesh-nodes", type=int, default=100)
    ap.add_argument("--mesh-jobs", type=int, default=4000)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ok = True
    for liar in ("none", "constant", "patient"):
        figs: list[Figures] = [
            run_scenario(
                s, honest=6 if liar == "none" else 5, liar=liar, jobs=args.jobs, spacing_ms=200
            )
            for s in seeds
        ]
        print(f"\n== {liar} liar, {len(seeds)} seeds × {args.jobs} jobs")
        for f in figs:
            print(
                f"  seed {f.seed}: steady jobs {f.steady_jobs}, runs {f.steady_runs}, "
                f"extra/job {f.extra_per_job:.3f}, redundant share {f.redundant_share:.3f}, "
                f"first invalid after {f.liar_results_to_first_invalid}, banned after "
                f"{f.liar_results_to_ban}, results in all {f.liar_results_total}, lies accepted {f.lies_accepted}, wrong outputs "
                f"{f.wrong_outputs}, failed {f.failed}, honest flagged {f.honest_flagged}"
            )
        shares = [f.redundant_share for f in figs]
        print(
            f"  redundant share of compute: mean {statistics.mean(shares):.3f} (plain replication: 0.500)"
        )
        print(f"  extra runs per job: mean {statistics.mean(f.extra_per_job for f in figs):.3f}")
        if liar != "none":
            print(
                f"  liar results to first invalid: {fmt([f.liar_results_to_first_invalid for f in figs])}"
            )
            print(f"  liar results to ban: {fmt([f.liar_results_to_ban for f in figs])}")
            print(f"  liar results in the whole run: {fmt([f.liar_results_total for f in figs])}")
            print(f"  lies accepted: {fmt([f.lies_accepted for f in figs])}")
            print(
                "  credits for rejected work (net of clawbacks): "
                f"{sum(f.liar_credits_for_rejected for f in figs):.4g}"
            )
            print(
                f"  liar paid in all: {sum(f.liar_earned for f in figs):.4g}, of which "
                f"spendable (its bond released): {sum(f.liar_balance for f in figs):.4g}"
            )
        honest_flagged = sum(f.honest_flagged for f in figs)
        print(f"  honest workers flagged: {honest_flagged}")
        ok &= honest_flagged == 0
        if liar == "none":
            ok &= statistics.mean(shares) <= 0.10
        if liar == "constant":
            ok &= all(
                f.liar_results_to_ban is not None and f.liar_results_to_ban <= 30 for f in figs
            )
            ok &= all(f.wrong_outputs == 0 for f in figs)
    if not args.no_mesh:
        ok &= mesh(args.mesh_nodes, args.mesh_jobs)
    print("\nTARGETS", "MET" if ok else "MISSED")
    return 0 if ok else 1


def mesh(nodes: int, jobs: int) -> bool:
    from simulations.scenarios import RunConfig, run

    ok = True
    for label, pins in (
        ("honest mesh", {"liar_fraction": "0.0", "spammer_fraction": "0.0"}),
        ("10% half-liars", {"lie_rate": "0.5"}),
    ):
        r = run(RunConfig("cheaters", 1, nodes, jobs, pins))
        res = r.result
        print(
            f"\n== simulator, {label}: {nodes} nodes, {jobs} jobs, seed 1 "
            f"({res['succeeded']} succeeded, {res['failed']} failed)"
        )
        print(
            f"  extra runs per job by quarter of submissions: {res['verification_overhead_by_quarter']}"
        )
        if "liars" in res:
            print(
                f"  liars caught {res['liars_caught']}/{res['liars']}; results accepted before caught: "
                f"mean {res['liar_accepted_before_caught_mean']}, max {res['liar_accepted_before_caught_max']}; "
                f"wrong results accepted unverified {res['wrong_results_accepted_unverified']}"
            )
            ok &= (res["liar_accepted_before_caught_max"] or 0) <= 30
    return ok


if __name__ == "__main__":
    sys.exit(main())
