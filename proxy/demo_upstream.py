"""The built-in demo upstream for ``signalgate demo``: a tiny API that shows what reached it."""

from __future__ import annotations

from aiohttp import web

__all__ = ["make_demo_upstream"]


async def _hello(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "message": "hello from the demo upstream",
            "method": request.method,
            "path": request.raw_path,
            "key_id": request.headers.get("X-Signalgate-Key-Id"),
            "owner": request.headers.get("X-Signalgate-Owner"),
            "forwarded_for": request.headers.get("X-Forwarded-For"),
            "device": request.headers.get("X-Signalgate-Device"),  # the attested subject, if any
        }
    )


def make_demo_upstream() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _hello)
    return app
