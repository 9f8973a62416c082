"""Issuers' JWK sets fetched from their ``jwks_url`` with aiohttp's client, by one process per instance.

Why here and not in the workers: a fetch per worker would multiply the load on the issuer and let
workers disagree about the keys. The control plane (``proxy.controlplane.control_plane``) runs one
``JwksRefresher``; it writes each fetched set to PostgreSQL (``proxy.db.issuers.IssuerRows.fetched``),
and every worker picks it up from the change feed. Across instances, a fetch is claimed in the database
first, so an issuer's set is fetched at most once per ``jwks_min_refresh`` by all of them together.

- Schedule: a set is due again after its ``Cache-Control: max-age``, held within
  [``jwks_min_refresh``, ``jwks_max_refresh``] (no max-age: 300 s, within the same bounds).
- Early: a worker that meets an unknown ``kid`` asks for a fetch (``REFRESH_CHANNEL``; each worker asks
  at most once per ``jwks_min_refresh`` per issuer); the claim keeps it to one fetch per interval, and
  one asked for too soon happens when the interval is over, so a flood of made-up kids costs at most
  one fetch per interval, and a real key rotation is picked up within one.
- Failure: the last good set stays (a failed refresh never empties it); the error is recorded for the
  admin API and the fetch is retried after ``jwks_min_refresh``.
- Never a key URL from a token: only the registered ``jwks_url`` is ever fetched.

``fetch_jwks`` is also what the admin API uses at creation, where a failure is a 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from proxy.core.errors import JwksFetchError, SignalgateError
from proxy.core.issuers import IssuerRecord, refresh_after, usable_keys
from proxy.db.changelog import CHANNEL
from proxy.db.issuers import REFRESH_CHANNEL, IssuerRows
from proxy.db.notices import Notices

__all__ = ["MAX_JWKS_BYTES", "FetchedJwks", "JwksRefresher", "fetch_jwks"]

log = logging.getLogger("signalgate.jwks")

MAX_JWKS_BYTES = 512 * 1024
RESCAN_INTERVAL = 60.0  # the issuer list is read again this often, besides on every change heard
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FetchedJwks:
    jwks: dict[str, Any]
    max_age: float | None  # from Cache-Control; None when it gives none


def max_age_of(cache_control: str) -> float | None:
    if _NO_CACHE.search(cache_control):
        return 0.0
    found = _MAX_AGE.search(cache_control)
    return float(found.group(1)) if found else None


async def fetch_jwks(session: aiohttp.ClientSession, url: str, *, within: float) -> FetchedJwks:
    """GET ``url`` as a JWK set; ``JwksFetchError`` saying why not (aiohttp's errors translated here)."""
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=within),
            headers={"Accept": "application/jwk-set+json, application/json"},
            max_redirects=3,
        ) as response:
            if response.status != 200:
                raise JwksFetchError(f"{url} answered HTTP {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise JwksFetchError(f"{url} sent more than {MAX_JWKS_BYTES} bytes")
            cache_control = response.headers.get("Cache-Control", "")
    except (aiohttp.ClientError, OSError) as exc:
        raise JwksFetchError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise JwksFetchError(f"cannot fetch {url}: no answer within {within:g}s") from exc
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise JwksFetchError(f"{url} did not send JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError(f'{url} did not send a JWK set {{"keys": [...]}}')
    return FetchedJwks(document, max_age_of(cache_control))


class JwksRefresher:
    """Keeps every URL issuer's set fresh; one task per issuer, so one fetch in flight per issuer."""

    def __init__(
        self,
        rows: IssuerRows,
        dsn: str,
        fetch: Callable[[str], Awaitable[FetchedJwks]],
        *,
        min_refresh: float,
        max_refresh: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rows = rows
        self._fetch = fetch
        self._min = min_refresh
        self._max = max_refresh
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._asked: set[str] = set()  # issuers a worker asked to fetch early
        self._rescan = asyncio.Event()
        self._scanner: asyncio.Task[None] | None = None
        self._notices = Notices(
            dsn,
            {REFRESH_CHANNEL: self.ask, CHANNEL: self._changed},
            on_connect=self._rescan.set,
        )
        self.fetches = 0  # fetches made by this process, finished and recorded (tests and metrics)
        self.fetch_failures = 0  # of those, the ones that left the issuer's last good set in place
        self._fetched = asyncio.Condition()

    async def start(self) -> None:
        self._notices.start()
        self._scanner = asyncio.create_task(self._scan(), name="signalgate-jwks-scan")

    async def stop(self) -> None:
        await self._notices.stop()
        tasks = [task for task in (self._scanner, *self._tasks.values()) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def ask(self, name: str) -> None:
        """A worker met an unknown kid of ``name``: fetch early (within the rate limit)."""
        self._asked.add(name)
        self._nudge(name)

    def _changed(self, payload: str) -> None:
        _, _, rest = payload.partition(":")
        entity, _, name = rest.partition(":")
        if entity == "issuer":
            self._nudge(name)

    def _nudge(self, name: str) -> None:
        if name in self._wake:
            self._wake[name].set()
        else:
            self._rescan.set()

    async def _scan(self) -> None:
        while True:
            try:
                names = {record.name for record in await self._rows.list() if record.jwks_url is not None}
            except SignalgateError as exc:
                log.warning("JWKS refresher cannot read the issuers: %s", exc)
                names = set(self._tasks)
            for name in names - set(self._tasks):
                self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.create_task(self._keep(name), name=f"signalgate-jwks-{name}")
            self._rescan.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESCAN_INTERVAL):
                    await self._rescan.wait()

    async def _keep(self, name: str) -> None:
        wake = self._wake[name]
        try:
            while True:
                record = await self._rows.get(name)
                if record is None or record.jwks_url is None:
                    return
                due = record.next_fetch_at.timestamp() if record.next_fetch_at else 0.0
                wait = 0.0 if name in self._asked else max(0.0, due - self._clock())
                if wait > 0:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await wake.wait()
                    continue  # re-read: the issuer may have changed or gone
                url, wait = await self._rows.claim_fetch(name, self._min)
                if url is None:  # fetched (here or elsewhere) too recently: once that interval is over
                    await asyncio.sleep(max(wait, 0.01))
                    continue
                self._asked.discard(name)
                await self._refresh(name, url, record.algorithms)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("JWKS refresher for issuer %s failed; it restarts at the next scan", name)
        finally:
            self._tasks.pop(name, None)
            self._wake.pop(name, None)

    async def wait_fetches(self, count: int) -> None:
        """Wait until this process has made and recorded ``count`` fetches."""
        async with self._fetched:
            while self.fetches < count:
                await self._fetched.wait()

    async def _refresh(self, name: str, url: str, algorithms: tuple[str, ...]) -> None:
        try:
            await self._refresh_once(name, url, algorithms)
        finally:
            self.fetches += 1
            async with self._fetched:
                self._fetched.notify_all()

    async def _refresh_once(self, name: str, url: str, algorithms: tuple[str, ...]) -> None:
        try:
            fetched = await self._fetch(url)
        except JwksFetchError as exc:
            log.warning("issuer %s: %s; keeping the last good key set", name, exc)
            self.fetch_failures += 1
            await self._rows.fetched(name, url, None, str(exc)[:500], self._at(self._min))
            return
        probe = IssuerRecord(name, "workload", "", "", algorithms, jwks=fetched.jwks)
        keys, problems = usable_keys(probe)
        if not keys:
            error = f"{url}: no usable key in the set ({'; '.join(problems)[:300] or 'empty'})"
            log.warning("issuer %s: %s; keeping the last good key set", name, error)
            self.fetch_failures += 1
            await self._rows.fetched(name, url, None, error, self._at(self._min))
            return
        due = self._at(refresh_after(fetched.max_age, self._min, self._max))
        changed = await self._rows.fetched(name, url, fetched.jwks, None, due)
        if changed:
            log.info("issuer %s: new key set from %s (%d keys)", name, url, len(keys))

    def _at(self, seconds: float) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC) + timedelta(seconds=seconds)
