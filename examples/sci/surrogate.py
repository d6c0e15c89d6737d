"""Surrogate materials model: kernel ridge regression of alloy energies.

The data set is a binary alloy A(1-x)B(x) whose energy per atom E(x, V)
follows a third-order Birch-Murnaghan equation of state with Vegard's law
for the equilibrium volume, a bowed bulk modulus and a regular-solution
mixing energy, plus small measurement noise. It is generated here from a
fixed seed, or read from ``$MESH_INPUTS/materials.csv`` (columns ``x,volume,
energy``) when the job ships one.

The surrogate is kernel ridge regression with a Gaussian (RBF) kernel over
the standardised features (x, V); the length scale and the ridge are chosen
by a grid search on an inner split of the training set, and the model is
then refitted on the whole training set and scored on a held-out validation
set the search never saw.

Outputs (``$MESH_OUTPUTS``):
  alpha.npy          the fitted dual coefficients (n_train,)
  train_x.npy        the standardised training features (n_train, 2)
  params.json        length scale, ridge, feature and target scaling
  metrics.json       validation RMSE and MAE (eV/atom), energy range, sizes
  predictions.csv    x, volume, energy, predicted for the validation set
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

SEED = int(os.environ.get("SURROGATE_SEED", "7"))
N_POINTS = int(os.environ.get("SURROGATE_POINTS", "600"))
NOISE_EV = 1e-3


def birch_murnaghan(v: np.ndarray, e0: np.ndarray, v0: np.ndarray, b0: np.ndarray) -> np.ndarray:
    """Third-order Birch-Murnaghan energy (eV/atom); b0 in eV/A^3, B0' = 4.5."""
    bp = 4.5
    eta = (v0 / v) ** (2.0 / 3.0)
    return e0 + 9.0 * v0 * b0 / 16.0 * (
        (eta - 1.0) ** 3 * bp + (eta - 1.0) ** 2 * (6.0 - 4.0 * eta)
    )


def alloy_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows (x, V, E) of a synthetic binary alloy (A: Cu-like, B: Ni-like)."""
    x = rng.uniform(0.0, 1.0, n)
    v0 = 11.8 * (1 - x) + 10.9 * x  # Vegard's law, A^3/atom
    b0 = (0.86 * (1 - x) + 1.15 * x) - 0.12 * x * (1 - x)  # eV/A^3, with bowing
    e0 = -3.49 * (1 - x) - 4.44 * x + 0.25 * x * (1 - x)  # regular-solution mixing
    v = v0 * rng.uniform(0.92, 1.08, n)
    e = birch_murnaghan(v, e0, v0, b0) + rng.normal(0.0, NOISE_EV, n)
    return np.column_stack([x, v, e])


def rbf(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
    return np.exp(-0.5 * d2 / length**2)


def fit(x: np.ndarray, y: np.ndarray, length: float, ridge: float) -> np.ndarray:
    k = rbf(x, x, length)
    return np.linalg.solve(k + ridge * np.eye(len(x)), y)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main() -> int:
    out = Path(os.environ.get("MESH_OUTPUTS", "outputs"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    shipped = Path(os.environ.get("MESH_INPUTS", "inputs")) / "materials.csv"
    if shipped.exists():
        data = np.loadtxt(shipped, delimiter=",", skiprows=1, ndmin=2)
        source = "input materials.csv"
    else:
        data = alloy_data(rng, N_POINTS)
        source = f"generated (seed {SEED})"
    order = rng.permutation(len(data))
    n_val = len(data) // 5
    val, train = data[order[:n_val]], data[order[n_val:]]

    mu, sd = train[:, :2].mean(axis=0), train[:, :2].std(axis=0)
    y_mean = float(train[:, 2].mean())
    xs, ys = (train[:, :2] - mu) / sd, train[:, 2] - y_mean
    # Hyper-parameters by an inner split of the training set only.
    n_in = len(xs) * 3 // 4
    best = None
    for length in (0.25, 0.5, 1.0, 2.0):
        for ridge in (1e-6, 1e-4, 1e-2):
            alpha = fit(xs[:n_in], ys[:n_in], length, ridge)
            err = rmse(rbf(xs[n_in:], xs[:n_in], length) @ alpha, ys[n_in:])
            if best is None or err < best[0]:
                best = (err, length, ridge)
    assert best is not None
    _, length, ridge = best
    alpha = fit(xs, ys, length, ridge)
    xv = (val[:, :2] - mu) / sd
    pred = rbf(xv, xs, length) @ alpha + y_mean

    np.save(out / "alpha.npy", alpha)
    np.save(out / "train_x.npy", xs)
    params = {
        "kernel": "rbf",
        "length_scale": length,
        "ridge": ridge,
        "feature_mean": mu.tolist(),
        "feature_std": sd.tolist(),
        "target_mean": y_mean,
    }
    (out / "params.json").write_text(json.dumps(params, indent=1) + "\n")
    metrics = {
        "source": source,
        "n_train": len(train),
        "n_val": len(val),
        "val_rmse_ev": rmse(pred, val[:, 2]),
        "val_mae_ev": float(np.mean(np.abs(pred - val[:, 2]))),
        "energy_range_ev": float(np.ptp(data[:, 2])),
        "noise_ev": NOISE_EV,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    with open(out / "predictions.csv", "w") as f:
        f.write("x,volume,energy,predicted\n")
        for row, p in zip(val, pred, strict=True):
            f.write(f"{row[0]:.17g},{row[1]:.17g},{row[2]:.17g},{p:.17g}\n")
    print(
        f"surrogate: KRR (rbf, l={length}, ridge={ridge:g}) on {len(train)} points; "
        f"validation RMSE {metrics['val_rmse_ev']:.2e} eV/atom "
        f"(energy range {metrics['energy_range_ev']:.3f} eV)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
