"""``signalgate bench``: the local scenarios, a running deployment (``--target``), or the guard (``check``).

    signalgate bench [--scenarios a,b] [--duration 5] [--repeat 5] [--connections 64] [--workers 1] ...
    signalgate bench --target URL --keys FILE --duration D --connections C [--rate R]
    signalgate bench check [--budgets FILE]

Every mode prints a table (with progress while it runs), writes a JSON document and PNG plots to
``--out`` (default ``./signalgate-bench``). See the README's Bench section.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from proxy.bench import guard, local, output, scenarios, seed, target
from proxy.bench.load import BUILTIN, WRK, Shape, choose_generator
from proxy.bench.rounds import Meter, Progress

__all__ = ["main"]

CHECK_SIZES = {"hot": 1_000, "cold": 5_000}


def _common(parser: argparse.ArgumentParser, *, duration: float, repeat: int, warmup: float) -> None:
    parser.add_argument(
        "--duration", type=_positive, default=duration, help=f"seconds per measured run ({duration:g})"
    )
    parser.add_argument(
        "--repeat", type=_count, default=repeat, help=f"rounds, or runs against a target ({repeat})"
    )
    parser.add_argument(
        "--warmup", type=float, default=warmup, help=f"seconds of unmeasured load first ({warmup:g})"
    )
    parser.add_argument("--connections", type=_count, default=64, help="open connections (64)")
    parser.add_argument("--threads", type=_count, default=2, help="wrk threads (2)")
    parser.add_argument("--rate", type=_positive, help="cap the offered load at about R requests/s in total")
    parser.add_argument("--generator", choices=(WRK, BUILTIN), help="default: wrk when installed")
    parser.add_argument(
        "--out", type=Path, default=Path("signalgate-bench"), help="where the JSON and plots go"
    )
    parser.add_argument("--name", help="file name stem (default: bench-<UTC time>)")
    parser.add_argument("--no-plots", action="store_true", help="JSON and table only")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signalgate bench",
        description="Load-test signalgate: local scenarios side by side with nginx, Caddy and plain "
        "aiohttp, or a running deployment with --target.",
        epilog="signalgate bench check [--budgets FILE]: the guard, a short fixed set of local scenarios "
        "whose ratios are held against budgets (see signalgate bench check --help).",
    )
    _common(parser, duration=5.0, repeat=5, warmup=2.0)
    names = ",".join(s.name for s in scenarios.LOCAL)
    parser.add_argument("--scenarios", default=names, help=f"comma-separated subset of {names}")
    parser.add_argument(
        "--workers", type=_count, default=1, help="processes per proxy (1); hot-wN uses the CPU count"
    )
    parser.add_argument(
        "--no-db-tx", action="store_true", help="skip counting database transactions per request"
    )
    parser.add_argument(
        "--no-revocations", action="store_true", help="skip the revocations-during-load phase"
    )
    parser.add_argument("--profile", action="store_true", help="then sample the hot gate with py-spy")
    parser.add_argument(
        "--nonblocking", action="store_true", help="py-spy --nonblocking (see proxy/bench/spy.py)"
    )
    deployment = parser.add_argument_group("against a running signalgate (nothing is started)")
    deployment.add_argument("--target", metavar="URL", help="http://host:port[/path] of the proxy listener")
    deployment.add_argument("--keys", type=Path, metavar="FILE", help="keys, one per line, used in turn")
    deployment.add_argument("--key-header", default="X-API-Key", help="header carrying the key (X-API-Key)")
    deployment.add_argument("--path", help="request path (default: the URL's, else /)")
    deployment.add_argument(
        "--addresses",
        type=Path,
        metavar="FILE",
        help="client addresses sent as X-Forwarded-For, one per line",
    )
    deployment.add_argument(
        "--pid", type=int, help="charge this process tree's CPU (default: found for loopback)"
    )
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signalgate bench check",
        description="Run a short fixed set of local scenarios and hold ratios measured in the same run "
        "against budgets; exit 1 when one is broken.",
    )
    _common(parser, duration=3.0, repeat=3, warmup=1.0)
    parser.add_argument(
        "--budgets", type=Path, help="budgets TOML (default: the copy shipped with signalgate)"
    )
    return parser


def _shape(opts: argparse.Namespace) -> Shape:
    return Shape(opts.duration, opts.connections, opts.threads, opts.rate)


def main(argv: list[str]) -> int:
    started = os.getloadavg()  # the machine's load before the bench adds its own
    try:
        if argv[:1] == ["check"]:
            return _check(_check_parser().parse_args(argv[1:]), started)
        return _bench(_parser().parse_args(argv), started)
    except KeyboardInterrupt:
        print("\nsignalgate bench: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130


def _options(opts: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}


Load = tuple[float, float, float]


def _bench(opts: argparse.Namespace, started: Load) -> int:
    progress = Progress()
    if opts.target:
        return _target(opts, progress, started)
    if opts.keys or opts.pid:
        print("signalgate bench: --keys and --pid go with --target", file=sys.stderr)
        return 2
    try:
        chosen = scenarios.by_name([n.strip() for n in opts.scenarios.split(",") if n.strip()])
    except ValueError as exc:
        print(f"signalgate bench: {exc}", file=sys.stderr)
        return 2
    generator = choose_generator(opts.generator, progress.say)
    setup = local.Setup(
        tuple(chosen),
        _shape(opts),
        generator,
        repeat=opts.repeat,
        warmup=opts.warmup,
        workers=opts.workers,
        sizes=_sizes(chosen),
        transactions=not opts.no_db_tx,
        revocations=not opts.no_revocations,
        profile=opts.out / f"{opts.name or 'bench'}-hot-profile.txt" if opts.profile else None,
        nonblocking=opts.nonblocking,
    )
    outcome = local.run_local(setup, progress)
    doc = _local_document(opts, setup, outcome, started)
    output.print_report(doc, outcome.rows)
    output.write(doc, opts.out, opts.name, pictures=not opts.no_plots)
    return 0


def _sizes(chosen: list[scenarios.Scenario]) -> dict[str, int]:
    names = {s.name for s in chosen}
    sizes = {"hot": seed.SIZES["hot"], "victims": seed.SIZES["victims"]}
    for name, key_set in (("cold", "cold"), ("zipf", "zipf"), ("hot-usage", "usage"), ("hot-rate", "rate")):
        if name in names:
            sizes[key_set] = seed.SIZES[key_set]
    return sizes


def _local_document(
    opts: argparse.Namespace, setup: local.Setup, outcome: local.Outcome, started: Load
) -> dict[str, Any]:
    return output.document(
        "local",
        outcome.rows,
        setup.shape,
        setup.generator,
        options=_options(opts),
        load_at_start=started,
        upstream=outcome.upstream,
        titles=outcome.titles,
        peers=outcome.peers,
        skipped=outcome.skipped,
        rounds=outcome.rounds,
        ratios=outcome.ratios,
        revocation=outcome.revocation,
        profile=outcome.profile,
    )


def _target(opts: argparse.Namespace, progress: Progress, started: Load) -> int:
    if opts.keys is not None and not opts.keys.is_file():
        print(f"signalgate bench: --keys {opts.keys}: no such file", file=sys.stderr)
        return 2
    try:
        plan = target.plan_for(opts.target, opts.keys, opts.path, opts.key_header, opts.addresses)
    except ValueError as exc:
        print(f"signalgate bench: {exc}", file=sys.stderr)
        return 2
    generator = choose_generator(opts.generator, progress.say)
    if generator == BUILTIN and plan.url.startswith("https:"):
        print(
            "signalgate bench: the built-in generator speaks plain http; install wrk for https",
            file=sys.stderr,
        )
        return 2
    pid = opts.pid or target.listening_pid(plan.url)
    progress.say(f"target {plan.url}{plan.path}" + (f", charging the CPU of pid {pid}" if pid else ""))
    meter = Meter(generator, _shape(opts), progress)
    row = target.run_target(meter, plan, pid=pid, repeat=opts.repeat, warmup=opts.warmup)
    doc = output.document(
        "target",
        [row],
        meter.shape,
        generator,
        options=_options(opts),
        load_at_start=started,
        target=opts.target,
        peers=[],
    )
    output.print_report(doc, [row])
    output.write(doc, opts.out, opts.name, pictures=not opts.no_plots)
    return 0


def _check(opts: argparse.Namespace, started: Load) -> int:
    path = opts.budgets or guard.packaged_budgets()
    try:
        budgets = guard.load_budgets(path)
    except ValueError as exc:
        print(f"signalgate bench check: {exc}", file=sys.stderr)
        return 2
    progress = Progress()
    generator = choose_generator(opts.generator, progress.say)
    setup = local.Setup(
        scenarios.CHECK,
        _shape(opts),
        generator,
        repeat=opts.repeat,
        warmup=opts.warmup,
        workers=1,
        sizes=dict(CHECK_SIZES),
        transactions=False,
        revocations=False,
    )
    outcome = local.run_local(setup, progress)
    doc = _local_document(opts, setup, outcome, started)
    verdicts = guard.judge(budgets, outcome.ratios)
    doc["budgets"] = {"file": str(path), "verdicts": [{"line": v.line(), "kept": v.kept} for v in verdicts]}
    output.print_report(doc, outcome.rows)
    output.write(doc, opts.out, opts.name, pictures=not opts.no_plots)
    print(f"\nbudgets from {path}:")
    for verdict in verdicts:
        print(verdict.line())
    broken = [v for v in verdicts if not v.kept]
    if broken:
        print(f"signalgate bench check: {len(broken)} budget(s) broken", file=sys.stderr)
        for v in broken:
            print(f"  {v.line()}", file=sys.stderr)
        return 1
    print("signalgate bench check: every budget kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
