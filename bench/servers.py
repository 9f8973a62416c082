"""The servers the bench measures and what they need: nginx, PostgreSQL with its keys, the proxies.

Each scenario's server is returned as a ``Target``: the URL and wrk script to load it with, the process
trees its CPU is charged to, and an ``ExitStack`` that stops it (and deletes the hot key through the
admin API first). The stacks are also registered on the bench's own stack, so a failure or Ctrl-C
anywhere stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs, seed, upstream
from bench.load import WrkScript

__all__ = ["ADMIN_TOKEN", "Servers", "Target"]

ADMIN_TOKEN = "bench-admin-token-" + "0" * 16
BIN = Path(sys.executable).parent


@dataclass
class Target:
    """One server under load: where requests go, how they are made, and which processes pay for them."""

    name: str
    url: str
    script: WrkScript
    roots: list[int]
    listeners: int = 0
    db: bool = False  # hot and cold: count database transactions and PostgreSQL's CPU
    log: Path | None = None  # the server's stdout+stderr (decision lines go to stdout)
    notes: list[str] = field(default_factory=list)
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


class Servers:
    """The shared set-up (nginx, PostgreSQL, GeoIP file, cold keys) and each scenario's server."""

    def __init__(self, opts: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> None:
        self.opts = opts
        self.tmp = tmp
        self.stack = stack
        self.nginx_url = ""
        self.nginx_pid = 0
        self.dsn = ""
        self.db_pid = 0  # the embedded PostgreSQL's postmaster, whose CPU is reported apart
        self.geoip = tmp / "bench-country.mmdb"
        self.cold_keys_file = tmp / "cold-keys.txt"
        self.admin: dict[str, str] = {}  # scenario -> its signalgate's admin API

    # -- set-up ------------------------------------------------------------------------------------

    def start_upstream(self) -> None:
        child, self.nginx_url = upstream.start_nginx(self.tmp / "nginx")
        self.stack.callback(child.stop)
        self.nginx_pid = child.pid

    def start_database(self, want_cold: bool) -> None:
        from proxy.db.store import Store

        configured = os.environ.get("SIGNALGATE_DATABASE_URL", "").strip()
        if configured:
            self.dsn = configured
        else:
            from proxy.db.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(self.tmp / "pg", settings={"fsync": "off", "synchronous_commit": "off"})
            self.stack.callback(server.stop)
            print("starting an embedded PostgreSQL ...", flush=True)
            self.dsn = server.start()
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.db_pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])

        async def prepare() -> list[str]:
            store = await Store.open(self.dsn)
            try:
                await store.migrate()
            finally:
                await store.close()
            if not want_cold:
                return []
            return await seed.bulk_create_keys(self.dsn, self.opts.cold_keys, seed.POLICY)

        started = time.monotonic()
        cold = asyncio.run(prepare())
        if cold:
            self.cold_keys_file.write_text("\n".join(cold) + "\n")
            print(f"created {len(cold)} cold keys in {time.monotonic() - started:.1f}s", flush=True)
            if configured:
                self.stack.callback(self._forget_cold_keys, cold)
        seed.write_geoip(self.geoip)

    def _forget_cold_keys(self, cold: list[str]) -> None:
        async def delete() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.dsn)
            try:
                ids = [key[3:19] for key in cold]
                await conn.execute("DELETE FROM api_keys WHERE owner = 'team-bench' AND id = ANY($1)", ids)
            finally:
                await conn.close()

        asyncio.run(delete())

    def start_signalgate(self, name: str, **extra: str) -> tuple[procs.Child, str, str, int]:
        port, admin_port = procs.free_port(), procs.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALGATE_")}
        env.update(
            SIGNALGATE_LISTEN=f"127.0.0.1:{port}",
            SIGNALGATE_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
            SIGNALGATE_UPSTREAM=self.nginx_url,
            SIGNALGATE_DATABASE_URL=self.dsn,
            SIGNALGATE_ADMIN_TOKEN=ADMIN_TOKEN,
            SIGNALGATE_GEOIP_DB=str(self.geoip),
            SIGNALGATE_WORKERS=str(self.opts.workers),
            SIGNALGATE_LOG_LEVEL=self.opts.log_level,
            SIGNALGATE_DECISION_LOG=self.opts.decision_log,
            SIGNALGATE_DATA_DIR=str(self.tmp / name),
        )
        env.update(extra)
        child = procs.start(name, [str(BIN / "signalgate"), "serve"], env, self.tmp)
        self.stack.callback(child.stop)
        admin = f"http://127.0.0.1:{admin_port}"
        procs.wait_until(
            "the admin API to be ready", lambda: procs.http_get(admin + "/readyz")[0] == 200, 60, child
        )
        proxy = f"http://127.0.0.1:{port}"
        return child, proxy, admin, self._wait_listeners(child, port)

    def _wait_listeners(self, child: procs.Child, port: int) -> int:
        """How many processes listen on ``port`` once all --workers are up (or 15 s have passed)."""
        with contextlib.suppress(RuntimeError):
            procs.wait_until(
                f"{self.opts.workers} processes listening",
                lambda: procs.listening_processes(child.pid, port) >= self.opts.workers,
                15,
                child,
            )
        return procs.listening_processes(child.pid, port)

    # -- the servers ------------------------------------------------------------------------------

    def start(self, scenario: str) -> Target:
        """Start the server ``scenario`` measures (nothing for nginx-direct) and return it as a target."""
        if scenario == "nginx-direct":
            return Target(scenario, self.nginx_url + seed.BENCH_PATH, WrkScript(), [self.nginx_pid])
        if scenario == "passthrough":
            return self._start_passthrough()
        if scenario in ("hot", "hot-nolog"):  # hot-nolog: the same without the decision log
            extra = {"SIGNALGATE_DECISION_LOG": "off"} if scenario == "hot-nolog" else {}
            target = self._start_signalgate_target(scenario, **extra)
            key = seed.create_key_via_admin(self.admin[target.name], ADMIN_TOKEN, seed.POLICY)
            target.cleanup.callback(self._delete_key, self.admin[target.name], key)
            target.script = WrkScript(key=key)
            return target
        target = self._start_signalgate_target("cold", SIGNALGATE_CACHE_SIZE=str(self.opts.cache_size))
        target.script = WrkScript(keys_file=self.cold_keys_file)
        target.notes.append(f"{self.opts.cold_keys} keys, cache_size {self.opts.cache_size}")
        return target

    def _start_passthrough(self) -> Target:
        port = procs.free_port()
        argv = [
            sys.executable,
            str(Path(__file__).with_name("passthrough.py")),
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            self.nginx_url,
            f"--workers={self.opts.workers}",
        ]
        child = procs.start("passthrough", argv, os.environ, self.tmp)
        target = Target("passthrough", f"http://127.0.0.1:{port}{seed.BENCH_PATH}", WrkScript(), [child.pid])
        target.cleanup.callback(child.stop)
        self.stack.callback(target.cleanup.close)
        target.listeners = self._wait_listeners(child, port)
        target.log = child.log_path
        return target

    def _start_signalgate_target(self, scenario: str, **extra: str) -> Target:
        child, proxy, admin, listeners = self.start_signalgate(f"signalgate-{scenario}", **extra)
        target = Target(scenario, proxy + seed.BENCH_PATH, WrkScript(), [child.pid], listeners, db=True)
        target.cleanup.callback(child.stop)
        self.stack.callback(target.cleanup.close)
        target.log = child.log_path
        self.admin[scenario] = admin
        return target

    @staticmethod
    def _delete_key(admin: str, key: str) -> None:
        try:
            seed.delete_key_via_admin(admin, ADMIN_TOKEN, key)
        except OSError as exc:  # the gate is gone already; the key stays in a configured database
            print(f"could not delete the hot key: {exc}", file=sys.stderr)
