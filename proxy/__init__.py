"""signalgate: an asyncio reverse proxy that authorizes every request from live signals."""

__version__ = "0.1.0"
