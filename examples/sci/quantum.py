"""Quantum simulation: a statevector simulator in NumPy, two circuits.

1. GHZ on ``ghz_qubits`` (default 20): H on qubit 0, then CNOT(0 -> k) for
   every other k. The ideal state is (|0...0> + |1...1>)/sqrt(2): two
   outcomes of probability 1/2 each, every other outcome 0.
2. QAOA (p = 1) for MaxCut on ``qaoa_qubits`` (default 16) vertices of a
   ring with chords (i, i+2): |+>^n, then exp(-i gamma C), then
   exp(-i beta X) on every qubit; (gamma, beta) picked on a 12 x 12 grid by
   the largest expected cut <C>. Its final state is written in full.

Gates act on the state seen as a tensor of n axes of size 2 (qubit k is
axis k; basis index bit n-1-k), so the cost of one gate is one pass over
the 2^n amplitudes.

Parameters come from ``$MESH_INPUTS/circuit.json`` when present
(``{"ghz_qubits": 20, "qaoa_qubits": 16}``), else the defaults.
Outputs (``$MESH_OUTPUTS``):
  ghz.json         n, P(0...0), P(1...1), the total probability elsewhere
  qaoa.json        n, edges, gamma, beta, <C>, the maximum cut, the ratio
  qaoa_state.npy   the final QAOA statevector (complex128, 2^n)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

H = np.array([[1, 1], [1, -1]], dtype=np.complex128) / np.sqrt(2)


def apply_1q(psi: np.ndarray, gate: np.ndarray, k: int) -> np.ndarray:
    """Apply a one-qubit gate to qubit ``k`` of a state tensor (n axes of size 2)."""
    shape = psi.shape
    v = psi.reshape(2**k, 2, -1)
    return np.einsum("ab,ibj->iaj", gate, v).reshape(shape)


def apply_cnot(psi: np.ndarray, control: int, target: int) -> np.ndarray:
    """Flip ``target`` in the half of the state where ``control`` is 1."""
    psi = psi.copy()
    sel: list[slice | int] = [slice(None)] * psi.ndim
    sel[control] = 1
    sub = psi[tuple(sel)]
    t = target if target < control else target - 1
    psi[tuple(sel)] = np.flip(sub, axis=t)
    return psi


def ghz(n: int) -> dict[str, float | int]:
    psi = np.zeros((2,) * n, dtype=np.complex128)
    psi[(0,) * n] = 1.0
    psi = apply_1q(psi, H, 0)
    for k in range(1, n):
        psi = apply_cnot(psi, 0, k)
    probs = np.abs(psi.reshape(-1)) ** 2
    p0, p1 = float(probs[0]), float(probs[-1])
    return {"qubits": n, "p_all_zero": p0, "p_all_one": p1, "p_other": float(probs.sum() - p0 - p1)}


def ring_with_chords(n: int) -> list[tuple[int, int]]:
    return sorted({tuple(sorted((i, (i + d) % n))) for i in range(n) for d in (1, 2)})  # type: ignore[misc]


def cut_values(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """C(z) for every basis state z (bit n-1-k of the index is qubit k)."""
    idx = np.arange(2**n)
    bits = (idx[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1
    return sum((bits[:, i] ^ bits[:, j]).astype(np.float64) for i, j in edges)  # type: ignore[return-value]


def qaoa_state(n: int, cost: np.ndarray, gamma: float, beta: float) -> np.ndarray:
    psi = np.full(2**n, 2 ** (-n / 2), dtype=np.complex128) * np.exp(-1j * gamma * cost)
    rx = np.array(
        [[np.cos(beta), -1j * np.sin(beta)], [-1j * np.sin(beta), np.cos(beta)]],
        dtype=np.complex128,
    )
    t = psi.reshape((2,) * n)
    for k in range(n):
        t = apply_1q(t, rx, k)
    return t.reshape(-1)


def qaoa(n: int) -> tuple[dict[str, object], np.ndarray]:
    edges = ring_with_chords(n)
    cost = cut_values(n, edges)
    best = None
    for gamma in np.linspace(0.05, np.pi / 2, 12):
        for beta in np.linspace(0.05, np.pi / 2, 12):
            psi = qaoa_state(n, cost, float(gamma), float(beta))
            exp_c = float(np.dot(np.abs(psi) ** 2, cost))
            if best is None or exp_c > best[0]:
                best = (exp_c, float(gamma), float(beta), psi)
    assert best is not None
    exp_c, gamma, beta, psi = best
    max_cut = float(cost.max())
    info = {
        "qubits": n,
        "edges": [list(e) for e in edges],
        "gamma": gamma,
        "beta": beta,
        "expected_cut": exp_c,
        "max_cut": max_cut,
        "approximation_ratio": exp_c / max_cut,
        "norm": float(np.vdot(psi, psi).real),
    }
    return info, psi


def main() -> int:
    params = {"ghz_qubits": 20, "qaoa_qubits": 16}
    spec = Path(os.environ.get("MESH_INPUTS", "inputs")) / "circuit.json"
    if spec.exists():
        params.update(json.loads(spec.read_text()))
    out = Path(os.environ.get("MESH_OUTPUTS", "outputs"))
    out.mkdir(parents=True, exist_ok=True)
    g = ghz(int(params["ghz_qubits"]))
    (out / "ghz.json").write_text(json.dumps(g, indent=1) + "\n")
    info, psi = qaoa(int(params["qaoa_qubits"]))
    (out / "qaoa.json").write_text(json.dumps(info, indent=1) + "\n")
    np.save(out / "qaoa_state.npy", psi)
    print(
        f"quantum: GHZ({g['qubits']}) P(0..0)={g['p_all_zero']:.6f} P(1..1)={g['p_all_one']:.6f}; "
        f"QAOA({info['qubits']}) <C>={info['expected_cut']:.4f} of max {info['max_cut']:.0f} "
        f"(ratio {info['approximation_ratio']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
