"""signalgate: an asyncio reverse proxy that authorizes every request from live signals."""

from __future__ import annotations

from importlib import metadata

__all__ = ["version"]


def version() -> str:
    """The installed distribution's version (its metadata, the one source), or "unknown" when signalgate
    runs from a source tree that was never installed."""
    try:
        return metadata.version("signalgate")
    except metadata.PackageNotFoundError:
        return "unknown"
