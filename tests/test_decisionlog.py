"""Decision lines are buffered, yet reach stdout by themselves within the flush interval, and at close."""

from __future__ import annotations

import json
import logging
import os
import select

from proxy.logs import BufferedLineHandler, emit_line


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


def _decision_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_emit_line_writes_straight_into_the_buffer_and_keeps_every_line() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out:
        handler = BufferedLineHandler(out, interval=60.0)
        logger = _decision_logger("signalgate.test.emit", handler)
        try:
            for n in range(3):
                emit_line(logger, json.dumps({"n": n}))
            assert _read_available(read_end, 0.0) == b""  # buffered like any other line
        finally:
            handler.close()
        data = _read_available(read_end, 0.0)
    os.close(read_end)
    assert [json.loads(line)["n"] for line in data.decode().splitlines()] == [0, 1, 2]


def test_emit_line_respects_filters_and_other_handlers() -> None:
    # With anything more than the one buffered handler, lines go through logging as usual.
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out:
        handler = BufferedLineHandler(out, interval=60.0)
        logger = _decision_logger("signalgate.test.filtered", handler)
        logger.addFilter(lambda record: "secret" not in record.getMessage())
        try:
            emit_line(logger, '{"kept": true}')
            emit_line(logger, '{"secret": true}')
        finally:
            handler.close()
        data = _read_available(read_end, 0.0)
    os.close(read_end)
    assert data.decode().splitlines() == ['{"kept": true}']
