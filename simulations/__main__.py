"""``python -m simulations run SCENARIO --seed N ...`` / ``list`` / ``sweep`` / ``spotcheck``."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import sys

from .report import plot_run, plot_sweep, print_summary
from .scenarios import SCENARIOS, Run, RunConfig, run


def _pins(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, _, value = it.partition("=")
        if not value:
            raise SystemExit(f"--set wants name=value, got {it!r}")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulations")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="scenarios and knobs")
    r = sub.add_parser("run", help="run one scenario")
    r.add_argument("scenario", choices=sorted(SCENARIOS))
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--nodes", type=int)
    r.add_argument("--jobs", type=int)
    r.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="pin a knob")
    r.add_argument("--mutant", help="use a deliberately broken core (see simulations/mutants.py)")
    r.add_argument(
        "--procs",
        type=int,
        default=1,
        metavar="N",
        help="split the run over N processes, a window of the least latency at a time "
        "(simulations/parallel.py: "
        "runs without crashes, partitions, liars, spammers or the CPU model; the trace "
        "depends on N)",
    )
    r.add_argument("--json", metavar="OUT")
    r.add_argument("--png", metavar="OUT")
    r.add_argument("--replay", action="store_true", help="print only the replay command and exit")
    r.add_argument("--profile", metavar="OUT", help="write a cProfile of the run")
    r.add_argument(
        "--progress",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print virtual time, CPU, core steps and jobs terminal on stderr every SECONDS "
        "of virtual time while jobs are submitted, and at the end (the run is the same)",
    )
    s = sub.add_parser("sweep", help="load sweep: ours vs omniscient vs random")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--nodes", type=int, default=200)
    s.add_argument("--jobs", type=int, default=2000)
    s.add_argument("--loads", default="0.1,0.3,0.5,0.7,0.8,0.9,0.95")
    s.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    s.add_argument("--json", metavar="OUT")
    s.add_argument("--png", metavar="OUT")
    c = sub.add_parser(
        "spotcheck",
        help="spot-check floor: verification overhead vs wrong results accepted (spotcheck.py)",
    )
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--workers", type=int, default=100)
    c.add_argument("--jobs", type=int, default=100_000)
    c.add_argument("--model", choices=("patient", "constant"), default="patient")
    c.add_argument("--lie-rate", type=float, default=0.5)
    c.add_argument("--shares", default="0,0.01,0.1,0.3", help="liar shares, comma-separated")
    c.add_argument("--floors", default="0.02,0.05,0.1,0.2", help="comma-separated")
    c.add_argument("--no-audit", action="store_true", help="what-if: no audit on a conviction")
    c.add_argument(
        "--rejoin",
        choices=("off", "on", "both"),
        default="both",
        help="on: a convicted liar comes back at once under a new identity (whitewash)",
    )
    c.add_argument(
        "--bond",
        type=int,
        default=None,
        help="bond_valid_receipts (default: CoreParams'; 0: no bond)",
    )
    c.add_argument(
        "--hold-s",
        type=float,
        default=None,
        help="result_hold_ms in s (default: CoreParams'): a result is final only after "
        "standing this long unretracted",
    )
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PARAM=VALUE",
        help="a CoreParams override, e.g. untrusted_replication=0.3 (floor: --floors)",
    )
    c.add_argument("--json", metavar="OUT")
    a = ap.parse_args(argv)
    if getattr(a, "png", None) and importlib.util.find_spec("matplotlib") is None:
        # before the run, not after it: a large one takes minutes
        print(
            f"{a.cmd}: --png needs matplotlib, an optional dependency: "
            "pip install 'meshd[sim]' (or matplotlib)",
            file=sys.stderr,
        )
        return 2

    if a.cmd == "spotcheck":
        from meshd.core.params import CoreParams

        from .spotcheck import SpotConfig, curve, print_curve, print_hold_curve

        core: list[tuple[str, float]] = []
        for pin in a.set:
            name, _, value = pin.partition("=")
            try:
                number: float = float(value)
                if number.is_integer() and not any(ch in value for ch in ".eE"):
                    number = int(number)
                CoreParams().with_overrides({name: number})
            except ValueError as e:
                print(f"spotcheck: --set {pin}: {e}", file=sys.stderr)
                return 2
            core.append((name, number))
        results = []
        for rejoin in {"off": (False,), "on": (True,), "both": (False, True)}[a.rejoin]:
            base = SpotConfig(
                workers=a.workers,
                jobs=a.jobs,
                lie_rate=a.lie_rate,
                model=a.model,
                seed=a.seed,
                audit=not a.no_audit,
                rejoin=rejoin,
                core=tuple(core),
                **({} if a.hold_s is None else {"hold_ms": int(a.hold_s * 1000)}),
                **({} if a.bond is None else {"bond": a.bond}),
            )
            table = curve(
                shares=tuple(float(x) for x in a.shares.split(",")),
                floors=tuple(float(x) for x in a.floors.split(",")),
                base=base,
            )
            print_curve(table)
            print_hold_curve(table)
            results += table
        if a.json:
            with open(a.json, "w") as f:
                json.dump([r.as_dict() for r in results], f, indent=1)
        return 0

    if a.cmd == "list":
        from .knobs import knob_docs

        for sc in SCENARIOS.values():
            print(
                f"{sc.name:10} {sc.about} (default --nodes {sc.default_nodes} --jobs {sc.default_jobs})"
            )
        print("\nknobs (--set name=value):")
        for name, doc in knob_docs().items():
            print(f"  {name:20} {doc}")
        return 0
    if a.cmd == "sweep":
        rows = []
        for load in [float(x) for x in a.loads.split(",")]:
            pins = {**_pins(a.set), "load": str(load)}
            res = run(RunConfig("load", a.seed, a.nodes, a.jobs, pins)).result
            gc.collect()  # the run's cycles (the collector is off, see the end of the file)
            rows.append(res)
            print(
                f"load {load:.2f}: ours mean {res['completion_mean_s']:.2f}s p99 {res['completion_p99_s']:.2f}s | "
                f"omni {res.get('omniscient_mean_s', 0):.2f}/{res.get('omniscient_p99_s', 0):.2f} | "
                f"random {res.get('random_mean_s', 0):.2f}/{res.get('random_p99_s', 0):.2f} | "
                f"ratio {res.get('ratio_mean_vs_omniscient', 0):.3f} | wall {res['wall_s']}s"
                + ("" if res["ok"] else f" FAILED: {res['failure']}"),
                flush=True,
            )
        if a.json:
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)
        if a.png:
            plot_sweep(rows, a.png)
        return 0 if all(r["ok"] for r in rows) else 1

    if not (math.isfinite(a.progress) and (a.progress == 0 or 0.001 <= a.progress <= 86_400)):
        print(
            f"run: --progress {a.progress}: give seconds of virtual time, 0.001 to 86400 (0: none)",
            file=sys.stderr,
        )
        return 2
    sc = SCENARIOS[a.scenario]
    cfg = RunConfig(
        a.scenario,
        a.seed,
        a.nodes or sc.default_nodes,
        a.jobs or sc.default_jobs,
        _pins(a.set),
        a.mutant,
        a.procs,
    )
    if a.replay:
        from .scenarios import replay_command

        print(replay_command(cfg))
        return 0
    if a.procs != 1 and a.profile:
        print("run: --profile profiles one process; give it without --procs", file=sys.stderr)
        return 2
    try:
        done = Run(cfg)
    except ValueError as exc:  # a configuration the run refuses (a knob, --procs)
        print(f"run: {exc}", file=sys.stderr)
        return 2
    done.progress_ms = int(a.progress * 1000)
    if a.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(done.execute)
        prof.dump_stats(a.profile)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    else:
        done.execute()
    print_summary(done.result)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(done.result, f, indent=1)
    if a.png:
        plot_run(done, a.png)
    return 0 if done.result["ok"] else 1


def exit_now(code: int) -> None:
    """End the process with ``code`` once stdout and stderr are flushed,
    skipping the interpreter's teardown: freeing a large run's heap object by
    object costs more than a quarter of the run's own CPU (9.5 s after a
    1,000-node / 3,000-job run of 35 s) and decides nothing. Every file the
    command writes is closed before this."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    # The collector stays off to exit_now: a run turns it off anyway
    # (scenarios.GC_OFF_DURING_RUN), and turned back on it would walk the
    # run's whole heap, kept until exit_now, at its first young collection.
    gc.disable()
    exit_now(main())
