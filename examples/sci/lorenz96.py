"""Weather ensemble member: Lorenz-96 from a perturbed initial condition.

    dx_k/dt = (x_{k+1} - x_{k-2}) x_{k-1} - x_k + F,   k = 0..K-1 (cyclic)

with K = 40 and F = 8 (the chaotic regime of Lorenz 1996), integrated by
fourth-order Runge-Kutta with dt = 0.01. The analysis (the unperturbed
state) is the same for every member: x = F with x_19 nudged by 0.01, spun up
for 10 time units onto the attractor. Member m adds Gaussian noise of
standard deviation ``L96_PERTURBATION`` (default 1e-3) drawn from seed
1000 + m, then runs ``L96_LEADS`` lead times (default 8 time units, one
output every 0.2 = 20 steps; 0.2 units is about one "day").

Environment: ``MEMBER`` (required, 0..999), ``L96_LEADS``, ``L96_PERTURBATION``.
Outputs (``$MESH_OUTPUTS``):
  member.npy   (n_leads, 40) state at each output lead time
  member.csv   lead,x0..x39 with 17 significant digits
  meta.json    member, seed, F, dt, perturbation
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

K, F, DT = 40, 8.0, 0.01
STEPS_PER_OUTPUT = 20
SPIN_UP_STEPS = 1000


def tendency(x: np.ndarray) -> np.ndarray:
    return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + F


def rk4(x: np.ndarray) -> np.ndarray:
    k1 = tendency(x)
    k2 = tendency(x + 0.5 * DT * k1)
    k3 = tendency(x + 0.5 * DT * k2)
    k4 = tendency(x + DT * k3)
    return x + DT / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def analysis() -> np.ndarray:
    x = np.full(K, F)
    x[19] += 0.01
    for _ in range(SPIN_UP_STEPS):
        x = rk4(x)
    return x


def main() -> int:
    member = int(os.environ["MEMBER"])
    leads = float(os.environ.get("L96_LEADS", "8"))
    eps = float(os.environ.get("L96_PERTURBATION", "1e-3"))
    out = Path(os.environ.get("MESH_OUTPUTS", "outputs"))
    out.mkdir(parents=True, exist_ok=True)
    seed = 1000 + member
    x = analysis() + eps * np.random.default_rng(seed).normal(size=K)
    n_out = int(round(leads / (DT * STEPS_PER_OUTPUT)))
    states = [x]
    for _ in range(n_out):
        for _ in range(STEPS_PER_OUTPUT):
            x = rk4(x)
        states.append(x)
    traj = np.array(states)
    lead = np.arange(n_out + 1) * DT * STEPS_PER_OUTPUT
    np.save(out / "member.npy", traj)
    with open(out / "member.csv", "w") as f:
        f.write("lead," + ",".join(f"x{k}" for k in range(K)) + "\n")
        for t, row in zip(lead, traj, strict=True):
            f.write(f"{t:.2f}," + ",".join(f"{v:.17g}" for v in row) + "\n")
    meta = {"member": member, "seed": seed, "F": F, "dt": DT, "perturbation": eps, "K": K}
    (out / "meta.json").write_text(json.dumps(meta) + "\n")
    print(f"lorenz96: member {member}, {n_out} lead times to {lead[-1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
