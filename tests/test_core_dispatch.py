"""How the core routes: explicit tables, no mixins, no names built from strings.

Rules checked (``meshd/core/node.py`` header): ``Node`` routes with dispatch
tables built once — by input class, by message type and by timer kind — and
each role (``Origin``, ``Worker``, ``Ledger``) is an object over the narrow
``Context``. docs/ARCHITECTURE.md §"The core" describes the shape.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path
from typing import get_args

import pytest

from meshd.core.context import Context
from meshd.core.events import Input, Tick
from meshd.core.identity import Identity
from meshd.core.node import DIRECT_TYPES, GOSSIP_TYPES, Node
from meshd.core.params import CoreParams

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "meshd" / "core"


def _node() -> Node:
    return Node(CoreParams(), Identity.generate(), random.Random(1), 0)


def test_every_input_class_has_exactly_one_handler() -> None:
    node = _node()
    assert set(node._inputs) == set(get_args(Input))


def test_every_message_type_has_a_handler_on_its_channel() -> None:
    node = _node()
    assert set(node._direct) == DIRECT_TYPES
    assert set(node._gossip) == set().union(*GOSSIP_TYPES.values())


def _timer_kinds_in_core() -> dict[str, str]:
    """Every ``T_NAME = "kind"`` constant in meshd/core (name -> kind)."""
    kinds: dict[str, str] = {}
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Assign):
                continue
            for target, value in _pairs(node):
                if target.startswith("T_") and isinstance(value, str):
                    kinds[f"{path.stem}.{target}"] = value
    return kinds


def _pairs(node: ast.Assign) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for t in node.targets:
        if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant):
            out.append((t.id, node.value.value))
        elif isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
            for a, b in zip(t.elts, node.value.elts, strict=True):
                if isinstance(a, ast.Name) and isinstance(b, ast.Constant):
                    out.append((a.id, b.value))
    return out


def test_every_timer_kind_the_core_names_has_a_handler() -> None:
    kinds = _timer_kinds_in_core()
    assert len(kinds) >= 10, kinds  # the scan finds the roles' constants
    node = _node()
    missing = {name: kind for name, kind in kinds.items() if kind not in node._timers}
    assert not missing, f"timer kinds without a handler: {missing}"
    assert len(set(kinds.values())) == len(kinds), "two timer constants share a kind"


def test_a_timer_kind_without_a_handler_is_a_loud_bug() -> None:
    node = _node()
    node.ctx.at(0, "no_such_timer", None)
    with pytest.raises(KeyError, match="no_such_timer"):
        node.step(Tick(), 1)


def test_the_context_is_narrow() -> None:
    """About a dozen members: what the roles share and nothing else."""
    public = {
        n
        for n in vars(Context(CoreParams(), Identity.generate(), random.Random(1), _codec(), 0))
        if not n.startswith("_")
    }
    public |= {n for n in vars(Context) if not n.startswith("_")}
    assert len(public) <= 23, sorted(public)  # 23: pop_local, our roles' messages to each other


def _codec() -> object:
    from meshd.core.node import WireCodec

    return WireCodec()


BUILT_NAME = re.compile(
    r"""getattr\(\s*self\s*,\s*(f?["'][^"']*["']\s*\+|f["'][^"']*\{)"""
    r"""|getattr\([^)]*["']_?(on|timer)_["']\s*\+"""
)


def test_no_handler_is_found_by_a_name_built_from_a_string() -> None:
    hits = []
    for path in (ROOT / "meshd").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), 1):
            if BUILT_NAME.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_pattern_above_catches_what_it_is_for() -> None:
    assert BUILT_NAME.search('handler = getattr(self, "_on_" + type(inp).__name__, None)')
    assert BUILT_NAME.search('getattr(self, "on_" + msg.type)(msg)')
    assert BUILT_NAME.search('getattr(self, f"_timer_{kind}")(key)')
    assert not BUILT_NAME.search('seq = getattr(body, "seq", 0)')


def test_no_mixin_classes_in_meshd() -> None:
    found = []
    for path in (ROOT / "meshd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and "Mixin" in node.name:
                found.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not found, found
