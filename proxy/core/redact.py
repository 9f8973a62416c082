"""What may be logged about a request: decided here, once, for every listener and every log call.

A request carries secrets in three places, and none of them may reach a log:

- the query string (``?access_token=...``, ``?api_key=...``): a logged target is its path only, cut to
  ``MAX_LOGGED_PATH`` characters, with anything unprintable escaped so a log line stays one line;
- header values (the API key, the admin token, cookies, upstream credentials): a log call may name a
  header, never quote its value;
- the text of an exception raised while reading a request: parsers quote the bytes they refused (aiohttp's
  "Invalid header value char" quotes the whole header line, an ``Authorization`` token included), so
  only the exception's class is logged (a shell may add where it was raised: the traceback's frames
  hold code, not data).

The decision log (``proxy.http.answers.Trace``) keeps the normalised path, which has no query.
"""

from __future__ import annotations

__all__ = ["MAX_LOGGED_PATH", "logged_error", "logged_path"]

MAX_LOGGED_PATH = 256


def logged_path(target: str) -> str:
    """The part of a raw request target that may be logged: the path, without query or fragment."""
    path = target.partition("?")[0].partition("#")[0][:MAX_LOGGED_PATH]
    if path.isascii() and path.isprintable():
        return path
    return path.encode("unicode_escape").decode("ascii")  # controls and non-ASCII as \\x01, \\u00e9


def logged_error(error: BaseException) -> str:
    """An exception as it may be logged about a request: its class, never its message or arguments."""
    return f"{type(error).__module__}.{type(error).__qualname__}"
