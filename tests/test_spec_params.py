"""specs/PROTOCOL.md's parameter table is the code's CoreParams, field for field."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from meshd.core.params import CoreParams, markdown_table, param_docs

SPEC = Path(__file__).resolve().parents[1] / "specs" / "PROTOCOL.md"


def _table() -> str:
    text = SPEC.read_text()
    m = re.search(r"<!-- params:begin -->\n(.*?)\n<!-- params:end -->", text, re.S)
    assert m, "PROTOCOL.md lost its params markers"
    return m.group(1)


def test_every_parameter_is_documented_in_code() -> None:
    docs = param_docs()
    missing = [f.name for f in fields(CoreParams) if not docs.get(f.name)]
    assert not missing, f"parameters without a docstring: {missing}"


def test_spec_table_matches_code() -> None:
    assert _table() == markdown_table(), (
        "specs/PROTOCOL.md §2 is out of date; regenerate it with `python -m tests.test_spec_params`"
    )


if __name__ == "__main__":  # regenerate the table in place
    text = SPEC.read_text()
    new = re.sub(
        r"(<!-- params:begin -->\n).*?(\n?<!-- params:end -->)",
        lambda m: m.group(1) + markdown_table() + "\n<!-- params:end -->",
        text,
        flags=re.S,
    )
    SPEC.write_text(new)
    print("updated", SPEC)
