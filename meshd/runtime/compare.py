"""Comparing two output archives of one job within its tolerance (specs/CREDITS.md §5).

Rules:
- Two archives agree iff they hold the same paths, each of the same kind,
  and every pair of regular files agrees under the tolerance that
  :meth:`meshd.core.jobspec.Tolerance.for_path` gives for its path.
- A file whose path ends in ``.npy`` and that both sides hold as a valid
  NumPy array file (no pickled objects) is compared as an array: same shape,
  same dtype; numeric elements within tolerance, anything else byte-equal.
- Any other file is compared as text when both sides are UTF-8: the text
  outside numbers identical, the numbers within tolerance (numeric text and
  CSV alike); otherwise the bytes must be identical.
- Two numbers ``x``, ``y`` agree iff ``|x − y| ≤ max(abs, rel × max(|x|, |y|))``;
  NaN agrees only with NaN, an infinity only with the same infinity.
- Pure functions over bytes: no I/O but reading the given archives.
"""

from __future__ import annotations

import io
import math
import re
import tarfile

import numpy as np

from meshd.core.jobspec import Tolerance

_NUMBER = re.compile(
    rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:infinity|inf|nan)\b", re.IGNORECASE
)
_NPY_MAGIC = b"\x93NUMPY"


def members(archive: bytes) -> dict[str, bytes]:
    """Regular files of an output archive, name -> content."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                out[m.name] = f.read() if f else b""
    return out


def _kinds(archive: bytes) -> dict[str, str]:
    """Every member of an archive, name -> kind (``file``, ``dir``, ``link:<target>``)."""
    out: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for m in tar.getmembers():
            name = m.name.rstrip("/")
            if m.isfile():
                out[name] = "file"
            elif m.isdir():
                out[name] = "dir"
            elif m.issym() or m.islnk():
                out[name] = "link:" + m.linkname
            else:
                out[name] = "other"
    return out


def close(x: float, y: float, rel: float, abs_: float) -> bool:
    """One pair of numbers within tolerance (NaN only with NaN, inf only with itself)."""
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= max(abs_, rel * max(abs(x), abs(y)))


def numbers_close(a: bytes, b: bytes, rel: float, abs_: float) -> bool:
    """Same text outside numbers; every pair of number tokens within tolerance."""
    if _NUMBER.sub(b"#", a) != _NUMBER.sub(b"#", b):
        return False
    return all(
        close(float(x), float(y), rel, abs_)
        for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b), strict=True)
    )


def load_npy(data: bytes) -> np.ndarray | None:
    """The array of a ``.npy`` file's bytes, or None if it is not one (pickles refused)."""
    if not data.startswith(_NPY_MAGIC):
        return None
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:  # malformed header, truncated data, object dtype
        return None
    return arr if isinstance(arr, np.ndarray) else None


def arrays_close(a: np.ndarray, b: np.ndarray, rel: float, abs_: float) -> bool:
    """Same shape and dtype; numeric elements within tolerance (complex ones by
    modulus), NaN only with NaN, an infinity only with the same infinity;
    other dtypes (strings, records) byte-equal."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind not in "biufc":
        return a.tobytes() == b.tobytes()
    if a.dtype.kind in "biu":
        x, y = a.astype(np.float64), b.astype(np.float64)
    elif a.dtype.kind == "f":
        x, y = a.astype(np.float64), b.astype(np.float64)
    else:
        x, y = a.astype(np.complex128), b.astype(np.complex128)
    with np.errstate(invalid="ignore", over="ignore"):
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        inf_x, inf_y = np.isinf(x), np.isinf(y)
        if not np.array_equal(nan_x, nan_y):
            return False
        special = nan_x | inf_x | inf_y
        if not np.array_equal(x[inf_x | inf_y], y[inf_x | inf_y]):
            return False
        fx, fy = x[~special], y[~special]
        bound = np.maximum(abs_, rel * np.maximum(np.abs(fx), np.abs(fy)))
        return bool(np.all(np.abs(fx - fy) <= bound))


def files_close(path: str, a: bytes, b: bytes, rel: float, abs_: float) -> bool:
    """Two versions of the output file at ``path`` agree within ``rel``/``abs``."""
    if a == b:
        return True
    if path.endswith(".npy"):
        xa, xb = load_npy(a), load_npy(b)
        if xa is not None and xb is not None:
            return arrays_close(xa, xb, rel, abs_)
    try:
        a.decode("utf-8")
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return numbers_close(a, b, rel, abs_)


def archives_close(a: bytes, b: bytes, tolerance: Tolerance) -> bool:
    """Two output archives agree within the job's tolerance (specs/CREDITS.md §5)."""
    if a == b:
        return True
    if _kinds(a) != _kinds(b):
        return False
    fa, fb = members(a), members(b)
    return all(files_close(k, fa[k], fb[k], *tolerance.for_path(k)) for k in fa)
