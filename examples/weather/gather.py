"""Gather a Lorenz-96 ensemble's members and compute its mean and spread by lead time.

    python examples/weather/gather.py RESULT_DIR [RESULT_DIR ...] [-o stats.csv]

Each RESULT_DIR holds one member's outputs (``mesh result JOB -o DIR``):
``member.npy`` (n_leads, 40) and ``meta.json``. Per lead time the ensemble
mean is averaged over the 40 variables, and the spread is the root mean
(over variables) of the ensemble variance (ddof = 1), the usual measure of
forecast uncertainty: it starts at the perturbation's size and grows
roughly exponentially until it saturates at the climate's variability.

Prints a table and writes ``lead,mean,spread`` as CSV with ``-o``.
Needs only NumPy (the client side of the example).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DT_OUTPUT = 0.2
"""Time units between two output rows of a member (lorenz96.py)."""


def load_members(dirs: list[Path]) -> np.ndarray:
    """(members, leads, variables) from result dirs, ordered by member number."""
    found = []
    for d in dirs:
        meta = json.loads((d / "meta.json").read_text())
        found.append((int(meta["member"]), np.load(d / "member.npy", allow_pickle=False)))
    found.sort(key=lambda t: t[0])
    shapes = {a.shape for _, a in found}
    if len(shapes) != 1:
        raise SystemExit(f"gather: members have different shapes: {sorted(shapes)}")
    return np.stack([a for _, a in found])


def ensemble_stats(ens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lead, mean, spread) per lead time of an ensemble (members, leads, variables)."""
    if ens.shape[0] < 2:
        raise SystemExit("gather: an ensemble needs at least 2 members")
    lead = np.arange(ens.shape[1]) * DT_OUTPUT
    mean = ens.mean(axis=0).mean(axis=-1)
    spread = np.sqrt(ens.var(axis=0, ddof=1).mean(axis=-1))
    return lead, mean, spread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="one result dir per member")
    ap.add_argument("-o", "--output", type=Path, help="write lead,mean,spread as CSV")
    args = ap.parse_args(argv)
    ens = load_members(args.dirs)
    lead, mean, spread = ensemble_stats(ens)
    print(f"{ens.shape[0]} members, {ens.shape[2]} variables")
    print(f"{'lead':>6} {'mean':>10} {'spread':>12}")
    for t, m, s in zip(lead, mean, spread, strict=True):
        print(f"{t:6.1f} {m:10.4f} {s:12.4e}")
    if args.output:
        with open(args.output, "w") as f:
            f.write("lead,mean,spread\n")
            for t, m, s in zip(lead, mean, spread, strict=True):
                f.write(f"{t:.2f},{m:.17g},{s:.17g}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
