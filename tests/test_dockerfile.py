"""The Dockerfile's steps, run in a plain venv: docker cannot run here, so what it would do is done by hand.

The file is parsed, not copied: its build stage's ``pip wheel`` runs on a copy of the checkout, its
runtime stage's ``pip install`` installs what that produced into a fresh venv, and the installed
command is run as the ENTRYPOINT would run it, with the image's ENV. The ENV must load as settings,
the HEALTHCHECK must probe the health path on the port the image listens on, and CMD must be serve.
"""

from __future__ import annotations

import glob
import json
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from proxy.config.settings import Settings, load
from tests.bounds import BUILD

REPO = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole, pending = pending + line, ""
        keyword, _, rest = whole.strip().partition(" ")
        found.append((keyword.upper(), " ".join(rest.split())))
    return found


def stages() -> list[list[tuple[str, str]]]:
    split: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            split.append([])
        split[-1].append((keyword, rest))
    return split


def only(stage: list[tuple[str, str]], keyword: str, containing: str = "") -> str:
    matches = [rest for kw, rest in stage if kw == keyword and containing in rest]
    assert len(matches) == 1, (keyword, containing, stage)
    return matches[0]


def image_env() -> dict[str, str]:
    words = shlex.split(only(stages()[-1], "ENV"))
    return dict(word.split("=", 1) for word in words)


def test_two_stages_the_image_from_the_wheel_alone() -> None:
    build, runtime = stages()
    assert only(build, "FROM").endswith(" AS build")
    assert shlex.split(only(build, "RUN", "pip wheel"))[-1] == "."  # the checkout, as a user builds it
    copied = only(runtime, "COPY")
    assert copied.startswith("--from=build ") and "COPY . " not in copied  # no source in the image
    assert json.loads(only(runtime, "ENTRYPOINT")) == ["signalgate"]
    assert json.loads(only(runtime, "CMD")) == ["serve"]
    assert any(kw == "USER" and rest != "root" for kw, rest in runtime)


def test_the_image_env_is_valid_settings_and_the_healthcheck_probes_the_health_path() -> None:
    settings = load(None, image_env())
    exposed = {int(port) for port in only(stages()[-1], "EXPOSE").split()}
    assert {settings.listen.port, settings.admin_listen.port} == exposed
    probe = only(stages()[-1], "HEALTHCHECK")
    assert f"http://127.0.0.1:{settings.listen.port}{Settings.health_path}" in probe
    assert settings.health_path == Settings.health_path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build stage's RUN, in a copy of the checkout: the wheel directory it fills."""
    base = tmp_path_factory.mktemp("docker")
    source = base / "src"
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()]
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*{Path(p).name for p in ignored}))
    argv = shlex.split(only(stages()[0], "RUN", "pip wheel"))
    assert argv[:2] == ["pip", "wheel"]
    wheel_dir = argv[argv.index("--wheel-dir") + 1]
    argv[argv.index("--wheel-dir") + 1] = str(base / wheel_dir.strip("/"))
    # docker builds with build isolation from the index; here the test venv's setuptools builds it
    command = [sys.executable, "-m", *argv, "--no-build-isolation", "-q"]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=BUILD)
    return base


def test_the_runtime_stage_installs_the_built_wheel_and_the_entrypoint_runs(
    built: Path, tmp_path: Path
) -> None:
    runtime = stages()[-1]
    copied_from, copied_to = only(runtime, "COPY").split()[1:]
    run = shlex.split(only(runtime, "RUN", "pip install").split("&&")[0])
    assert run[:2] == ["pip", "install"]
    pattern = run[-1]
    assert pattern.startswith(copied_to)
    wheels = glob.glob(str(built / copied_from.strip("/")) + "/" + pattern.removeprefix(copied_to))
    assert len(wheels) == 1, wheels

    fresh = tmp_path / "image"
    venv.create(fresh, with_pip=False)
    # the dependencies come from the test venv (no index here); signalgate itself only from the wheel
    (
        fresh / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "deps.pth"
    ).write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(fresh / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            wheels[0],
        ],
        check=True,
        capture_output=True,
        timeout=BUILD,
    )
    workdir = tmp_path / "var-lib-signalgate"
    workdir.mkdir()
    entrypoint = [str(fresh / "bin" / name) for name in json.loads(only(runtime, "ENTRYPOINT"))]
    env = {"PATH": "/usr/bin:/bin", **image_env()}
    version = subprocess.run([*entrypoint, "--version"], cwd=workdir, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("signalgate "), version
    example = subprocess.run(
        [*entrypoint, "config", "example"], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert example.returncode == 0 and example.stdout == (REPO / "config" / "signalgate.toml").read_text()
    where = subprocess.run(
        [str(fresh / "bin" / "python"), "-c", "import proxy; print(proxy.__file__)"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(fresh)), where  # the wheel's copy, not the checkout's
