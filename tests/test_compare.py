"""Comparing two replicas' output archives within a job's tolerance
(``meshd/runtime/compare.py``, specs/CREDITS.md §5).

Rules checked (module header): the same paths of the same kinds; ``.npy``
arrays compared element by element (same shape and dtype, NaN only with NaN,
an infinity only with itself, pickles refused); other UTF-8 files (numeric
text, CSV) identical outside numbers and their numbers within tolerance;
anything else byte-equal; each file under the tolerance the first matching
``files`` entry gives, else the job's own ``rel``/``abs``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from meshd.core.jobspec import Tolerance, parse_job_spec
from meshd.runtime.compare import archives_close, files_close, numbers_close
from meshd.store.blobs import pack_dir


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def archive(tmp_path: Path, name: str, files: dict[str, bytes]) -> bytes:
    root = tmp_path / name
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    root.mkdir(exist_ok=True)
    return pack_dir(root)


def last_bits(x: np.ndarray, ulps: int = 3) -> np.ndarray:
    """``x`` moved by a few units in the last place (an honest replica on other hardware)."""
    y = x.copy()
    for _ in range(ulps):
        y = np.nextafter(y, np.inf)
    return y


def test_text_numbers_within_tolerance_and_text_outside_numbers_exact() -> None:
    assert numbers_close(b"e=1.0000001 n=3\n", b"e=1.0000002 n=3\n", 1e-6, 0.0)
    assert not numbers_close(b"e=1.0001 n=3\n", b"e=1.0002 n=3\n", 1e-6, 0.0)
    assert numbers_close(b"x=1.0\n", b"x=1.0e0\n", 0.0, 0.0)
    assert not numbers_close(b"3 apples", b"3 pears", 1.0, 1.0)
    # NaN only with NaN, an infinity only with the same infinity (spec's token rule)
    assert numbers_close(b"v=nan", b"v=NaN", 0.0, 0.0)
    assert not numbers_close(b"v=nan", b"v=1.0", 1.0, 1e300)
    assert numbers_close(b"v=-inf", b"v=-Infinity", 0.0, 0.0)
    assert not numbers_close(b"v=inf", b"v=-inf", 1.0, 1e300)
    # abs covers numbers near zero, where rel alone cannot
    assert numbers_close(b"p=0.0", b"p=1e-17", 1e-9, 1e-12)
    assert not numbers_close(b"p=0.0", b"p=1e-17", 1e-9, 0.0)


def test_csv_is_numeric_text() -> None:
    a = b"lead,mean,spread\n0.0,2.5,0.001\n0.5,2.4999999999,0.0021\n"
    b = b"lead,mean,spread\n0.0,2.5000000001,0.001\n0.5,2.4999999999,0.0021\n"
    assert files_close("stats.csv", a, b, 1e-9, 0.0)
    assert not files_close("stats.csv", a, b.replace(b"0.0021", b"0.0031"), 1e-9, 0.0)
    assert not files_close("stats.csv", a, b.replace(b"spread", b"sprea"), 1.0, 1.0)


def test_npy_arrays_compared_element_by_element() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8))
    assert x.tobytes() != last_bits(x).tobytes()
    assert files_close("m.npy", npy(x), npy(last_bits(x)), 1e-12, 0.0)
    off = x.copy()
    off[3, 4] *= 1.0 + 1e-6
    assert not files_close("m.npy", npy(x), npy(off), 1e-9, 0.0)
    # shape and dtype must match
    assert not files_close("m.npy", npy(x), npy(x.reshape(8, 40)), 1.0, 1.0)
    assert not files_close("m.npy", npy(x), npy(x.astype(np.float32)), 1.0, 1.0)
    # complex arrays by modulus; NaN and infinities in place
    psi = (rng.normal(size=16) + 1j * rng.normal(size=16)) / 4
    assert files_close("s.npy", npy(psi), npy(psi * (1 + 1e-14)), 1e-12, 0.0)
    assert not files_close("s.npy", npy(psi), npy(psi * 1j), 1e-3, 0.0)
    special = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert files_close("v.npy", npy(special), npy(special.copy()), 0.0, 0.0)
    swapped = np.array([np.inf, np.nan, -np.inf, 1.0])
    assert not files_close("v.npy", npy(special), npy(swapped), 1.0, 1e300)


def test_npy_with_pickled_objects_or_garbage_falls_back_to_bytes() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled = buf.getvalue()
    assert not files_close("o.npy", pickled, pickled.replace(b"a", b"b"), 1.0, 1e300)
    assert files_close("o.npy", pickled, pickled, 0.0, 0.0)
    # not an array file at all: binary bytes must be identical
    assert not files_close("x.npy", b"\x00\xff\x01", b"\x00\xff\x02", 1.0, 1e300)


def test_per_file_tolerance_first_match_else_the_jobs_own(tmp_path: Path) -> None:
    tol = parse_job_spec(
        {
            "image": "x",
            "command": ["x"],
            "tolerance": {
                "rel": 0.0,
                "abs": 0.0,
                "files": [
                    {"path": "members/*.npy", "rel": 1e-9, "abs": 1e-12},
                    {"path": "*.csv", "rel": 1e-6},
                ],
            },
        }
    ).tolerance
    assert tol is not None
    assert tol.for_path("members/m01.npy") == (1e-9, 1e-12)
    assert tol.for_path("members/stats.csv") == (1e-6, 0.0)
    assert tol.for_path("summary.txt") == (0.0, 0.0)

    rng = np.random.default_rng(7)
    x = rng.normal(size=(100, 40))
    base = {
        "members/m01.npy": npy(x),
        "stats.csv": b"a,b\n1.0,2.0\n",
        "summary.txt": b"rmse=0.125\n",
    }
    a = archive(tmp_path, "a", base)
    honest = archive(
        tmp_path,
        "b",
        {**base, "members/m01.npy": npy(last_bits(x)), "stats.csv": b"a,b\n1.0000001,2.0\n"},
    )
    assert a != honest and archives_close(a, honest, tol)
    # off by more than the array's own tolerance
    far = x.copy()
    far[50, 20] += 1e-3
    assert not archives_close(a, archive(tmp_path, "c", {**base, "members/m01.npy": npy(far)}), tol)
    # the unmatched file falls under the job's exact rule: last bits differ -> caught
    txt = archive(tmp_path, "d", {**base, "summary.txt": b"rmse=0.12500000000000003\n"})
    assert not archives_close(a, txt, tol)
    # the same change passes once the job's own tolerance allows it
    loose = Tolerance(rel=1e-12, files=tol.files)
    assert archives_close(a, txt, loose)
    # a missing or extra file is a difference whatever the tolerance
    fewer = archive(tmp_path, "e", {k: v for k, v in base.items() if k != "stats.csv"})
    assert not archives_close(a, fewer, Tolerance(rel=1.0, abs=1e300))


@pytest.mark.parametrize("pattern", ["/abs/*.npy", "../up.csv", "a/../b", "sp ace"])
def test_file_tolerance_patterns_are_relative(pattern: str) -> None:
    from meshd.core.jobspec import JobSpecError

    with pytest.raises(JobSpecError) as info:
        parse_job_spec(
            {"image": "x", "command": ["x"], "tolerance": {"files": [{"path": pattern}]}}
        )
    assert info.value.fields[0]["loc"] == "tolerance.files.0.path"
