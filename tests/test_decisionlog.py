"""Decision lines are buffered, yet reach stdout by themselves within the flush interval, and at close;
what the recorder keeps for the lines and the log, and the line's fields."""

from __future__ import annotations

import json
import logging
import os
import select

from proxy.core.model import ALLOW, Decision, Reason
from proxy.core.record import Recorder
from proxy.core.tally import Tally
from proxy.core.trace import Trace
from proxy.logs import BufferedLineHandler, DecisionLines, decision_line, emit_line


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


# --- what the recorder keeps, and the line's fields -------------------------------------------------


class Collected:
    def __init__(self, on: bool = True) -> None:
        self.traces: list[Trace] = []
        self.on = on

    def enabled(self) -> bool:
        return self.on

    def write(self, trace: Trace) -> None:
        self.traces.append(trace)

    def add(self, trace: Trace) -> None:
        self.traces.append(trace)


def _trace(n: int, decision: Decision = ALLOW, candidate: Decision | None = None) -> Trace:
    trace = Trace(f"r{n}", "/p")
    trace.decision = decision
    trace.candidate = candidate
    return trace


def test_refusals_and_disagreements_are_never_sampled_and_allows_are() -> None:
    draws = iter([0.9, 0.1, 0.1, 0.9, 0.9, 0.1])  # the recorder's random numbers: (line, log) per allow
    lines, log = Collected(), Collected()
    recorder = Recorder(
        Tally(), lines=lines, line_sample=0.5, log=log, log_sample=0.5, rand=lambda: next(draws)
    )
    denied = Decision.deny(Reason.NETWORK_DENIED, "x")
    traces = [_trace(0), _trace(1), _trace(2, denied), _trace(3, ALLOW, denied), _trace(4)]
    for trace in traces:
        recorder.record(trace)
    # r0: line dropped (0.9), log kept (0.1); r1: line kept, log dropped; r4: like r0
    assert [t.request_id for t in lines.traces] == ["r1", "r2", "r3"]
    assert [t.request_id for t in log.traces] == ["r0", "r2", "r3", "r4"]
    assert [t.sample_rate for t in log.traces] == [0.5, 1.0, 1.0, 0.5]  # kept by sampling: stands for 2
    assert all(t.at is not None for t in traces)
    counted = recorder.tally.snapshot()
    assert counted["requests"] == {("allow", "allowed"): 4, ("deny", "network_denied"): 1}
    assert counted["candidates"] == {("would_deny", "network_denied"): 1}


def test_a_line_level_the_logger_does_not_pass_writes_nothing() -> None:
    lines = Collected(on=False)
    Recorder(Tally(), lines=lines).record(_trace(0))
    assert lines.traces == []


def test_the_decision_line_keeps_its_fields_and_adds_the_revision_and_the_candidate() -> None:
    trace = _trace(7, Decision.deny(Reason.ROUTE_DENIED, "no route"), ALLOW)
    trace.key_id, trace.owner, trace.policy_revision, trace.method, trace.status = (
        "k" * 16,
        "o",
        42,
        "GET",
        403,
    )
    line = json.loads(decision_line(trace))
    assert list(line)[:13] == [
        "time",
        "request_id",
        "key_id",
        "owner",
        "client_ip",
        "country",
        "method",
        "path",
        "decision",
        "reason",
        "detail",
        "status",
        "latency_ms",
    ]
    assert (line["policy_revision"], line["reason"], line["decision"]) == (42, "route_denied", "deny")
    assert (line["candidate"], line["candidate_reason"]) == ("would_allow", "allowed")
    assert "candidate" not in json.loads(decision_line(_trace(8)))  # only when they disagree


def test_decision_lines_go_out_at_their_level() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out:
        handler = BufferedLineHandler(out, interval=60.0)
        logger = _decision_logger("signalgate.test.level", handler)
        try:
            debug = DecisionLines(logger, logging.DEBUG)  # the logger passes INFO and up
            assert not debug.enabled()
            Recorder(Tally(), lines=debug).record(_trace(1))
            info = DecisionLines(logger, logging.INFO)
            assert info.enabled()
            Recorder(Tally(), lines=info).record(_trace(2))
        finally:
            handler.close()
        data = _read_available(read_end, 0.0)
    os.close(read_end)
    assert [json.loads(line)["request_id"] for line in data.decode().splitlines()] == ["r2"]
