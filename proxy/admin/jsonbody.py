"""The admin API's JSON bodies: bytes in, a Python value out, or ``BodyInvalid`` saying what is wrong.

Pure core (stdlib only). Stricter than ``json.loads``: UTF-8 only, no ``NaN``/``Infinity``, and a name
given twice in one object is refused (the last would silently win: a second ``policy`` could replace a
strict one with ``{}``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

__all__ = ["BodyInvalid", "charset_problem", "parse_body"]

_UTF8 = frozenset({"utf-8", "utf8"})


class BodyInvalid(ValueError):
    """The body is not one JSON value under these rules; the message says why."""


def charset_problem(charset: str | None) -> str | None:
    """Why a body's declared ``charset`` is refused: JSON is UTF-8 (RFC 8259), and decoding, say,
    latin-1 as UTF-8 would read another text than the one the client meant."""
    if charset is None or charset.lower() in _UTF8:
        return None
    return f"charset {charset.lower()!r} is not supported: JSON bodies are UTF-8"


def parse_body(raw: bytes) -> object:
    if not raw:
        raise BodyInvalid("request body is empty; expected a JSON object")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique)
    except UnicodeDecodeError as exc:
        raise BodyInvalid("request body is not UTF-8") from exc
    except ValueError as exc:
        raise BodyInvalid(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BodyInvalid("request body is nested too deeply") from exc


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object; a name given twice is refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts = Counter(name for name, _ in pairs)
        twice = next(name for name, _ in pairs if counts[name] > 1)
        raise ValueError(f"name {twice!r} appears twice in one object")
    return obj
