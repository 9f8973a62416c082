"""The log scan: no test may leave a key or an admin token in a log.

``tests/conftest.py`` runs every test with every logger at DEBUG and, when it ends, searches what was
logged for secrets:

- the log records captured in the test's setup, call and teardown (pytest's ``caplog``), messages and
  tracebacks;
- the logs of the signalgate processes the test ran, where the test reads their output
  (``tests.procs.Lines`` hands every line to a ``Stream``): the log records on stderr (in the format
  ``proxy.logs`` gives them) with the tracebacks they carry, and the decision lines on stdout. The
  rest of a command's output is what it prints for its user on purpose (the key ``demo`` creates,
  the token ``serve`` generates and says where it put), not a log.

What counts as a secret:

- anything shaped like a signalgate key (``sg_`` + 16 + 48 hex digits) or a generated admin token
  (``sga_`` + 43 URL-safe characters): the shapes exist so that scanners find them, whoever made them;
- every key secret the test generated (``proxy.core.keys.generate`` is wrapped), on its own, since a log
  could hold the secret part without the rest;
- every admin token the test configured or signalgate generated (``remember``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from proxy.core.keys import SECRET_HEX

__all__ = ["Scan", "Stream", "observe", "remember", "scanning"]

SHAPES = re.compile(r"sg_[0-9a-f]{16}_[0-9a-f]{48}|sga_[A-Za-z0-9_-]{43}")
_FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")


class Scan:
    """One test's secrets and the process output it saw."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.outputs: list[str] = []

    def leaks(self, texts: Iterable[str]) -> list[str]:
        """The texts holding a secret, the secrets masked (the report must not repeat them)."""
        # Key secrets (48 hex digits) are looked up in a set, window by window over the hex runs of
        # a text: a test may make 10,000 keys, and 10,000 substring searches per log record is slow.
        hex_secrets = {secret for secret in self.secrets if _HEX_SECRET.fullmatch(secret)}
        others = self.secrets - hex_secrets
        found = []
        for text in texts:
            if (
                SHAPES.search(text) is not None
                or any(secret in text for secret in others)
                or any(window in hex_secrets for window in _hex_windows(text))
            ):
                found.append(self._masked(text))
        return found

    def _masked(self, text: str) -> str:
        text = SHAPES.sub("<key or token>", text)
        for secret in self.secrets:
            text = text.replace(secret, "<secret>")
        return text


_HEX_SECRET = re.compile(f"[0-9a-f]{{{SECRET_HEX}}}")
_HEX_RUN = re.compile(f"[0-9a-f]{{{SECRET_HEX},}}")


def _hex_windows(text: str) -> Iterable[str]:
    for run in _HEX_RUN.findall(text):
        for start in range(len(run) - SECRET_HEX + 1):
            yield run[start : start + SECRET_HEX]


_current: Scan | None = None


def scanning(scan: Scan | None) -> None:
    """Make ``scan`` the one ``observe`` and ``remember`` feed (None: none)."""
    global _current
    _current = scan


def remember(secret: str) -> None:
    if _current is not None and secret:
        _current.secrets.add(secret)


def observe(stream: str, line: str) -> None:
    """A log line a signalgate process wrote on ``stream``."""
    if _current is not None:
        _current.outputs.append(f"{stream}: {line}")


# A log record as proxy.logs.configure_logging writes it on stderr: "<asctime> <LEVEL> <name>[<pid>]: "
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+\[\d+\]: ")


class Stream:
    """One output stream of one process, its log lines told from the rest (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._traceback = False  # inside the traceback a log record carries

    def line(self, text: str) -> None:
        if self.name.endswith("stdout"):
            logged = text.startswith("{")
        elif _RECORD.match(text):
            logged, self._traceback = True, False
        elif text.startswith("Traceback (most recent call last):"):
            logged = self._traceback = True
        else:
            logged = self._traceback  # up to the next record: frames, the exception, chained ones
        if logged:
            observe(self.name, text)


def formatted(records: Iterable[logging.LogRecord]) -> list[str]:
    """Each record as a handler would write it, traceback included."""
    out = []
    for record in records:
        try:
            out.append(_FORMAT.format(record))
        except Exception:  # a message whose arguments do not fit it: scan its parts
            out.append(f"{record.msg!r} {record.args!r}")
    return out
