"""The fast static upstream every scenario forwards to: one nginx worker serving a 64-byte file.

nginx runs in the foreground (``daemon off``) in its own process group with a generated config, pid
file, logs and temp paths all inside the bench's temporary directory; one worker process so it leaves
the other core to the proxy and wrk. Keep-alive is effectively unlimited so neither wrk nor the proxy's
connection pool has to reconnect during a run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench import procs

__all__ = ["BODY", "INSTALL_HINT", "missing_tools", "start_nginx"]

BODY = b"signalgate bench upstream: a small static body of 64 bytes".ljust(63, b".") + b"\n"
INSTALL_HINT = "apt-get update && apt-get install -y wrk nginx"


def missing_tools() -> list[str]:
    return [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]


def _nginx_binary() -> str:
    found = shutil.which("nginx")
    if found is None:
        raise RuntimeError(f"nginx not found: {INSTALL_HINT}")
    return found


def _config(base: Path, port: int) -> str:
    # As root, workers would otherwise run as "nobody" and could not read our 0700 temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {name}_temp_path {base / ('tmp_' + name)};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
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
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {base / "www"};
        location / {{
            try_files /body.txt =404;
        }}
    }}
}}
"""


def start_nginx(base: Path) -> tuple[procs.Child, str]:
    """Start nginx under ``base``; (the process group, its base URL)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "www").mkdir(exist_ok=True)
    (base / "www" / "body.txt").write_bytes(BODY)
    port = procs.free_port()
    conf = base / "nginx.conf"
    conf.write_text(_config(base, port))
    child = procs.start(
        "nginx",
        [_nginx_binary(), "-p", str(base), "-c", str(conf), "-e", str(base / "error.log")],
        os.environ,
        base,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until("nginx to answer", lambda: procs.http_get(url + "/")[0] == 200, 15, child)
    except BaseException:
        child.stop()
        raise
    return child, url
