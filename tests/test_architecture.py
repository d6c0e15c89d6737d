"""Import rules of the layers (ARCHITECTURE.md "Layers" and "The core is sans-I/O").

"meshd/core/ ... imports no trio, sockets, Docker, plyvel, libp2p, time or
module-level random", and dependencies point downwards only: the core never
imports the runtime, adapters, store or API. ``import random`` is allowed for
the ``random.Random`` type only; calling ``random.random()`` and friends is
not (randomness comes from the injected rng).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "meshd" / "core"
CORE_FILES = sorted(CORE.glob("*.py"))
FORBIDDEN_MODULES = {
    "trio",
    "socket",
    "docker",
    "plyvel",
    "libp2p",
    "time",
    "os",
    "threading",
    "asyncio",
    "multiprocessing",
    "subprocess",
    "select",
    "selectors",
    "datetime",
}
FORBIDDEN_PACKAGES = (
    "meshd.runtime",
    "meshd.net",
    "meshd.exec",
    "meshd.store",
    "meshd.api",
    "meshd.testing",
    "mesh_cli",
    "simulations",
)
RANDOM_ALLOWED_ATTRS = {"Random"}


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the module, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, package: str = "meshd.core") -> list[str]:
    tree = ast.parse(source)
    bad = []
    for line, mod in imported_modules(tree, package):
        root = mod.split(".")[0]
        if root in FORBIDDEN_MODULES and not (root == "random" or mod.startswith("random.")):
            bad.append(f"line {line}: imports {mod}")
        if any(mod == p or mod.startswith(p + ".") for p in FORBIDDEN_PACKAGES):
            bad.append(f"line {line}: imports {mod} (upper layer)")
        if mod.startswith("random.") and mod.split(".", 1)[1] not in RANDOM_ALLOWED_ATTRS:
            bad.append(f"line {line}: imports {mod} (module-level random)")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr not in RANDOM_ALLOWED_ATTRS
        ):
            bad.append(f"line {node.lineno}: uses random.{node.attr} (module-level random)")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            bad.append(f"line {node.lineno}: dynamic import")
    return bad


def test_core_files_found() -> None:
    names = {p.name for p in CORE_FILES}
    assert {"node.py", "origin.py", "worker.py", "wire.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("import time", "imports time"),
        ("import trio.testing", "imports trio.testing"),
        ("from os import path", "imports os"),
        ("from random import choice", "module-level random"),
        ("import random\nx = random.random()", "uses random.random"),
        ("from meshd.net import host", "upper layer"),
        ("from ..store import eventlog", "upper layer"),
        ("import asyncio", "imports asyncio"),
        ("__import__('socket')", "dynamic import"),
    ],
)
def test_checker_catches_violations(source: str, problem: str) -> None:
    found = violations(source)
    assert found and problem in found[0], found


def test_checker_allows_what_the_core_needs() -> None:
    ok = (
        "import random\nimport msgpack\nfrom . import wire\nfrom .wire import seal\n"
        "def f(rng: random.Random) -> float:\n    return rng.random()\n"
    )
    assert violations(ok) == []
