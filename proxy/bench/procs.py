"""Processes the bench starts: free ports, process groups, readiness waits and CPU accounting (psutil).

Every child runs in its own session (its own process group), so stopping it stops everything it forked
(workers, nginx's worker) and a Ctrl-C in the terminal reaches only the bench, which then stops the
children itself from its ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "Child",
    "CpuSnapshot",
    "all_cpu_seconds",
    "free_port",
    "http_get",
    "listening_processes",
    "others_cpu_seconds",
    "start",
    "steal_seconds",
    "wait_until",
]


def free_port() -> int:
    """A loopback port that was free a moment ago (workers sharing a port need it known in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A started process group; ``stop`` is idempotent and escalates SIGTERM -> SIGKILL."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the leader (it stops its own workers in order), then SIGKILL to what is left."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        if self._wait_gone(grace):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._wait_gone(5.0)

    def _wait_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            self.process.poll()
            if self.process.returncode is not None and not _group_alive(self.pid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Child:
    """Start ``argv`` in a new session; stdout and stderr go to ``<log_dir>/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def wait_until(what: str, check: Callable[[], bool], timeout: float, child: Child | None = None) -> None:
    """Poll ``check()`` until it is true; fail with the child's log tail if it died or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if child is not None and not child.alive():
            raise RuntimeError(
                f"{child.name} exited ({child.process.returncode}) before {what}:\n{child.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f":\n{child.log_tail()}" if child is not None else ""
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(0.1)


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain request; (status, body), or (0, b"") when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _tree(root: int, exclude: frozenset[str]) -> Iterator[psutil.Process]:
    try:
        top = psutil.Process(root)
        family = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            if proc.name() not in exclude:
                yield proc
        except psutil.NoSuchProcess:
            continue


Usage = dict[tuple[int, float], tuple[int, float, str]]


def all_cpu_seconds() -> Usage:
    """For every process: (pid, start) -> (pid, its CPU seconds plus its reaped children's, its name).

    Counting reaped children catches short-lived processes (a test run spawning interpreters) once their
    parent has waited for them; only those still unreaped at the second snapshot are missed.
    """
    out: Usage = {}
    for proc in psutil.process_iter(["create_time", "cpu_times", "name"]):
        cpu = proc.info["cpu_times"]
        started = proc.info["create_time"]
        if cpu is None or started is None:
            continue
        spent = cpu.user + cpu.system + cpu.children_user + cpu.children_system
        out[(proc.pid, started)] = (proc.pid, spent, str(proc.info["name"] or "?"))
    return out


def others_cpu_seconds(before: Usage, after: Usage, ours: set[int]) -> tuple[float, dict[str, float]]:
    """CPU seconds spent between the two snapshots by processes whose pid is not in ``ours``: the total
    and the three biggest spenders by process name (to say what disturbed a run)."""
    spent_by: dict[str, float] = {}
    for key, (pid, spent, name) in after.items():
        if pid not in ours:
            used = spent - before.get(key, (pid, 0.0, name))[1]
            if used > 0:
                spent_by[name] = spent_by.get(name, 0.0) + used
    top = sorted(spent_by.items(), key=lambda item: -item[1])[:3]
    return sum(spent_by.values()), {name: round(seconds, 2) for name, seconds in top}


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this VM wanted it (0 on bare metal)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def listening_processes(root: int, port: int) -> int:
    """How many processes of ``root``'s tree hold a listening socket on ``port``."""
    count = 0
    for proc in _tree(root, frozenset()):
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            count += 1
    return count


class CpuSnapshot:
    """User+system CPU seconds of every process in a tree, keyed by (pid, start time)."""

    EXCLUDE = frozenset({"postgres", "postmaster", "wrk"})

    def __init__(self, roots: Sequence[int], *, exclude: frozenset[str] = EXCLUDE) -> None:
        self.times: dict[tuple[int, float], float] = {}
        self.names: dict[int, str] = {}
        for root in roots:
            for proc in _tree(root, exclude):
                try:
                    with proc.oneshot():
                        cpu = proc.cpu_times()
                        self.times[(proc.pid, proc.create_time())] = cpu.user + cpu.system
                        self.names[proc.pid] = _label(proc.cmdline())
                except psutil.NoSuchProcess:
                    continue

    @property
    def pids(self) -> set[int]:
        return {pid for pid, _started in self.times}

    @property
    def processes(self) -> int:
        return len(self.times)

    def since(self, before: CpuSnapshot) -> float:
        """CPU seconds spent between ``before`` and this snapshot (new processes count whole)."""
        return sum(self.split(before).values())

    def split(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per process (``pid label``) between ``before`` and this snapshot."""
        return {
            f"{pid} {self.names.get(pid, '?')}": now - before.times.get((pid, started), 0.0)
            for (pid, started), now in self.times.items()
        }


def _label(cmdline: list[str]) -> str:
    """A short name for a process: multiprocessing children by role, others by their program."""
    text = " ".join(cmdline)
    if "multiprocessing.spawn" in text:
        return "worker (spawn)"
    if "multiprocessing.resource_tracker" in text:
        return "resource_tracker"
    if text.startswith("nginx:"):
        return text
    for part in cmdline[:3]:
        if not part.startswith("-") and "python" not in part.rsplit("/", 1)[-1]:
            return part.rsplit("/", 1)[-1]
    return text[:40]
