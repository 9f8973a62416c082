"""aiohttp.web's server logger for the admin listener: what it says about a request, never the request.

aiohttp's request handler logs a request it could not read at ERROR ("Error handling request from %s"
with the parser's exception), and the parser's message quotes the refused line: a malformed
``Authorization: Bearer <admin token>`` header put the token in the log. aiohttp takes that logger as
a parameter (``AppRunner(..., logger=...)``, handed on to its ``RequestHandler``); this one keeps what
aiohttp says and the exception's class and frames, and drops the exception's message
(``proxy.core.redact`` decides what may be logged).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

from proxy.core.redact import logged_error

__all__ = ["ServerLog", "server_log"]


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records carry no exception text: ``exc_info`` becomes the class and the frames."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        exc_info = kwargs.pop("exc_info", None)
        if isinstance(exc_info, BaseException):
            error: BaseException | None = exc_info
        elif isinstance(exc_info, tuple):
            error = exc_info[1]
        else:
            error = sys.exc_info()[1] if exc_info else None
        if error is not None:
            frames = "".join(traceback.format_tb(error.__traceback__)).rstrip()
            shown = f": {logged_error(error)} (message withheld: it may quote the request)"
            if frames:
                shown += f"\n{frames}"
            msg = f"{msg}{shown.replace('%', '%%')}"  # aiohttp passes arguments for its own placeholders
        return msg, kwargs


def server_log(name: str = "signalgate.admin.server") -> ServerLog:
    return ServerLog(logging.getLogger(name), {})
