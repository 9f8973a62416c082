"""proxy.core.framing: the Transfer-Encoding a request may carry."""

from __future__ import annotations

import pytest

from proxy.core.framing import transfer_coding_problem


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ((), False),
        (("chunked",), False),
        (("Chunked",), False),
        (("CHUNKED ",), False),
        (("gzip, chunked",), True),
        (("identity, chunked",), True),
        (("foo, chunked",), True),
        (("chunked, chunked",), True),
        (("chunked", "chunked"), True),
        (("gzip",), True),
        (("identity",), True),
        (("chunked;q=1",), True),
        (("",), True),
    ],
)
def test_only_exactly_chunked_is_taken(values: tuple[str, ...], refused: bool) -> None:
    assert (transfer_coding_problem(values) is not None) == refused
