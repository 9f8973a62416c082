"""``signalgate bench check``: ratios measured in one run, held against the budgets in a TOML file.

A budget names a ratio (as ``proxy.bench.scenarios`` spells it: ``"hot/passthrough req/s"``) with a
``min`` and/or a ``max``; the ratio's median over the paired rounds must stay within them. Ratios only:
absolute figures on a shared machine say more about the neighbours than about the code. The budgets
ship with the package (``proxy/bench/budgets.toml``, a copy of the repository's ``bench/budgets.toml``);
``--budgets FILE`` reads another.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["Budget", "Verdict", "judge", "load_budgets", "packaged_budgets"]


@dataclass(frozen=True)
class Budget:
    ratio: str
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g} to {self.high:g}"
        return f">= {self.low:g}" if self.low is not None else f"<= {self.high:g}"


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    measured: float | None  # None: the ratio was not measured
    spread: tuple[float, float] | None = None

    @property
    def kept(self) -> bool:
        value = self.measured
        if value is None or math.isnan(value):
            return False
        b = self.budget
        return (b.low is None or value >= b.low) and (b.high is None or value <= b.high)

    def line(self) -> str:
        name = self.budget.ratio
        if self.measured is None:
            return f"BROKEN  {name}: budget {self.budget.describe()}, not measured in this run"
        where = f" (rounds {self.spread[0]:.3f}-{self.spread[1]:.3f})" if self.spread else ""
        word = "ok     " if self.kept else "BROKEN "
        return f"{word} {name}: budget {self.budget.describe()}, measured {self.measured:.3f}{where}"


def packaged_budgets() -> Path:
    return Path(str(resources.files("proxy.bench") / "budgets.toml"))


def load_budgets(path: Path) -> list[Budget]:
    """The budgets in ``path``; ValueError naming the entry when one is malformed."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    table = data.get("ratios")
    if not isinstance(table, dict) or not table:
        raise ValueError(f'{path}: no [ratios."..."] tables')
    out = []
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: ratios.{name!r} must be a table with min and/or max")
        unknown = set(entry) - {"min", "max", "measured"}
        if unknown:
            raise ValueError(f"{path}: ratios.{name!r} has unknown fields {sorted(unknown)}")
        bounds = [entry.get("min"), entry.get("max")]
        if all(b is None for b in bounds) or any(
            b is not None and (isinstance(b, bool) or not isinstance(b, int | float)) for b in bounds
        ):
            raise ValueError(f"{path}: ratios.{name!r} needs a numeric min and/or max")
        out.append(Budget(name, _float(bounds[0]), _float(bounds[1])))
    return out


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def judge(budgets: list[Budget], found: dict[str, dict[str, Any]]) -> list[Verdict]:
    """Each budget against the median of its ratio over the rounds."""
    verdicts = []
    for budget in budgets:
        spread = found.get(budget.ratio)
        if spread is None:
            verdicts.append(Verdict(budget, None))
        else:
            verdicts.append(Verdict(budget, spread["median"], (spread["min"], spread["max"])))
    return verdicts
