"""One load run: wrk with the bench's Lua script, or the built-in asyncio generator when wrk is missing.

Both take the same ``Plan`` (where, which path, which keys in turn, which client addresses) and
``Shape`` (how long, how many connections, at what rate) and print one ``SG_BENCH_RESULT {json}`` line
with the answers counted by status, the socket errors and the latency percentiles, so nothing here
reads wrk's human-readable report. The built-in generator is one Python process and costs far more CPU
per request than wrk: its figures are labelled as weaker wherever they are shown.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN",
    "MARK",
    "WRK",
    "WRK_INSTALL",
    "LoadResult",
    "Plan",
    "Shape",
    "choose_generator",
    "run_load",
]

MARK = "SG_BENCH_RESULT "
WRK = "wrk"
BUILTIN = "built-in"
WRK_INSTALL = "apt-get install -y wrk"
REFUSALS = frozenset({401, 403, 429})

Progress = Callable[[float], None]  # called about twice a second with the seconds elapsed


@dataclass(frozen=True)
class Plan:
    """What every request of a run looks like.

    ``keys_file``: one client identity per line (the key, then optionally tab-separated extra header
    fields, the hook for attestation and context headers), used in turn. ``addresses_file``: client
    addresses sent as ``X-Forwarded-For``, for a proxy that trusts the bench's hop.
    """

    url: str  # scheme://host:port, no path
    path: str = "/"
    keys_file: Path | None = None
    key_header: str = "X-API-Key"
    addresses_file: Path | None = None

    def env(self, threads: int, delay_ms: float) -> dict[str, str]:
        """The Lua script's settings (proxy/bench/lua/bench.lua); the built-in generator reads the same."""
        env = {
            "SG_BENCH_PATH": self.path,
            "SG_BENCH_HEADER": self.key_header,
            "SG_BENCH_THREADS": str(threads),
            "SG_BENCH_DELAY_MS": f"{delay_ms:.3f}",
        }
        if self.keys_file is not None:
            env["SG_BENCH_KEYS"] = str(self.keys_file)
        if self.addresses_file is not None:
            env["SG_BENCH_ADDRESSES"] = str(self.addresses_file)
        return env


@dataclass(frozen=True)
class Shape:
    duration: float
    connections: int = 64
    threads: int = 2  # wrk threads (the built-in generator is one process whatever this says)
    rate: float | None = None  # total requests/s offered; None: as fast as answers come

    def delay_ms(self) -> float:
        """Per-connection pause before each request that caps the total at about ``rate``."""
        return 0.0 if not self.rate else 1000.0 * self.connections / self.rate


@dataclass(frozen=True)
class LoadResult:
    generator: str
    requests: int
    seconds: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    mean_ms: float
    percentiles: list[tuple[float, float]]  # (percentile, latency ms), 1 ... 99.99 and 100 (the max)
    generator_cpu_seconds: float  # the load generator's own CPU, on the same cores as the servers
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        for at, ms in self.percentiles:
            if at >= p:
                return ms
        return self.percentiles[-1][1] if self.percentiles else float("nan")

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status < 400)

    @property
    def refused(self) -> int:
        return sum(n for status, n in self.statuses.items() if status in REFUSALS)

    @property
    def errors(self) -> int:
        """Answers that are neither success nor refusal (5xx, 404...), plus socket errors and timeouts."""
        failed = sum(n for status, n in self.statuses.items() if status >= 400 and status not in REFUSALS)
        return failed + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "ok": self.ok,
            "refused": self.refused,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "socket_errors": self.socket_errors,
            "mean_ms": round(self.mean_ms, 3),
            "percentiles_ms": [[p, round(ms, 3)] for p, ms in self.percentiles],
            "generator_cpu_seconds": round(self.generator_cpu_seconds, 3),
        }


def choose_generator(wanted: str | None, say: Callable[[str], None]) -> str:
    """``wrk`` when installed (or asked for and present), else the built-in generator, saying why."""
    found = shutil.which("wrk") is not None
    if wanted == BUILTIN:
        say("load generator: built-in (asked for); weaker than wrk: more CPU per request, lower ceiling")
        return BUILTIN
    if found:
        return WRK
    if wanted == WRK:
        raise SystemExit(f"signalgate bench: wrk is not installed; install it with: {WRK_INSTALL}")
    say(
        "load generator: wrk is not installed (install it with: "
        f"{WRK_INSTALL}); using the built-in asyncio generator, which is weaker: one Python process, "
        "more CPU per request, a lower ceiling. Its figures are labelled 'built-in'."
    )
    return BUILTIN


def lua_script() -> Path:
    """The packaged wrk script (a real file: wrk needs a path)."""
    ref = resources.files("proxy.bench") / "lua" / "bench.lua"
    return Path(str(ref))


def run_load(
    generator: str,
    plan: Plan,
    shape: Shape,
    *,
    progress: Progress | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadResult:
    """Run one load and return what it measured; raises RuntimeError if the generator failed."""
    seconds = max(1, round(shape.duration))
    env = dict(os.environ if environ is None else environ)
    env.update(plan.env(shape.threads, shape.delay_ms()))
    if generator == WRK:
        wrk = shutil.which("wrk")
        if wrk is None:
            raise RuntimeError(f"wrk not found: {WRK_INSTALL}")
        argv = [
            wrk,
            f"--threads={min(shape.threads, shape.connections)}",
            f"--connections={shape.connections}",
            f"--duration={seconds}s",
            "--timeout=10s",
            f"--script={lua_script()}",
            plan.url + plan.path,
        ]
    else:
        argv = [
            sys.executable,
            "-m",
            "proxy.bench.loadgen",
            f"--url={plan.url}",
            f"--duration={seconds}",
            f"--connections={shape.connections}",
        ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    child = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        while True:
            try:
                out, err = child.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > seconds + 60:
                    raise RuntimeError(f"{generator} did not finish within {seconds + 60}s") from None
                if progress is not None:
                    progress(min(elapsed, seconds))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    marked = [line[len(MARK) :] for line in out.splitlines() if line.startswith(MARK)]
    if child.returncode != 0 or not marked:
        raise RuntimeError(f"{generator} failed ({child.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    return parse_result(generator, json.loads(marked[-1]), cpu)


def parse_result(generator: str, data: dict[str, Any], cpu_seconds: float) -> LoadResult:
    return LoadResult(
        generator=generator,
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        statuses={int(k): int(v) for k, v in data["statuses"].items()},
        socket_errors={
            name: int(data[name]) for name in ("connect_errors", "read_errors", "write_errors", "timeouts")
        },
        mean_ms=data["mean_us"] / 1000,
        percentiles=[(float(p), us / 1000) for p, us in data["percentiles_us"]],
        generator_cpu_seconds=cpu_seconds,
    )
