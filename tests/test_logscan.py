"""The log scan itself (tests/logscan.py, wired in tests/conftest.py): it must find what it looks for."""

from __future__ import annotations

import io
import logging
import sys

from proxy.core import keys
from proxy.logs import configure_logging
from tests import logscan
from tests.harness import ADMIN_TOKEN


def test_every_key_a_test_generates_and_the_admin_token_are_looked_for(
    no_secret_in_logs: logscan.Scan,
) -> None:
    _, key, _ = keys.generate()
    secret = key.rsplit("_", 1)[1]
    assert {secret, ADMIN_TOKEN} <= no_secret_in_logs.secrets


def test_a_key_shape_a_remembered_secret_or_a_token_is_a_leak_and_is_masked_in_the_report() -> None:
    scan = logscan.Scan()
    _, key, _ = keys.generate()
    secret = key.rsplit("_", 1)[1]
    scan.secrets.add(secret)
    texts = [
        f"refused {key}",
        f"only the secret part {secret}",
        "a generated admin token sga_" + "A" * 43,
        "nothing here: key id 0123456789abcdef, sg_ alone, sg_short_abc",
    ]
    leaks = scan.leaks(texts)
    assert len(leaks) == 3
    assert all(secret not in leak for leak in leaks)
    assert leaks[0] == "refused <key or token>"


def test_records_are_read_with_their_tracebacks() -> None:
    try:
        raise ValueError("boom sga_" + "B" * 43)
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info())
    (text,) = logscan.formatted([record])
    assert logscan.Scan().leaks([text])


def test_process_output_is_read_for_its_log_lines_only(no_secret_in_logs: logscan.Scan) -> None:
    other = logscan.Scan()
    logscan.scanning(other)
    try:
        err, out = logscan.Stream("demo stderr"), logscan.Stream("demo stdout")
        for line in [
            "signalgate: demo key (valid until 2030-01-01 00:00 UTC):",  # printed for the user
            "  sg_printed_on_purpose",
            "2030-01-01 00:00:00,123 WARNING signalgate.feed[42]: change feed lost its connection",
            "2030-01-01 00:00:01,000 ERROR signalgate[42]: failed",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "ValueError: the exception line",
            "2030-01-01 00:00:02,000 INFO signalgate[42]: next record",
            "  curl -i -H 'X-API-Key: ...'",  # not a record, no traceback open: printed output
        ]:
            err.line(line)
        out.line('{"decision": "deny"}')
        out.line("signalgate: proxy on http://127.0.0.1:1")
    finally:
        logscan.scanning(no_secret_in_logs)
    assert other.outputs == [
        "demo stderr: 2030-01-01 00:00:00,123 WARNING signalgate.feed[42]: change feed lost its connection",
        "demo stderr: 2030-01-01 00:00:01,000 ERROR signalgate[42]: failed",
        "demo stderr: Traceback (most recent call last):",
        'demo stderr:   File "x.py", line 1, in <module>',
        "demo stderr: ValueError: the exception line",
        "demo stderr: 2030-01-01 00:00:02,000 INFO signalgate[42]: next record",
        'demo stdout: {"decision": "deny"}',
    ]


def test_the_record_format_read_is_the_one_the_processes_write(no_secret_in_logs: logscan.Scan) -> None:
    root, decisions = logging.getLogger(), logging.getLogger("signalgate.decision")
    saved = (root.handlers[:], root.level, decisions.handlers[:], decisions.propagate)
    err = io.StringIO()
    try:
        configure_logging("info", io.StringIO(), err)
        logging.getLogger("signalgate.probe").warning("a record")
    finally:
        for handler in [*root.handlers, *decisions.handlers]:
            if handler not in saved[0] and handler not in saved[2]:
                handler.close()
        root.handlers[:], decisions.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        decisions.propagate = saved[3]
    other = logscan.Scan()
    logscan.scanning(other)
    try:
        logscan.Stream("stderr").line(err.getvalue().rstrip("\n"))
    finally:
        logscan.scanning(no_secret_in_logs)
    assert len(other.outputs) == 1, err.getvalue()
