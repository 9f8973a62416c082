"""mypy over the package, strict on the pure core (settings in pyproject.toml), as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bounds import BUILD

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD,
    )
    assert done.returncode == 0, done.stdout + done.stderr
