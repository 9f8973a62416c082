"""What a usage limit and a rate limit cost per request, against the same key with neither.

    flock /tmp/signalgate-bench.lock .venv/bin/python bench/limits.py [--workers N] [--repeat 5]

One ``signalgate serve`` (nginx upstream, PostgreSQL, the bench's full policy: networks, regions,
routes) and three keys with that policy, used by every request of their run:

- ``plain``: the policy alone;
- ``usage``: plus ``"usage": {"max_uses": 2**62}``: one conditional upsert in PostgreSQL per request;
- ``rate``: plus ``"rate": {"per_second": 1e6, "burst": 1e6}``: one leaky-bucket take in the worker.

The limits are set so high that nothing is refused: the bench measures the cost of counting, not of
refusing. Paired rounds as ``bench/run.py`` does it (the order reversed every other round), and the
figures are the medians over the rounds of each key's req/s and CPU µs per request, and of the
per-round differences to ``plain``. PostgreSQL's own CPU per request is shown apart (``PG µs/req``):
the usage limit's real cost is mostly there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``proxy`` importable
    sys.path.insert(0, str(ROOT))

from bench import seed, upstream  # noqa: E402
from bench.load import WrkScript  # noqa: E402
from bench.report import Row  # noqa: E402
from bench.run import RESULTS, Bench, _interrupt  # noqa: E402
from bench.servers import ADMIN_TOKEN, Servers, Target  # noqa: E402

KEYS = {
    "plain": {},
    "usage": {"usage": {"max_uses": 2**62}},
    "rate": {"rate": {"per_second": 1_000_000, "burst": 1_000_000}},
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=5, help="paired rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):+.0f} ({min(values):+.0f} to {max(values):+.0f})"


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    missing = upstream.missing_tools()
    if missing:
        print(
            f"missing tools: {', '.join(missing)}. Install them with:\n  {upstream.INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    rounds: list[dict[str, Row]] = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-limits-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        servers = Servers(opts, tmp, stack)
        bench = Bench(opts, tmp, servers)
        servers.start_upstream()
        servers.start_database(want_cold=False)
        child, proxy, admin, listeners = servers.start_signalgate("signalgate-limits")
        base = Target("plain", proxy + seed.BENCH_PATH, WrkScript(), [child.pid], listeners, db=True)
        targets = []
        for name, extra in KEYS.items():
            key = seed.create_key_via_admin(admin, ADMIN_TOKEN, {**seed.POLICY, **extra})
            stack.callback(seed.delete_key_via_admin, admin, ADMIN_TOKEN, key)
            targets.append(replace(base, name=name, script=WrkScript(key=key)))
        for target in targets:
            bench.check(target)
            bench.warm(target)
        for n in range(opts.repeat):
            order = targets if n % 2 == 0 else targets[::-1]
            rounds.append({target.name: bench.one_run(target) for target in order})
    invalid = [f"{name}: {row.load.errors}" for r in rounds for name, row in r.items() if row.load.failed]
    lines = [
        f"signalgate serve, {opts.workers} worker(s), {opts.repeat} paired rounds of {opts.duration:g}s, "
        f"wrk -c{opts.connections} -t{opts.threads}; medians over the rounds",
        "",
        "| key | req/s | p50 ms | CPU µs/req | PG µs/req | CPU µs/req over plain | PG µs/req over plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in KEYS:
        rows = [r[name] for r in rounds]
        cpu = [row.cpu_us for row in rows]
        pg = [row.db_us or 0.0 for row in rows]
        over_cpu = [r[name].cpu_us - r["plain"].cpu_us for r in rounds]
        over_pg = [(r[name].db_us or 0.0) - (r["plain"].db_us or 0.0) for r in rounds]
        lines.append(
            f"| {name} | {statistics.median(row.load.rps for row in rows):,.0f} "
            f"| {statistics.median(row.load.p50_ms for row in rows):.2f} | {statistics.median(cpu):.0f} "
            f"| {statistics.median(pg):.0f} | {'-' if name == 'plain' else _median(over_cpu)} "
            f"| {'-' if name == 'plain' else _median(over_pg)} |"
        )
    if invalid:
        lines.append("INVALID runs (non-2xx answers or socket errors): " + "; ".join(invalid))
    print("\n" + "\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-limits-w{opts.workers}.json"
    document = {
        "options": vars(opts),
        "rounds": [{name: row.to_json() for name, row in r.items()} for r in rounds],
        "table": lines,
    }
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults written to {out}")
    return 1 if invalid else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; everything the bench started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None
