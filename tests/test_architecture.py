"""Import rules of the layers (docs/ARCHITECTURE.md "Layers").

"Dependencies point downwards only": "``meshd/core`` imports no trio, sockets,
Docker, plyvel, libp2p, ``time`` or module-level ``random``, and no meshd
package but itself"; "``meshd/net``, ``meshd/store``, ``meshd/exec`` import
nothing from ``meshd.runtime``, ``meshd.api``, ``meshd.cli``, ``mesh_cli`` or
``meshd.demo``". ``import random`` is allowed in the core for the
``random.Random`` type only; calling ``random.random()`` and friends is not
(randomness comes from the injected rng).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MESHD = Path(__file__).resolve().parents[1] / "meshd"
CORE = MESHD / "core"
CORE_FILES = sorted(CORE.glob("*.py"))
ADAPTERS = ("net", "store", "exec")
ADAPTER_FILES = sorted(p for name in ADAPTERS for p in (MESHD / name).rglob("*.py"))
ADAPTER_FORBIDDEN = ("meshd.runtime", "meshd.api", "meshd.cli", "mesh_cli", "meshd.demo")
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
        elif root == "meshd" and not (mod == "meshd.core" or mod.startswith("meshd.core.")):
            bad.append(f"line {line}: imports {mod} (meshd package outside the core)")
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


def adapter_violations(source: str, package: str) -> list[str]:
    """Imports of the shell above an adapter (runtime, API, CLI, demo)."""
    return [
        f"line {line}: imports {mod} (layer above the adapters)"
        for line, mod in imported_modules(ast.parse(source), package)
        if any(mod == p or mod.startswith(p + ".") for p in ADAPTER_FORBIDDEN)
    ]


def module_package(path: Path) -> str:
    """Dotted package of a file under meshd/ (what its relative imports resolve against)."""
    return ".".join(path.relative_to(MESHD.parent).parts[:-1])


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
        ("from meshd.config import NodeConfig", "outside the core"),
        ("from .. import __version__", "outside the core"),
        ("import meshd.demo", "outside the core"),
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


def test_adapter_files_found() -> None:
    names = {p.relative_to(MESHD).as_posix() for p in ADAPTER_FILES}
    assert {"net/host.py", "store/eventlog.py", "exec/docker_exec.py"} <= names


@pytest.mark.parametrize("path", ADAPTER_FILES, ids=lambda p: p.relative_to(MESHD).as_posix())
def test_adapter_imports_no_upper_layer(path: Path) -> None:
    assert adapter_violations(path.read_text(encoding="utf-8"), module_package(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "from meshd.runtime.daemon import Daemon",
        "import meshd.api.server",
        "from meshd import cli",
        "from mesh_cli.main import main",
        "from ..demo import run",
        "def f():\n    from ..runtime import sendq",
    ],
)
def test_adapter_checker_catches_upper_imports(source: str) -> None:
    assert adapter_violations(source, "meshd.store"), source


def test_adapter_checker_allows_core_and_siblings() -> None:
    ok = "from meshd.core.logrecord import Record\nfrom . import blobs\nfrom ..net import px\n"
    assert adapter_violations(ok, "meshd.store") == []
