"""The core is pure: no I/O, clock, randomness, concurrency or logging inside it.

Every module of lockgate_server.core is imported (so none is skipped by accident), its
source is parsed, and its imports are checked, following imports of other
lockgate_server modules (e.g. `..limits`) so the rule cannot be dodged through a helper.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import lockgate_server.core

FORBIDDEN = frozenset(
    {"asyncio", "redis", "time", "datetime", "random", "logging", "socket", "os", "threading"}
    # The same by other doors: randomness, clocks, processes, the network, dynamic imports.
    | {"secrets", "uuid", "subprocess", "multiprocessing", "concurrent", "selectors", "http", "urllib", "ssl"}
    | {"importlib", "__import__"}
)


def core_module_names() -> list[str]:
    names = ["lockgate_server.core"]
    names.extend(info.name for info in pkgutil.walk_packages(lockgate_server.core.__path__, "lockgate_server.core."))
    return sorted(names)


def source_path(module_name: str) -> Path:
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin is not None, module_name
    return Path(spec.origin)


def is_package(module_name: str) -> bool:
    spec = importlib.util.find_spec(module_name)
    return spec is not None and spec.submodule_search_locations is not None


def imports_in(source: str, package: str) -> tuple[set[str], set[str]]:
    """(top-level names of outside modules, lockgate_server modules) imported by `source`,
    a module of `package` (relative imports are resolved against it)."""
    outside: set[str] = set()
    ours: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.split(".")[0] == "lockgate_server" else outside).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None and node.module.split(".")[0] != "lockgate_server":
                outside.add(node.module)
                continue
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            ours.add(base)
            if is_package(base):  # `from . import counter` imports the module counter
                ours.update(
                    f"{base}.{alias.name}"
                    for alias in node.names
                    if importlib.util.find_spec(f"{base}.{alias.name}") is not None
                )
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            outside.add("__import__")
    return {name.split(".")[0] for name in outside}, ours


def test_every_core_module_imports() -> None:
    names = core_module_names()
    assert {"lockgate_server.core.shard_state", "lockgate_server.core.leases", "lockgate_server.core.ratelimit"} <= set(
        names
    )
    for name in names:
        importlib.import_module(name)


def test_core_imports_nothing_impure() -> None:
    offenders: dict[str, set[str]] = {}
    seen: set[str] = set()
    pending = core_module_names()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        package = name if is_package(name) else name.rpartition(".")[0]
        outside, ours = imports_in(source_path(name).read_text(), package)
        if outside & FORBIDDEN:
            offenders[name] = outside & FORBIDDEN
        pending.extend(ours - seen)
    assert "lockgate_server.limits" in seen  # the walk does follow imports out of the core
    assert not offenders, f"impure imports in the core (or in what it imports): {offenders}"


def test_the_scan_sees_every_form_of_import() -> None:
    source = """
import os.path
import asyncio as aio
from time import monotonic
from .. import clock
from ..clock import WallClock
from . import counter
random = __import__("random")
"""
    outside, ours = imports_in(source, "lockgate_server.core")
    assert outside == {"os", "asyncio", "time", "__import__"}
    assert {"lockgate_server", "lockgate_server.clock", "lockgate_server.core.counter"} <= ours
    # Following lockgate_server.clock would then find its `import time`.
    clock_outside, _ = imports_in(source_path("lockgate_server.clock").read_text(), "lockgate_server")
    assert "time" in clock_outside
