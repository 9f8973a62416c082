"""The local harness: the upstream, PostgreSQL with the bench's keys, and each scenario's server.

``Harness`` owns a temporary directory and an ``ExitStack``: everything it starts is stopped from
there, also on Ctrl-C and SIGTERM. Each scenario's server comes back as a ``Server``: its base URL, the
process trees its CPU is charged to, its log, and for a signalgate its admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from proxy.bench import peers, procs, seed
from proxy.bench.pyservers import BODY

__all__ = ["ADMIN_TOKEN", "Harness", "Server"]

ADMIN_TOKEN = "bench-admin-token-" + "0" * 16
TRUSTED_HOP = "127.0.0.1/32"  # where the load comes from; its X-Forwarded-For is believed


@dataclass
class Server:
    """One server under load: where requests go and which processes pay for them."""

    name: str
    url: str
    roots: list[int]
    log: Path | None = None
    admin: str = ""  # a signalgate's admin API
    db: bool = False  # a signalgate: count database transactions and PostgreSQL's CPU
    listeners: int = 0
    notes: list[str] = field(default_factory=list)


class Harness:
    """The shared set-up (upstream, database, GeoIP file, key files) and the servers of the scenarios."""

    def __init__(
        self, tmp: Path, stack: contextlib.ExitStack, *, workers: int, say: Callable[[str], None] = print
    ) -> None:
        self.tmp = tmp
        self.stack = stack
        self.workers = workers
        self.say = say
        self.upstream = ""
        self.upstream_kind = ""
        self.upstream_pid = 0
        self.dsn = ""
        self.db_pid = 0  # the embedded PostgreSQL's postmaster, whose CPU is reported apart
        self.geoip = tmp / "bench-country.mmdb"
        self.addresses = seed.write_addresses(tmp / "addresses.txt")
        self.keys: seed.KeySets | None = None
        self.key_files: dict[str, Path] = {}
        self.gates: dict[str, Server] = {}  # the signalgates started, by name

    # -- set-up ------------------------------------------------------------------------------------

    def start_upstream(self) -> None:
        """nginx serving the static body; the aiohttp static server when nginx is not installed."""
        if not peers.missing(["nginx"]):
            child, self.upstream = peers.start_nginx(self.tmp / "upstream", "static")
            self.upstream_kind = "nginx"
        else:
            port = procs.free_port()
            argv = [sys.executable, "-m", "proxy.bench.pyservers", "static", f"--listen=127.0.0.1:{port}"]
            child = procs.start("upstream", argv, os.environ, self.tmp)
            self.upstream = f"http://127.0.0.1:{port}"
            self.upstream_kind = "aiohttp (nginx not installed)"
        self.stack.callback(child.stop)
        self.upstream_pid = child.pid
        procs.wait_until("the upstream to answer", lambda: self._answers(self.upstream), 15, child)

    def make_keys(self, sizes: dict[str, int]) -> None:
        """Generate the key sets and write the files the load rotates through (no database yet)."""
        self.keys = seed.KeySets.generate(sizes)
        for name in self.keys.sets:
            self.key_files[name] = self.keys.write(name, self.tmp / f"keys-{name}.txt")
        if "zipf" in self.keys.sets:
            sample = seed.zipf_sample(self.keys.sets["zipf"], len(self.keys.sets["zipf"]))
            self.key_files["zipf"] = self.keys.write("zipf", self.tmp / "keys-zipf-sample.txt", sample)

    def start_database(self) -> None:
        """PostgreSQL (``SIGNALGATE_DATABASE_URL`` or an embedded one), migrated, holding the keys."""
        from proxy.db.store import Store

        assert self.keys is not None, "make_keys first"
        keysets = self.keys
        configured = os.environ.get("SIGNALGATE_DATABASE_URL", "").strip()
        if configured:
            self.dsn = configured
        else:
            from proxy.db.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(self.tmp / "pg", settings={"fsync": "off", "synchronous_commit": "off"})
            self.stack.callback(server.stop)
            self.say("starting an embedded PostgreSQL ...")
            self.dsn = server.start()
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.db_pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])

        async def prepare() -> None:
            store = await Store.open(self.dsn)
            try:
                await store.migrate()
            finally:
                await store.close()
            await seed.store_keys(self.dsn, keysets)

        started = time.monotonic()
        asyncio.run(prepare())
        sizes = ", ".join(f"{name} {len(batch):,}" for name, batch in keysets.made.items())
        self.say(f"stored the keys in {time.monotonic() - started:.1f}s ({sizes})")
        if configured:
            self.stack.callback(lambda: asyncio.run(seed.forget_keys(configured, keysets)))
        seed.write_geoip(self.geoip)

    # -- servers -----------------------------------------------------------------------------------

    def _answers(self, url: str, key: str = "") -> bool:
        headers = {"X-API-Key": key} if key else None
        status, body = procs.http_get(url + seed.BENCH_PATH, headers)
        return status == 200 and body == BODY

    def _ready(self, child: procs.Child, url: str, key: str = "") -> None:
        procs.wait_until(f"{child.name} to answer", lambda: self._answers(url, key), 30, child)

    def _own(self, child: procs.Child) -> procs.Child:
        self.stack.callback(child.stop)
        return child

    def upstream_server(self) -> Server:
        return Server("upstream", self.upstream, [self.upstream_pid], notes=[self.upstream_kind])

    def nginx(self, role: str) -> Server:
        keys = self.keys.sets["hot"] if self.keys and role == "map" else []
        child, url = peers.start_nginx(self.tmp / f"nginx-{role}", role, upstream=self.upstream, keys=keys)
        self._own(child)
        self._ready(child, url, keys[0] if keys else "")
        return Server("nginx-map" if role == "map" else "nginx", url, [child.pid], child.log_path)

    def caddy(self) -> Server:
        assert self.keys is not None
        keys = self.keys.sets["hot"]
        child, url = peers.start_caddy(
            self.tmp / "caddy", upstream=self.upstream, keys=keys, workers=self.workers
        )
        self._own(child)
        self._ready(child, url, keys[0])
        return Server("caddy", url, [child.pid], child.log_path, notes=[f"GOMAXPROCS={self.workers}"])

    def python(self, name: str, module: str, *args: str) -> Server:
        """A Python server process (``-m module``), with --workers copies sharing its port if it can."""
        port = procs.free_port()
        argv = [
            sys.executable,
            "-m",
            module,
            *args,
            f"--listen=127.0.0.1:{port}",
            f"--upstream={self.upstream}",
        ]
        child = self._own(procs.start(name, argv, os.environ, self.tmp))
        url = f"http://127.0.0.1:{port}"
        self._ready(child, url)
        return Server(
            name, url, [child.pid], child.log_path, listeners=procs.listening_processes(child.pid, port)
        )

    def signalgate(self, name: str, *, workers: int | None = None, **settings: str) -> Server:
        """``signalgate serve`` as a real subprocess on this harness's upstream and database."""
        workers = workers or self.workers
        port, admin_port = procs.free_port(), procs.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALGATE_")}
        env.update(
            SIGNALGATE_LISTEN=f"127.0.0.1:{port}",
            SIGNALGATE_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
            SIGNALGATE_UPSTREAM=self.upstream,
            SIGNALGATE_DATABASE_URL=self.dsn,
            SIGNALGATE_ADMIN_TOKEN=ADMIN_TOKEN,
            SIGNALGATE_GEOIP_DB=str(self.geoip),
            SIGNALGATE_WORKERS=str(workers),
            SIGNALGATE_LOG_LEVEL="warning",  # no decision line ...
            SIGNALGATE_DECISION_LOG="false",  # ... and no decision log in PostgreSQL, unless a scenario says
            SIGNALGATE_TRUSTED_PROXIES=TRUSTED_HOP,
            SIGNALGATE_DATA_DIR=str(self.tmp / name),
        )
        env.update({f"SIGNALGATE_{k.upper()}": v for k, v in settings.items()})
        child = self._own(procs.start(name, [sys.executable, "-m", "proxy.cli", "serve"], env, self.tmp))
        admin = f"http://127.0.0.1:{admin_port}"
        procs.wait_until(
            "its admin API to be ready", lambda: procs.http_get(admin + "/readyz")[0] == 200, 90, child
        )
        url = f"http://127.0.0.1:{port}"
        with contextlib.suppress(RuntimeError):
            procs.wait_until(
                f"{workers} processes listening",
                lambda: procs.listening_processes(child.pid, port) >= workers,
                30,
                child,
            )
        assert self.keys is not None
        self._ready(child, url, self.keys.sets["hot"][0])
        listeners = procs.listening_processes(child.pid, port)
        notes = [f"workers {workers}"] if workers != self.workers else []
        self.gates[name] = Server(name, url, [child.pid], child.log_path, admin, True, listeners, notes)
        return self.gates[name]

    def same_gate(self, gate: str, name: str) -> Server:
        """Gate ``gate`` (started if it is not yet) under another scenario's name: other keys, one server."""
        server = self.gates.get(gate) or self.signalgate(gate)
        return replace(server, name=name, notes=[*server.notes, f"the {gate} gate"])
