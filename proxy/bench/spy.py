"""Where the time goes: sample the proxy processes with py-spy while wrk drives them.

py-spy (a sampling profiler that reads the interpreter's memory from outside) records collapsed stacks
(``--format raw``) of the supervisor and its workers (``--subprocesses``). ``top_frames`` then counts,
per function, the samples where it is on top of the stack (own time) and where it is anywhere on the
stack (total time), like ``py-spy top``.

By default py-spy pauses the process for each sample: the profiled run is slower, but every stack is
whole. With ``--nonblocking`` the process never pauses, yet stacks read while it runs come out cut
short at the bottom (on this code about 40% of them): own time stays right, total time becomes a lower
bound.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.bench.load import Plan, Shape, run_load

__all__ = ["Frame", "ensure_py_spy", "lines", "profile", "record", "top_frames"]


def ensure_py_spy() -> str:
    """The py-spy executable next to this interpreter, installed into the venv with pip if missing."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    found = shutil.which("py-spy")
    if found:
        return found
    print("py-spy not found; installing it into the venv: pip install py-spy", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    if not local.exists():
        raise RuntimeError("pip installed py-spy but the executable is not in the venv's bin directory")
    return str(local)


def record(
    py_spy: str, pid: int, seconds: float, out: Path, *, rate: int = 250, nonblocking: bool = False
) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` and its subprocesses for ``seconds``; wait on the returned process."""
    argv = [
        py_spy, "record", "--pid", str(pid), "--subprocesses", "--function",
        "--format", "raw", "--rate", str(rate), "--duration", str(max(1, round(seconds))),
        "--output", str(out), *(["--nonblocking"] if nonblocking else []),
    ]  # fmt: skip
    log = out.with_suffix(".log").open("wb")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


@dataclass(frozen=True)
class Frame:
    name: str
    own: int
    total: int

    def share(self, samples: int) -> tuple[float, float]:
        return (100.0 * self.own / samples, 100.0 * self.total / samples) if samples else (0.0, 0.0)


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/aiohttp/x.py)`` -> ``func (aiohttp/x.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3.", "/proxy/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3.":
                where = "stdlib:" + where.split("/", 1)[-1]
            elif marker == "/proxy/":
                where = "proxy/" + where
            break
    return f"{name} ({where})" if where else name


def _without_processes(stack: str) -> str:
    """Drop the process chain (supervisor;worker) that --subprocesses puts at the root of each stack.

    Those frames quote the command line, which may itself hold ";" (``-c "import x; x.main()"``).
    """
    while stack.startswith("process "):
        end = stack.find('";')
        if end < 0:
            return ""
        stack = stack[end + 2 :]
    return stack


def top_frames(raw: Path, limit: int = 15) -> tuple[int, list[Frame]]:
    """(samples, the ``limit`` functions with the most own samples) from py-spy's raw output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _short(f) for f in _without_processes(stack).split(";") if f and not f.startswith("thread ")
        ]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    return samples, [Frame(name, n, total[name]) for name, n in own.most_common(limit)]


def profile(
    pid: int,
    generator: str,
    plan: Plan,
    shape: Shape,
    work_dir: Path,
    *,
    nonblocking: bool,
    keep: Path | None,
) -> dict[str, Any]:
    """Load ``plan`` for ``shape.duration`` seconds while py-spy samples ``pid``; the top functions.

    The raw stacks are copied to ``keep`` (if given), which the returned summary names.
    """
    py_spy = ensure_py_spy()
    raw = work_dir / "hot-profile.txt"
    print(f"[hot] profiling with py-spy for {shape.duration:g}s ...", flush=True)
    sampler = record(py_spy, pid, shape.duration, raw, nonblocking=nonblocking)
    try:
        time.sleep(0.5)  # let py-spy attach before the load starts
        load = run_load(generator, plan, shape)
        sampler.wait(timeout=shape.duration + 60)
    finally:
        if sampler.poll() is None:
            sampler.kill()
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {raw.with_suffix('.log').read_text()}")
    samples, frames = top_frames(raw, 15)
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw, keep)
    return {
        "raw_stacks": str(keep),
        "py_spy_mode": "nonblocking" if nonblocking else "blocking",
        "rps_while_profiling": round(load.rps, 1),
        "samples": samples,
        "top_own": [
            {
                "function": f.name,
                "own_pct": round(f.share(samples)[0], 1),
                "total_pct": round(f.share(samples)[1], 1),
            }
            for f in frames
        ],
    }


def lines(found: dict[str, Any]) -> list[str]:
    out = [
        f"hot scenario under py-spy ({found['py_spy_mode']}): {found['samples']} samples, "
        f"{found['rps_while_profiling']:,.0f} req/s while sampling; top functions by own time:",
        f"{'own %':>6} {'total %':>8}  function",
    ]
    out += [f"{f['own_pct']:>6.1f} {f['total_pct']:>8.1f}  {f['function']}" for f in found["top_own"]]
    return out
