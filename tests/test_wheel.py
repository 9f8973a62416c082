"""The built wheel carries everything signalgate opens at run time, and works without the checkout.

What must be in it is derived from the code, not kept by hand: every module of the ``proxy`` package,
and every file of each resource package the code reads (``importlib.resources.files("proxy.x")``,
found with ``ast``), which pyproject.toml maps from a top-level directory (``sql/``, ``config/``).
The wheel is then unpacked and run on its own, with the checkout and its editable install out of
sight, so a resource the code finds only through the source tree fails here.
"""

from __future__ import annotations

import ast
import fnmatch
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.bounds import BUILD, COMMAND

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]


def resource_packages() -> set[str]:
    """Every package the code reads with ``files("...")`` (``importlib.resources``)."""
    found: set[str] = set()
    for path in (REPO / "proxy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and (getattr(node.func, "id", None) == "files" or getattr(node.func, "attr", None) == "files")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found


def source_dir(package: str) -> Path:
    mapped = SETUPTOOLS.get("package-dir", {}).get(package)
    return REPO / (mapped if mapped is not None else package.replace(".", "/"))


def expected_files() -> set[str]:
    """Wheel paths that must be there: every module of proxy/, every shipped file of each resource package."""
    modules = (REPO / "proxy").rglob("*.py")
    expected = {path.relative_to(REPO).as_posix() for path in modules if "__pycache__" not in path.parts}
    for package in resource_packages():
        directory = source_dir(package)
        patterns = SETUPTOOLS.get("package-data", {}).get(package, [])
        assert patterns, f"{package} is read at run time but has no package-data in pyproject.toml"
        shipped = [p for p in directory.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
        assert shipped, f"{package}: nothing in {directory} matches {patterns}"
        prefix = package.replace(".", "/")
        expected.update(f"{prefix}/{p.name}" for p in shipped)
        expected.add(f"{prefix}/__init__.py")
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (an in-tree build/ could carry stale files)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".signalgate", ".*_cache"
        ),
    )
    subprocess.run(
        [*PIP_WHEEL, str(source), "-w", str(base)],
        check=True,
        capture_output=True,
        timeout=BUILD,
    )
    (built,) = base.glob("signalgate-*.whl")
    return built


def test_the_code_reads_the_migrations_and_the_example_config_as_resources() -> None:
    assert {"proxy.sql", "proxy.examples"} <= resource_packages()


def test_the_wheel_holds_every_module_and_every_file_read_at_run_time(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(expected_files() - names)
    assert not missing, f"{wheel.name} lacks files the code needs at run time: {missing}"
    assert "proxy/sql/001_init.sql" in names and "proxy/examples/signalgate.toml" in names


def test_the_unpacked_wheel_runs_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -S: no site.py, so no .pth file and no editable-install finder that would find proxy.sql in the
    # checkout; the dependencies come from site-packages, added as a plain path entry.
    paths = [str(unpacked), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    program = (
        f"import sys; sys.path[:0] = {paths!r}\n"
        "import proxy, proxy.db.migrate as m\n"
        f"assert proxy.__file__.startswith({str(unpacked)!r}), proxy.__file__\n"
        "print(' '.join(x.name for x in m.discover()))\n"
        "from proxy.cli import main\n"
        "raise SystemExit(main(['config', 'example']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", program], cwd=elsewhere, capture_output=True, text=True, timeout=COMMAND
    )
    assert done.returncode == 0, done.stderr
    first, _, example = done.stdout.partition("\n")
    assert first.split() == sorted(p.name for p in (REPO / "sql").glob("*.sql")), done.stdout
    assert example == (REPO / "config" / "signalgate.toml").read_text()
