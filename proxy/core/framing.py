"""How a request body may be framed for the proxy to take it: the rules any data plane applies.

Pure core. The HTTP/1.1 parser decides the framing it can read (Content-Length versus chunked, and it
refuses what it cannot frame); these are the proxy's own rules on top, which the parser would let pass:

- ``Transfer-Encoding`` is either absent or exactly ``chunked`` (one header, one coding, in any case).
  The parser frames ``gzip, chunked`` or ``foo, chunked`` by its last coding and hands over the body
  still gzip-coded; the proxy drops ``Transfer-Encoding`` (it is hop-by-hop) and would send the upstream
  those bytes as if they were the body itself. Nothing upstream asked for them, and a coding the proxy
  does not apply is one it cannot vouch for: such a request is refused with 400 and its connection
  closed (what follows on it cannot be trusted to be framed as the parser thinks).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["transfer_coding_problem"]


def transfer_coding_problem(values: Sequence[str]) -> str | None:
    """Why a request's ``Transfer-Encoding`` header values are refused; None when they are not."""
    if not values:
        return None
    if len(values) == 1 and values[0].strip(" \t").lower() == "chunked":
        return None
    return "Transfer-Encoding other than exactly 'chunked'"
