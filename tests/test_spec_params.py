"""specs/PROTOCOL.md's parameter tables are the code's parameters, field for field:
§2 is ``CoreParams``; §10.3 the shell's ``InboxParams``, ``SendQueueParams``,
``RuntimeParams`` and the control API's ``ApiParams``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import fields
from pathlib import Path

import pytest

from meshd.api.server import ApiParams
from meshd.core.inbox import InboxParams
from meshd.core.params import CoreParams, markdown_table, param_docs
from meshd.runtime.daemon import RuntimeParams
from meshd.runtime.sendq import SendQueueParams

SPEC = Path(__file__).resolve().parents[1] / "specs" / "PROTOCOL.md"
SHELL_CLASSES = (InboxParams, SendQueueParams, RuntimeParams, ApiParams)


def shell_tables() -> str:
    """One table per shell class; fields that are themselves a parameter class are skipped
    (they have their own table)."""
    out = []
    for cls in SHELL_CLASSES:
        table = markdown_table(cls).split("\n")
        nested = {f.name for f in fields(cls) if dataclasses.is_dataclass(getattr(cls(), f.name))}
        rows = [r for r in table if not any(r.startswith(f"| `{n}` ") for n in nested)]
        out.append(f"`{cls.__name__}`:\n\n" + "\n".join(rows))
    return "\n\n".join(out)


def _between(tag: str) -> str:
    m = re.search(rf"<!-- {tag}:begin -->\n(.*?)\n<!-- {tag}:end -->", SPEC.read_text(), re.S)
    assert m, f"PROTOCOL.md lost its {tag} markers"
    return m.group(1)


@pytest.mark.parametrize("cls", (CoreParams, *SHELL_CLASSES))
def test_every_parameter_is_documented_in_code(cls: type) -> None:
    docs = param_docs(cls)
    missing = [f.name for f in fields(cls) if not docs.get(f.name)]
    assert not missing, f"{cls.__name__} parameters without a docstring: {missing}"


def test_spec_table_matches_code() -> None:
    assert _between("params") == markdown_table(), (
        "specs/PROTOCOL.md §2 is out of date; regenerate it with `python -m tests.test_spec_params`"
    )


def test_shell_tables_match_code() -> None:
    assert _between("shell-params") == shell_tables(), (
        "specs/PROTOCOL.md §10.3 is out of date; regenerate it with "
        "`python -m tests.test_spec_params`"
    )


if __name__ == "__main__":  # regenerate the tables in place
    text = SPEC.read_text()
    for tag, table in (("params", markdown_table()), ("shell-params", shell_tables())):
        text = re.sub(
            rf"(<!-- {tag}:begin -->\n).*?(\n?<!-- {tag}:end -->)",
            lambda m, table=table, tag=tag: m.group(1) + table + f"\n<!-- {tag}:end -->",
            text,
            flags=re.S,
        )
    SPEC.write_text(text)
    print("updated", SPEC)
