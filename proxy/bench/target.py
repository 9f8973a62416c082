"""``signalgate bench --target URL``: the same load and report against a running signalgate.

Nothing is started: the load goes to ``URL`` with the keys of ``--keys`` in turn (one per line; a
line may carry tab-separated extra header fields). When the target listens on this machine and its
process can be seen (or ``--pid`` names it), its CPU per request is measured too.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from proxy.bench import rounds
from proxy.bench.load import Plan
from proxy.bench.report import Row
from proxy.bench.rounds import Meter, Target
from proxy.bench.servers import Server

__all__ = ["listening_pid", "plan_for", "run_target"]


def plan_for(url: str, keys: Path | None, path: str | None, header: str, addresses: Path | None) -> Plan:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--target {url!r}: expected http://host:port[/path]")
    base = f"{parts.scheme}://{parts.netloc}"
    target_path = path or (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Plan(base, target_path, keys_file=keys, key_header=header, addresses_file=addresses)


def listening_pid(url: str) -> int | None:
    """The process listening on the target's port, when the target is an address of this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    pids = {
        c.pid
        for c in connections
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    if not pids:
        return None
    # Workers sharing a port: charge their common parent (the supervisor) when there is one.
    parents = set()
    for pid in pids:
        try:
            parent = psutil.Process(pid).parent()
        except psutil.NoSuchProcess:
            continue
        parents.add(int(parent.pid) if parent is not None and len(pids) > 1 else pid)
    return min(parents) if len(parents) == 1 else min(pids)


def run_target(meter: Meter, plan: Plan, *, pid: int | None, repeat: int, warmup: float) -> Row:
    roots = [pid] if pid else []
    notes = [] if pid else ["CPU not measured: the target's process is not visible from here"]
    target = Target(Server("target", plan.url, roots, notes=notes), plan)
    meter.warm(target, warmup)
    runs = [meter.run(target, label=f"[target] run {i + 1}/{repeat}") for i in range(repeat)]
    return rounds.finish(target, runs)
