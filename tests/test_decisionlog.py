"""Decision lines are buffered, yet reach stdout by themselves within the flush interval, and at close."""

from __future__ import annotations

import json
import logging
import os
import select

from proxy.decisionlog import BufferedLineHandler


def _record(n: int) -> logging.LogRecord:
    message = json.dumps({"n": n})
    return logging.LogRecord("signalgate.decision", logging.INFO, __file__, 1, message, None, None)


def _read_available(fd: int, timeout: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)  # waits for the data itself, no sleep
    return os.read(fd, 1 << 16) if ready else b""


def test_lines_are_buffered_then_flushed_by_the_timer() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out:
        handler = BufferedLineHandler(out, interval=1.0)  # the first flush is 1 s away
        try:
            for n in range(3):
                handler.handle(_record(n))
            assert _read_available(read_end, 0.0) == b""  # nothing written per line
            data = _read_available(read_end, 5.0)  # the flush thread delivers them
            assert [json.loads(line)["n"] for line in data.decode().splitlines()] == [0, 1, 2]
            handler.handle(_record(3))
        finally:
            handler.close()  # ...and close delivers what is left at once
        assert json.loads(_read_available(read_end, 0.0)) == {"n": 3}
    os.close(read_end)
