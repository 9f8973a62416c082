"""``signalgate bench``: against a separately started signalgate, a small local run, and the guard.

The load comes from the built-in generator (``--generator built-in``), so these tests need no wrk.
Speed is never asserted here: only that the bench measured what it says and reports it correctly.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from proxy.bench import guard, scenarios
from proxy.bench.load import lua_script
from proxy.bench.report import spread
from tests.procs import REPO, serve, serve_env

ADMIN_TOKEN = "bench-test-admin-token-0123456789"
# One bench command: the local run starts 4 scenarios (each a signalgate or a peer) and loads each twice
# for 1 s; with start-up and teardown, under 30 s alone, more on a loaded 2-core machine.
BENCH = 90.0


async def bench(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m proxy.cli bench *args`` as a separate process: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "bench",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), BENCH)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bench_target_loads_a_running_signalgate_and_reports_json(
    db_dsn: str, upstream: str, tmp_path: Path
) -> None:
    env = serve_env(
        database_url=db_dsn,
        upstream=upstream,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        workers="1",
        log_level="warning",
    )
    async with serve(env) as served:
        keys = []
        for name in ("allowed", "revoked"):
            status, made = await served.admin("POST", "/v1/keys", json={"name": name, "owner": "bench-test"})
            assert status == 201, made
            keys.append(made["key"])
        status, _ = await served.admin("POST", f"/v1/keys/{made['id']}/revoke")
        assert status == 200
        keys_file = tmp_path / "keys.txt"
        keys_file.write_text("\n".join(keys) + "\n")
        code, out, err = await bench(
            "--target", served.proxy_url + "/v1/items/1",
            "--keys", str(keys_file),
            "--duration", "1",
            "--connections", "4",
            "--warmup", "0",
            "--repeat", "1",
            "--generator", "built-in",
            "--out", str(tmp_path / "out"),
            "--name", "deployment",
            "--no-plots",
        )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    assert "built-in generator" in out and "weaker" in out
    doc = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert doc["mode"] == "target"
    assert doc["load"] == {
        "generator": "built-in",
        "weaker": True,
        "duration_s": 1.0,
        "connections": 4,
        "threads": 2,
        "rate": None,
    }
    [row] = doc["results"]
    assert row["scenario"] == "target"
    # The two keys are used in turn: half allowed (200), half refused (401), nothing else.
    statuses = row["load"]["statuses"]
    assert set(statuses) == {"200", "401"}
    assert abs(statuses["200"] - statuses["401"]) <= 4  # at most one answer in flight per connection
    assert row["requests"] == row["ok"] + row["refused"] == statuses["200"] + statuses["401"] > 0
    assert row["errors"] == 0
    latencies = [ms for _p, ms in row["load"]["percentiles_ms"]]
    assert latencies == sorted(latencies) and latencies[0] > 0
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["p99_9_ms"]
    # The target listens on loopback: its worker was found and its CPU charged.
    assert row["cpu_us_per_request"] is not None and row["cpu_us_per_request"] > 0
    assert row["processes"] >= 1


async def test_bench_target_with_a_missing_keys_file_says_so(tmp_path: Path) -> None:
    code, _out, err = await bench("--target", "http://127.0.0.1:9/", "--keys", str(tmp_path / "nope.txt"))
    assert code == 2
    assert f"--keys {tmp_path / 'nope.txt'}: no such file" in err


async def test_bench_local_paired_rounds_without_wrk_nginx_or_a_database(tmp_path: Path) -> None:
    """The local mode end to end on a machine without wrk, nginx or Caddy (as CI starts): PATH holds
    only the interpreter's directory, so the bench must say how to install each and do without."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    code, out, err = await bench(
        "--scenarios", "upstream,nginx,aiohttp,passthrough",
        "--duration", "1",
        "--repeat", "2",
        "--warmup", "0",
        "--connections", "4",
        "--out", str(tmp_path),
        "--name", "local",
        "--no-plots",
        env=env,
    )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    assert "wrk is not installed (install it with: apt-get install -y wrk)" in out
    assert "skipping nginx: nginx not installed (apt-get install -y nginx)" in out
    doc = json.loads((tmp_path / "local.json").read_text())
    assert doc["load"]["generator"] == "built-in" and doc["load"]["weaker"] is True
    assert doc["upstream"] == "aiohttp (nginx not installed)"
    assert doc["skipped"] == {"nginx": "nginx not installed (apt-get install -y nginx)"}
    assert [r["scenario"] for r in doc["results"]] == ["upstream", "aiohttp", "passthrough"]
    for row in doc["results"]:
        assert row["ok"] == row["requests"] > 0 and row["errors"] == 0 and row["refused"] == 0
        assert len(row["runs"]) == 2
    assert [r["order"] for r in doc["rounds"]] == [
        ["upstream", "aiohttp", "passthrough"],
        ["passthrough", "aiohttp", "upstream"],
    ]
    ratio = doc["ratios"]["passthrough/aiohttp req/s"]
    assert len(ratio["rounds"]) == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert "passthrough/aiohttp req/s" in out
    table = (tmp_path / "local.md").read_text().splitlines()
    assert table[0].startswith("| scenario | req/s |") and table[2].startswith("| `upstream`")


def test_the_shipped_budgets_are_the_repository_s() -> None:
    shipped = guard.packaged_budgets().read_text()
    assert shipped == (REPO / "bench" / "budgets.toml").read_text(), (
        "copy bench/budgets.toml to proxy/bench/budgets.toml (the copy in the wheel)"
    )
    budgets = guard.load_budgets(guard.packaged_budgets())
    names = {ratio.name for ratio in scenarios.RATIOS}
    assert budgets and all(b.ratio in names for b in budgets)
    checked = {s.name for s in scenarios.CHECK}
    for budget in budgets:  # every budget can be measured by `bench check`
        ratio = next(r for r in scenarios.RATIOS if r.name == budget.ratio)
        assert {ratio.top, ratio.bottom} <= checked, budget


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", 'no [ratios."..."] tables'),
        ('[ratios."hot/passthrough req/s"]\nmeasured = "x"\n', "needs a numeric min and/or max"),
        ('[ratios."hot/passthrough req/s"]\nmin = "0.5"\n', "needs a numeric min and/or max"),
        ('[ratios."hot/passthrough req/s"]\nmin = 0.5\nmax_ = 1\n', "unknown fields ['max_']"),
        ("[ratios\n", "Expected"),
    ],
)
def test_bad_budgets_are_refused_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"budgets\.toml") as caught:
        guard.load_budgets(path)
    assert problem in str(caught.value)


async def test_bench_check_with_bad_budgets_exits_2_before_starting_anything(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[ratios."hot/passthrough req/s"]\n')
    code, out, err = await bench("check", "--budgets", str(path))
    assert code == 2
    assert "needs a numeric min and/or max" in err and "starting" not in out


def test_verdicts_name_the_ratio_its_budget_and_the_measured_value() -> None:
    budgets = [
        guard.Budget("hot/passthrough req/s", low=0.6),
        guard.Budget("hot/passthrough CPU/req", high=1.5),
        guard.Budget("cold/hot req/s", low=0.1, high=0.9),
        guard.Budget("zipf/hot req/s", low=0.5),
    ]
    found = spread(
        [
            {"hot/passthrough req/s": 0.5, "hot/passthrough CPU/req": 1.4, "cold/hot req/s": 0.3},
            {"hot/passthrough req/s": 0.58, "hot/passthrough CPU/req": 1.45, "cold/hot req/s": 0.95},
            {"hot/passthrough req/s": 0.7, "hot/passthrough CPU/req": 1.6, "cold/hot req/s": 0.2},
        ]
    )
    lines = [(v.kept, v.line()) for v in guard.judge(budgets, found)]
    assert lines == [
        (False, "BROKEN  hot/passthrough req/s: budget >= 0.6, measured 0.580 (rounds 0.500-0.700)"),
        (True, "ok      hot/passthrough CPU/req: budget <= 1.5, measured 1.450 (rounds 1.400-1.600)"),
        (True, "ok      cold/hot req/s: budget 0.1 to 0.9, measured 0.300 (rounds 0.200-0.950)"),
        (False, "BROKEN  zipf/hot req/s: budget >= 0.5, not measured in this run"),
    ]


def test_ratios_are_computed_only_for_scenarios_measured() -> None:
    figures = {"hot": {"rps": 500.0, "cpu": 200.0}, "passthrough": {"rps": 1000.0, "cpu": 100.0}}
    assert scenarios.ratios(figures) == {"hot/passthrough req/s": 0.5, "hot/passthrough CPU/req": 2.0}


def test_the_wrk_script_ships_with_the_package() -> None:
    script = lua_script()
    assert script.is_file() and "SG_BENCH_RESULT" in script.read_text()
