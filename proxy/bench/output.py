"""The bench's three outputs: the terminal table, the JSON document, and the PNG plots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.bench import plots, revocation, spy
from proxy.bench.load import BUILTIN, Shape
from proxy.bench.report import Row, machine, ratio_lines, table, versions

__all__ = ["document", "markdown", "print_report", "write"]


def document(
    mode: str,
    rows: list[Row],
    shape: Shape,
    generator: str,
    *,
    options: dict[str, Any],
    load_at_start: tuple[float, float, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "mode": mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_at_start),
        "versions": versions(),
        "load": {
            "generator": generator,
            "weaker": generator == BUILTIN,
            "duration_s": shape.duration,
            "connections": shape.connections,
            "threads": shape.threads,
            "rate": shape.rate,
        },
        "options": options,
        "results": [row.to_json() for row in rows],
        **extra,
    }


def print_report(doc: dict[str, Any], rows: list[Row]) -> None:
    load = doc["load"]
    lines = ["", *table(rows)]
    if load["weaker"]:
        lines.append(
            "load: built-in generator (wrk not installed): weaker, figures not comparable with wrk's"
        )
    for name, why in doc.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    if doc.get("ratios"):
        lines += ["", *ratio_lines(doc["ratios"])]
    if doc.get("revocation"):
        lines += ["", *revocation.lines(doc["revocation"])]
    if doc.get("profile"):
        lines += ["", *spy.lines(doc["profile"])]
    m = doc["machine"]
    lines += [
        "",
        f"machine: {m['nproc']} cores ({m['cpu_model'] or 'unknown CPU'}), Python {m['python']}, "
        f"load average {_first(m['load_average_start'])} at the start, {_first(m['load_average_end'])} at "
        f"the end; {load['connections']} connections, "
        f"{load['duration_s']:g} s per run, generator {load['generator']}",
    ]
    print("\n".join(lines), flush=True)


def write(doc: dict[str, Any], out: Path, name: str | None, *, pictures: bool = True) -> list[Path]:
    """The JSON document and, when matplotlib is installed, the plots; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    stem = name or datetime.now(UTC).strftime("bench-%Y%m%dT%H%M%SZ")
    path = out / f"{stem}.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    written = [path, out / f"{stem}.md"]
    written[1].write_text(markdown(doc))
    if pictures:
        if plots.available():
            written.append(plots.plot_latency(doc, out / f"{stem}-latency.png"))
            if doc["mode"] == "local":
                written.append(plots.plot_throughput(doc, out / f"{stem}-throughput.png"))
        else:
            print("no plots: matplotlib is not installed (pip install 'signalgate[bench]')")
    for item in written:
        print(f"wrote {item}")
    return written


def _first(values: list[float] | None) -> str:
    return "?" if not values else f"{values[0]:.2f}"


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(doc: dict[str, Any]) -> str:
    """The table and the ratios as Markdown (what the README's Bench section shows)."""
    titles = doc.get("titles", {})
    lines = [
        "| scenario | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | refused | CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["results"]:
        name = row["scenario"]
        title = titles.get(name, "")
        lines.append(
            f"| `{name}`{': ' + title if title else ''} | {row['rps']:,.0f} | {_cell(row['p50_ms'], 2)} "
            f"| {_cell(row['p90_ms'], 2)} | {_cell(row['p99_ms'], 1)} | {_cell(row['p99_9_ms'], 1)} "
            f"| {row['errors']:,} | {row['refused']:,} | {_cell(row['cpu_us_per_request'])} |"
        )
    if doc.get("ratios"):
        lines += ["", "| ratio, per round | median | min | max |", "|---|---:|---:|---:|"]
        for name, s in doc["ratios"].items():
            lines.append(f"| {name} | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    if doc.get("revocation"):
        head, *routes = revocation.lines(doc["revocation"])
        lines += ["", head, "", *(f"- {line.strip()}" for line in routes)]
    return "\n".join(lines) + "\n"
