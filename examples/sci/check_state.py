"""A custom checker container for the quantum example (meshd's ``checker_image``).

meshd runs ``/mesh/check`` with two replicas' outputs unpacked at
``/mesh/inputs/a`` and ``/mesh/inputs/b``; exit 0 means "equivalent"
(specs/CREDITS.md §5). A statevector is defined only up to a global phase,
which a per-number tolerance cannot see past, so this checker compares
states by fidelity:

- the two sides hold the same files;
- a complex ``.npy`` vector (a state) agrees iff both are normalised and
  |<a|b>|^2 >= 1 - FIDELITY_TOL;
- any other ``.npy`` agrees iff shapes match and values are within REL/ABS;
- any other file agrees iff its text is the same outside numbers and its
  numbers are within REL/ABS.

Prints one line saying why on a difference.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

FIDELITY_TOL = 1e-9
REL, ABS = 1e-9, 1e-12
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def same_text(a: str, b: str) -> bool:
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    xs, ys = NUMBER.findall(a), NUMBER.findall(b)
    return all(
        abs(float(x) - float(y)) <= max(ABS, REL * max(abs(float(x)), abs(float(y))))
        for x, y in zip(xs, ys, strict=True)
    )


def same_array(name: str, a: np.ndarray, b: np.ndarray) -> str | None:
    if a.shape != b.shape:
        return f"{name}: shapes {a.shape} and {b.shape}"
    if np.iscomplexobj(a) and a.ndim == 1:
        for side, v in (("a", a), ("b", b)):
            if abs(np.vdot(v, v).real - 1.0) > 1e-9:
                return f"{name}: state {side} is not normalised"
        fidelity = abs(np.vdot(a, b)) ** 2
        if fidelity < 1.0 - FIDELITY_TOL:
            return f"{name}: fidelity {fidelity:.12f} < 1 - {FIDELITY_TOL:g}"
        return None
    if not np.allclose(a, b, rtol=REL, atol=ABS, equal_nan=True):
        return f"{name}: values differ beyond rel {REL:g} / abs {ABS:g}"
    return None


def main() -> int:
    a_dir, b_dir = Path(sys.argv[1]), Path(sys.argv[2])
    fa, fb = files(a_dir), files(b_dir)
    if fa != fb:
        print(f"check: different files: {sorted(fa ^ fb)}")
        return 1
    for name in sorted(fa):
        pa, pb = a_dir / name, b_dir / name
        if name.endswith(".npy"):
            why = same_array(name, np.load(pa, allow_pickle=False), np.load(pb, allow_pickle=False))
            if why:
                print("check: " + why)
                return 1
        elif not same_text(pa.read_text(), pb.read_text()):
            print(f"check: {name}: text or numbers differ")
            return 1
    print(f"check: {len(fa)} files equivalent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
