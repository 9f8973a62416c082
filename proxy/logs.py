"""Where decision lines go: one JSON line per request on stdout, written without a flush per line.

A flush per line is a write system call per request, which the bench showed to be most of what the
decision log costs. Building a LogRecord per line (caller lookup, time, thread and process names) was
the next largest part, so ``emit_line`` hands a finished line straight to the buffer when this handler
is all the decision logger has, and goes through ``logger.info`` otherwise (tests capturing records,
an operator's own handlers). Lines are buffered instead and flushed by a small thread every ``FLUSH_INTERVAL``
seconds and at exit (``logging.shutdown``), so a line reaches stdout at most that late.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any, TextIO

import orjson

from proxy.core.trace import Trace, rfc3339

__all__ = [
    "FLUSH_INTERVAL",
    "BufferedLineHandler",
    "DecisionLines",
    "configure_logging",
    "decision_line",
    "emit_line",
]

FLUSH_INTERVAL = 0.5  # seconds a decision line may wait in the buffer
BUFFER_BYTES = 1 << 16


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that leaves flushing to a timer thread."""

    def __init__(self, out: TextIO, interval: float = FLUSH_INTERVAL) -> None:
        try:
            stream: TextIO = open(  # noqa: SIM115 - lives as long as the handler; closed in close()
                out.fileno(), "w", buffering=BUFFER_BYTES, encoding="utf-8", closefd=False
            )
        except (AttributeError, OSError, io.UnsupportedOperation):
            stream = out  # not a real file (tests): write to it as it is
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, args=(interval,), daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """``emit`` for a line that is already finished: no LogRecord, no formatter."""
        try:
            with self.lock:  # type: ignore[union-attr]  # the flush thread takes it too
                self.stream.write(line + "\n")
        except Exception:
            self.handleError(logging.makeLogRecord({"name": "signalgate.decision", "msg": line}))

    def _flush_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


def emit_line(logger: logging.Logger, line: str, level: int = logging.INFO) -> None:
    """Log ``line`` at ``level`` on ``logger``, the caller having checked that the level is enabled."""
    handlers = logger.handlers
    if len(handlers) == 1 and not logger.propagate and not logger.filters:
        handler = handlers[0]
        if type(handler) is BufferedLineHandler and not handler.filters and handler.level <= level:
            handler.write_line(line)
            return
    logger.log(level, line)


def configure_logging(level: str, out: TextIO, err: TextIO) -> None:
    """Decision lines (JSON) on stdout; everything else on stderr."""
    root = logging.getLogger()
    root.handlers.clear()
    other = logging.StreamHandler(err)
    other.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    other.addFilter(lambda record: record.name != "signalgate.decision")
    root.addHandler(other)
    root.setLevel(level.upper())
    decisions = logging.getLogger("signalgate.decision")
    for handler in decisions.handlers:
        handler.close()
    decisions.handlers.clear()
    decisions.addHandler(BufferedLineHandler(out))
    decisions.propagate = False


class DecisionLines:
    """Decision lines as the recorder (``proxy.core.record``) writes them: one JSON line per request,
    at ``level`` (the ``decision_line_level`` setting)."""

    __slots__ = ("_level", "_logger")

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self._logger = logger or logging.getLogger("signalgate.decision")
        self._level = level

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(self._level)

    def write(self, trace: Trace) -> None:
        emit_line(self._logger, decision_line(trace), self._level)


def decision_line(trace: Trace) -> str:
    """The JSON line of one decision (orjson: about a third of what ``json.dumps`` costs here)."""
    decision = trace.decision
    client = trace.client
    fields: dict[str, Any] = {
        "time": rfc3339(trace.arrived),
        "request_id": trace.request_id,
        "key_id": trace.key_id,
        "owner": trace.owner,
        "client_ip": str(client) if client is not None else None,
        "country": trace.country,
        "method": trace.method,
        "path": trace.path,
        "decision": "allow" if decision.allowed else "deny",
        "reason": decision.reason,
        "detail": decision.detail or None,
        "status": trace.status,
        "latency_ms": round(trace.seconds * 1000, 3),
        "policy_revision": trace.policy_revision,
        **trace.attested,
    }
    candidate = trace.candidate
    if candidate is not None and candidate.allowed is not decision.allowed:
        fields["candidate"] = trace.candidate_outcome
        fields["candidate_reason"] = candidate.reason
        fields["candidate_detail"] = candidate.detail or None
    return orjson.dumps(fields).decode()
