"""specs/PROTOCOL.md §11.1's table of numeric bounds is the wire models' own.

Every numeric field of every message body (``meshd/core/wire.py``) has a
range; a value outside it (or NaN, or an infinity) is rejected with
``out_of_range`` (or ``non_finite``). Regenerate the table with
``python -m tests.test_spec_wire_bounds``.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from meshd.core.wire import BODY_TYPES

SPEC = Path(__file__).resolve().parents[1] / "specs" / "PROTOCOL.md"
TAG = "wire-bounds"


def _numeric(annotation: object) -> str | None:
    """'int' or 'float' if the annotation is (optionally) that type, else None."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        found = {_numeric(a) for a in args} - {None}
        return found.pop() if len(found) == 1 else None
    if annotation is bool:
        return None
    if annotation in (int, float):
        return annotation.__name__  # type: ignore[union-attr]
    return None


def _fmt(x: object) -> str:
    if isinstance(x, float) and x >= 1e6:
        return f"{x:.0e}".replace("e+", "e")
    if isinstance(x, int) and x >= 2**31:
        exp = x.bit_length()
        if x == 2 ** (exp - 1):
            return f"2^{exp - 1}"
        if x == 2**exp - 1:
            return f"2^{exp}−1"
    return f"{x:,}".replace(",", "_") if isinstance(x, int) else repr(x)


def _constraints(info: object, annotation: object) -> list[object]:
    """The annotated-types constraints of a field, also inside ``X | None``."""
    found = list(getattr(info, "metadata", []))
    for arg in typing.get_args(annotation):
        for meta in getattr(arg, "__metadata__", ()):
            found += list(getattr(meta, "metadata", [meta]))
    return found


def bounds_table() -> str:
    rows = ["| message | field | type | range |", "|---|---|---|---|"]
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, type[BaseModel]]] = sorted(BODY_TYPES.items())
    while todo:
        name, model = todo.pop(0)
        for field, info in model.model_fields.items():
            ann = info.annotation
            for sub in typing.get_args(ann) or (ann,):
                for inner in typing.get_args(sub) or (sub,):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        key = (inner.__name__, "")
                        if key not in seen:
                            seen.add(key)
                            todo.append((inner.__name__, inner))
            kind = _numeric(ann)
            if kind is None:
                continue
            lo = hi = "—"
            for m in _constraints(info, ann):
                if isinstance(m, Ge):
                    lo = f"≥ {_fmt(m.ge)}"
                elif isinstance(m, Gt):
                    lo = f"> {_fmt(m.gt)}"
                elif isinstance(m, Le):
                    hi = f"≤ {_fmt(m.le)}"
                elif isinstance(m, Lt):
                    hi = f"< {_fmt(m.lt)}"
            rows.append(f"| `{name}` | `{field}` | {kind} | {lo}, {hi} |")
    return "\n".join(rows)


def _between() -> str:
    m = re.search(rf"<!-- {TAG}:begin -->\n(.*?)\n<!-- {TAG}:end -->", SPEC.read_text(), re.S)
    assert m, f"PROTOCOL.md lost its {TAG} markers"
    return m.group(1)


def test_every_numeric_field_has_both_bounds() -> None:
    unbounded = [r for r in bounds_table().splitlines()[2:] if "—" in r]
    assert not unbounded, "\n".join(unbounded)


def test_spec_table_matches_the_wire_models() -> None:
    assert _between() == bounds_table(), (
        "specs/PROTOCOL.md §11.1 is out of date; regenerate it with "
        "`python -m tests.test_spec_wire_bounds`"
    )


if __name__ == "__main__":
    text = SPEC.read_text()
    new = re.sub(
        rf"(<!-- {TAG}:begin -->\n).*?(\n<!-- {TAG}:end -->)",
        lambda m: m.group(1) + bounds_table() + m.group(2),
        text,
        flags=re.S,
    )
    SPEC.write_text(new)
    print(f"updated {SPEC}")
