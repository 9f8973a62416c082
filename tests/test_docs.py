"""The README and docs/ as a reader meets them: the first screen, links that resolve, every setting
documented, the deployment guide's sections, and no run-by-run history in the README."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from proxy.config.settings import Settings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DEPLOYMENT = REPO / "docs" / "deployment.md"
COMMANDS = [
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/signalgate demo",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
]


def first_screen() -> str:
    """Everything before the first section heading."""
    return README.split("\n## ", 1)[0]


def code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```(?:sh)?\n(.*?)```", text, re.S)]


def test_the_first_screen_says_what_it_is_gives_the_two_commands_then_in_front_of_your_api() -> None:
    screen = first_screen()
    blocks = code_blocks(screen)
    assert blocks[:2] == COMMANDS  # the two commands come first, exactly
    assert screen.index("reverse proxy") < screen.index(COMMANDS[0])  # what it is, before them
    quickstart = screen[screen.index("In front of your API") :]
    (lines,) = code_blocks(quickstart)
    commands = lines.splitlines()
    assert len(commands) <= 5, commands
    assert any("signalgate serve" in c for c in commands) and any("keys create" in c for c in commands)
    assert "docs/deployment.md" in quickstart
    assert len(screen.splitlines()) <= 60  # one screen, give or take


def test_relative_links_resolve() -> None:
    for document in (REPO / "README.md", DEPLOYMENT, REPO / "bench" / "HISTORY.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to missing {target}"


def test_every_setting_is_documented() -> None:
    example = (REPO / "config" / "signalgate.toml").read_text()
    for setting in fields(Settings):
        assert f"`{setting.name}`" in README, setting.name
        assert setting.name in example, setting.name


def test_the_deployment_guide_covers_what_operators_ask() -> None:
    text = DEPLOYMENT.read_text()
    headings = {line[3:].strip().lower() for line in text.splitlines() if line.startswith("## ")}
    for wanted in (
        "systemd",
        "container",
        "load balancers and health checks",
        "upgrades and migrations",
        "backups",
        "the admin token",
    ):
        assert wanted in headings, (wanted, headings)
    assert "[Unit]" in text and "ExecStart=" in text and "KillSignal=SIGTERM" in text
    assert Settings.health_path in text and "signalgate migrate" in text and "rolling" in text.lower()
    assert "lost" in text.lower() and "SIGNALGATE_ADMIN_TOKEN" in text  # recovering a lost token


def test_bench_history_is_not_in_the_readme() -> None:
    """Each current table may say which commit it measured; runs of earlier commits live elsewhere."""
    bench = README[README.index("## Bench") : README.index("\n## ", README.index("## Bench") + 1)]
    commits = set(re.findall(r"\b[0-9a-f]{7}\b", bench))
    tables = bench.count("\n|---")
    assert len(commits) <= tables, (sorted(commits), tables)
    assert "bench/HISTORY.md" in bench
    assert re.search(r"\bcommit [0-9a-f]{7}\b", (REPO / "bench" / "HISTORY.md").read_text())
