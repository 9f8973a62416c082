"""The C and Go references, started from generated configs: nginx and Caddy.

- nginx as the static upstream every scenario forwards to (one worker, ``access_log off``, unlimited
  keep-alive), serving the 64-byte body.
- ``nginx``: nginx ``proxy_pass`` in front of the upstream (keep-alive pool of 64 connections).
- ``nginx-map``: the same, answering 401 unless the key header is one of the 1,000 hot keys
  (a ``map`` hashed at start-up): the cheapest key check a C proxy can do.
- ``caddy``: Caddy's ``reverse_proxy`` behind a ``header`` matcher listing the same 1,000 keys (JSON
  config, admin endpoint off, ``GOMAXPROCS`` = the workers given to every proxy).

Each runs in its own process group with every path (pid, logs, temp files) inside the bench's
temporary directory. A missing tool is reported by ``missing`` and its scenarios are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from proxy.bench import procs
from proxy.bench.pyservers import BODY

__all__ = ["INSTALL", "missing", "start_caddy", "start_nginx"]

INSTALL = {
    "wrk": "apt-get install -y wrk",
    "nginx": "apt-get install -y nginx",
    "caddy": "apt-get install -y caddy",
}


def missing(tools: Sequence[str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _nginx_config(base: Path, port: int, workers: int, server: str, http_extra: str = "") -> str:
    # As root, workers would otherwise run as "nobody" and could not read our 0700 temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {name}_temp_path {base / ('tmp_' + name)};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
master_process on;
worker_processes {workers};
pid {base / "nginx.pid"};
error_log {base / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{temp}
{http_extra}
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
{server}
    }}
}}
"""


def start_nginx(
    base: Path, role: str, *, upstream: str = "", keys: Sequence[str] = (), header: str = "X-API-Key"
) -> tuple[procs.Child, str]:
    """nginx as ``static`` (the upstream), ``proxy`` or ``map`` (proxy behind a key map); (child, url)."""
    base.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    extra = ""
    if role == "static":
        (base / "www").mkdir(exist_ok=True)
        (base / "www" / "body.txt").write_bytes(BODY)
        server = f"        root {base / 'www'};\n        location / {{ try_files /body.txt =404; }}"
    else:
        upstream_host = upstream.split("://", 1)[1]
        extra = f"    upstream backend {{ server {upstream_host}; keepalive 64; }}\n"
        check = ""
        if role == "map":
            variable = "$http_" + header.lower().replace("-", "_")
            (base / "keys.map").write_text("".join(f'    "{key}" 1;\n' for key in keys))
            extra += (
                f"    map_hash_bucket_size 128;\n    map_hash_max_size {max(2048, 2 * len(keys))};\n"
                f"    map {variable} $sg_key_ok {{\n        default 0;\n"
                f"        include {base / 'keys.map'};\n    }}\n"
            )
            check = "            if ($sg_key_ok = 0) { return 401; }\n"
        server = (
            "        location / {\n"
            f"{check}"
            "            proxy_pass http://backend;\n"
            "            proxy_http_version 1.1;\n"
            '            proxy_set_header Connection "";\n'
            "        }"
        )
    conf = base / "nginx.conf"
    conf.write_text(_nginx_config(base, port, 1, server, extra))
    nginx = shutil.which("nginx")
    if nginx is None:
        raise RuntimeError(f"nginx not found: {INSTALL['nginx']}")
    child = procs.start(
        f"nginx-{role}",
        [nginx, "-p", str(base), "-c", str(conf), "-e", str(base / "error.log")],
        os.environ,
        base,
    )
    return child, f"http://127.0.0.1:{port}"


def start_caddy(
    base: Path, *, upstream: str, keys: Sequence[str], header: str = "X-API-Key", workers: int = 1
) -> tuple[procs.Child, str]:
    """Caddy reverse_proxy behind a header matcher of ``keys``, 401 otherwise; (child, url)."""
    base.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    config = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "storage": {"module": "file_system", "root": str(base / "data")},
        "apps": {
            "http": {
                "servers": {
                    "bench": {
                        "listen": [f"127.0.0.1:{port}"],
                        "automatic_https": {"disable": True},
                        "routes": [
                            {
                                "match": [{"header": {header: list(keys)}}],
                                "handle": [
                                    {
                                        "handler": "reverse_proxy",
                                        "upstreams": [{"dial": upstream.split("://", 1)[1]}],
                                    }
                                ],
                                "terminal": True,
                            },
                            {"handle": [{"handler": "static_response", "status_code": 401}]},
                        ],
                    }
                }
            }
        },
    }
    path = base / "caddy.json"
    path.write_text(json.dumps(config))
    caddy = shutil.which("caddy")
    if caddy is None:
        raise RuntimeError(f"caddy not found: {INSTALL['caddy']}")
    env = dict(os.environ)
    env.update(
        GOMAXPROCS=str(workers),
        HOME=str(base),
        XDG_DATA_HOME=str(base / "data"),
        XDG_CONFIG_HOME=str(base / "config"),
    )
    child = procs.start("caddy", [caddy, "run", "--config", str(path)], env, base)
    return child, f"http://127.0.0.1:{port}"
