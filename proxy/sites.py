"""Where the composition root's servers listen: the TLS context a server presents, an aiohttp app
started on its address, and the URL a listener is reached at.

Part of the composition root: the admin API (``proxy.controlplane``), each worker's proxy listener
(``proxy.dataplane``) and the demo's upstream (``proxy.app``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from proxy.config.settings import Listen
from proxy.core.errors import ConfigError

__all__ = ["listener_url", "server_ssl", "start_site"]


def server_ssl(cert: Path | None, key: Path | None, setting: str) -> ssl.SSLContext | None:
    """A server TLS context from a certificate chain and key (PEM), or None without them."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(setting, str(cert), f"cannot load certificate and key: {exc}") from exc
    return context


async def start_site(runner: web.BaseRunner, listen: Listen, context: ssl.SSLContext | None = None) -> str:
    """Set ``runner`` up and start it on ``listen``; the URL it is reached at."""
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, ssl_context=context, reuse_address=True)
    await site.start()
    return listener_url(runner.addresses[-1], context)


def listener_url(address: tuple[str, int], context: ssl.SSLContext | None) -> str:
    """The URL of a listener bound to ``address`` (host, port), https when it has a TLS context."""
    host, port = address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if context else 'http'}://{shown}:{port}"
