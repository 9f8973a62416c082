"""The log scan itself (tests/logscan.py, wired in tests/conftest.py): it must find what it looks for."""

from __future__ import annotations

import logging
import sys

from proxy.core import keys
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


def test_process_output_is_observed_stderr_whole_stdout_by_its_decision_lines(
    no_secret_in_logs: logscan.Scan,
) -> None:
    other = logscan.Scan()
    logscan.scanning(other)
    try:
        logscan.observe("stderr", "a log line")
        logscan.observe("stdout", '{"decision": "deny"}')
        logscan.observe("stdout", "signalgate: demo key printed for the user")
    finally:
        logscan.scanning(no_secret_in_logs)
    assert other.outputs == ["stderr: a log line", 'stdout: {"decision": "deny"}']
