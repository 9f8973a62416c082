"""The built-in load generator, for machines without wrk: ``python -m proxy.bench.loadgen``.

One process, one event loop (uvloop), ``--connections`` keep-alive connections each sending its next
request when the previous answer is complete, for ``--duration`` seconds. It reads the same settings
as the wrk script (``SG_BENCH_*``, see ``proxy/bench/lua/bench.lua``) and prints the same
``SG_BENCH_RESULT`` line. Weaker than wrk: tens of µs of Python per request on the same cores as the
server, so it saturates sooner and leaves the server less CPU.

Answers are read with a deliberately small HTTP/1.1 reader (status line, ``Content-Length`` or chunked
bodies, ``Connection: close``): a general client such as aiohttp's ``ClientSession`` costs several
times more per request, which here would be the load generator measuring itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
from array import array
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["main", "read_answer"]

GRID = (1, 5, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.9, 99.95, 99.99)
TIMEOUT = 10.0


def _lines(name: str) -> list[str]:
    path = os.environ.get(name, "")
    if not path:
        return []
    return [line for line in Path(path).read_text().splitlines() if line]


class Requests:
    """The request bytes, built once per identity as the wrk script builds them."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.path = os.environ.get("SG_BENCH_PATH", "/")
        self.header = os.environ.get("SG_BENCH_HEADER", "X-API-Key")
        self.identities = _lines("SG_BENCH_KEYS")
        self.addresses = _lines("SG_BENCH_ADDRESSES")
        self.built: dict[str, bytes] = {}
        self.position = 0

    def _build(self, fields: list[tuple[str, str]]) -> bytes:
        head = f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in fields)
        return (head + "\r\n").encode("latin-1")

    def next(self) -> bytes:
        self.position += 1
        if not self.identities:
            if not self.addresses:
                return self._build([])
            address = self.addresses[self.position % len(self.addresses)]
            return self._build([("X-Forwarded-For", address)])
        line = self.identities[self.position % len(self.identities)]
        found = self.built.get(line)
        if found is None:
            key, *extra = line.split("\t")
            fields = [(self.header, key)]
            for item in extra:
                name, sep, value = item.partition(":")
                if sep:
                    fields.append((name.strip(), value.strip()))
            if self.addresses:
                fields.append(("X-Forwarded-For", self.addresses[len(self.built) % len(self.addresses)]))
            found = self.built[line] = self._build(fields)
        return found


class Tally:
    def __init__(self) -> None:
        self.latencies = array("d")  # µs
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the connection stays open) of one answer, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    keep = not lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = value.endswith("chunked")
        elif name == "connection":
            keep = "close" not in value if keep else "keep-alive" in value
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    elif status >= 200 and status not in (204, 304):
        await reader.read()  # no framing: the body ends with the connection
        keep = False
    return status, keep


async def _connection(host: str, port: int, requests: Requests, tally: Tally, deadline: float) -> None:
    delay = float(os.environ.get("SG_BENCH_DELAY_MS", "0") or 0) / 1000
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    due = 0.0
    try:
        while loop.time() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    tally.errors["connect_errors"] += 1
                    await asyncio.sleep(0.1)
                    continue
            if delay:  # one request per ``delay`` on this connection, whatever the answers took
                due = max(due + delay, loop.time()) if due else loop.time() + random.random() * delay
                await asyncio.sleep(due - loop.time())
            assert reader is not None
            sent = time.perf_counter()
            try:
                writer.write(requests.next())
                async with asyncio.timeout(TIMEOUT):
                    status, keep = await read_answer(reader)
            except TimeoutError:
                tally.errors["timeouts"] += 1
                keep, status = False, 0
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                tally.errors["read_errors"] += 1
                keep, status = False, 0
            if status:
                tally.latencies.append((time.perf_counter() - sent) * 1e6)
                tally.statuses[status] += 1
            if not keep:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


def _percentiles(values: array[float]) -> list[list[float | str]]:
    ordered = sorted(values)
    out: list[list[float | str]] = []
    if not ordered:
        ordered = [0.0]
    for p in GRID:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        out.append([str(p), round(ordered[index], 1)])
    out.append(["100", round(ordered[-1], 1)])
    return out


async def run(url: str, duration: float, connections: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = Requests(parts.netloc)
    tally = Tally()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration
    tasks = [
        asyncio.create_task(_connection(host, port, requests, tally, deadline)) for _ in range(connections)
    ]
    _done, pending = await asyncio.wait(tasks, timeout=duration + TIMEOUT + 1)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elapsed = loop.time() - started
    latencies = tally.latencies
    return {
        "requests": len(latencies),
        "duration_us": round(elapsed * 1e6),
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        "connect_errors": tally.errors["connect_errors"],
        "read_errors": tally.errors["read_errors"],
        "write_errors": 0,
        "timeouts": tally.errors["timeouts"],
        "mean_us": round(sum(latencies) / len(latencies), 1) if latencies else 0.0,
        "percentiles_us": _percentiles(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="scheme://host:port")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=64)
    opts = parser.parse_args(argv)
    if urlsplit(opts.url).scheme != "http":
        parser.error("the built-in generator speaks plain http only (use wrk for https)")
    try:
        import uvloop

        result = uvloop.run(run(opts.url, opts.duration, opts.connections))
    except ImportError:  # pragma: no cover - uvloop is a dependency of signalgate
        result = asyncio.run(run(opts.url, opts.duration, opts.connections))
    print("SG_BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
