"""Summary table (rich) and figures (matplotlib, optional ``sim`` extra)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) or "-"
    return "-" if v is None else str(v)


def print_summary(res: dict[str, Any]) -> None:
    con = Console()
    t = Table(
        title=f"meshd sim: {res['scenario']} seed={res['seed']} nodes={res['nodes']} jobs={res['jobs']}"
        f" — {'OK' if res['ok'] else 'FAILED'}",
        show_header=False,
    )
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    skip = {"knobs", "failure", "replay", "scenario", "seed", "nodes", "jobs"}
    for k, v in res.items():
        if k not in skip:
            t.add_row(k, _fmt(v))
    knobs = res["knobs"]
    t.add_row("knobs", ", ".join(f"{k}={_fmt(v)}" for k, v in knobs.items()))
    con.print(t)
    if not res["ok"]:
        con.print(f"[bold red]FAILURE:[/] {res['failure']}")
        con.print(f"[bold]replay:[/] {res['replay']}  (commit {res['commit']})")


def plot_run(run: Any, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    res = run.result
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [("meshd (bidding)", getattr(run, "_completions", None))]
    series += [("omniscient", getattr(run, "_omni", None)), ("random", getattr(run, "_rnd", None))]
    for name, data in series:
        if data is not None and len(data):
            xs = np.sort(np.asarray(data) / 1000)
            ax.plot(
                xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{name} (mean {xs.mean():.1f}s)"
            )
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (s)")
    ax.set_ylabel("CDF")
    ax.set_title(
        f"{res['scenario']} seed={res['seed']} nodes={res['nodes']} jobs={res['jobs']} "
        f"load={res['knobs']['load']:.2f}"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_sweep(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [r["knobs"]["load"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, stat in zip(axes, ["mean", "p99"], strict=True):
        ax.plot(loads, [r[f"completion_{stat}_s"] for r in rows], "o-", label="meshd (bidding)")
        ax.plot(loads, [r.get(f"omniscient_{stat}_s") for r in rows], "s--", label="omniscient")
        ax.plot(loads, [r.get(f"random_{stat}_s") for r in rows], "^:", label="random")
        ax.set_xlabel("offered load")
        ax.set_ylabel(f"{stat} completion time (s)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    r0 = rows[0]
    fig.suptitle(f"load sweep, {r0['nodes']} nodes, {r0['jobs']} jobs/point, seed {r0['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
