"""The one hook the request handler calls per answered request: ``Recorder.record(trace)``.

It counts the request for the metrics (``proxy.core.tally``), writes its decision line (``LineSink``:
``proxy.logs.DecisionLines``) and queues it for the decision log in PostgreSQL (``LogSink``:
``proxy.db.recorder.DecisionWriter``), each sink optional. No IO and no encoding for the database
here: a sink's ``add`` only appends the trace to a list.

Sampling: refusals, and decisions the candidate policy disagrees with, are always kept. Allowed
decisions are kept with the probability set for each sink; a trace kept by sampling carries its
``sample_rate`` so the log can stand it for 1 / rate decisions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from proxy.core.tally import Tally
from proxy.core.trace import Trace

__all__ = ["LineSink", "LogSink", "Recorder"]


class LineSink(Protocol):
    def enabled(self) -> bool: ...

    def write(self, trace: Trace, /) -> None: ...


class LogSink(Protocol):
    def add(self, trace: Trace, /) -> None: ...


class Recorder:
    __slots__ = ("_clock", "_line_sample", "_lines", "_log", "_log_sample", "_random", "facts", "tally")

    def __init__(
        self,
        tally: Tally | None = None,
        *,
        lines: LineSink | None = None,
        line_sample: float = 1.0,
        log: LogSink | None = None,
        log_sample: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.tally = tally if tally is not None else Tally()
        self._lines = lines
        self._line_sample = line_sample
        self._log = log
        self._log_sample = log_sample
        self._clock = clock
        self._random = rand
        # whether anything records a request's facts (its country) beyond what its policy needs
        self.facts = lines is not None or log is not None

    def record(self, trace: Trace) -> None:
        if trace.quiet:  # not a decision: a health probe
            return
        if trace.at is None:
            trace.at = self._clock()
        self.tally.count(trace)
        kept = not trace.decision.allowed or trace.disagrees
        lines = self._lines
        if (
            lines is not None
            and (kept or self._line_sample >= 1.0 or self._random() < self._line_sample)
            and lines.enabled()
        ):
            lines.write(trace)
        log = self._log
        if log is not None:
            if kept or self._log_sample >= 1.0:
                log.add(trace)
            elif self._random() < self._log_sample:
                trace.sample_rate = self._log_sample
                log.add(trace)
