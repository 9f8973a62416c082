"""How long the suite waits for something before calling it a hang, and why each bound has its value.

Every bound here detects a hang or a lost event; none is a speed claim (speed is measured in bench/).
A healthy run uses a small part of each; they are sized for the slowest machine the suite must pass on,
2 cores shared with other test runs, so a bound that trips means something never happened. Bounds one
module alone uses live in that module; a timeout that is itself what a test asserts stays in that test.
"""

from __future__ import annotations

__all__ = [
    "BUILD",
    "COMMAND",
    "DATABASE",
    "EMBEDDED",
    "LINE",
    "LOAD",
    "PROMPT",
    "RECONNECT",
    "STARTUP",
    "STOP",
]

# Something that follows at once on loopback: an answer, an event the upstream records, a JWKS fetch,
# a gate's change feed connecting; it takes milliseconds, 10 s only rides out a stalled scheduler.
PROMPT = 10.0

# A gate's change feed connected again after its PostgreSQL came back: the feed's reconnect backoff
# (at most 2 s) plus its catch-up, after a server restart or a relay that stops holding traffic.
RECONNECT = 15.0

# Something the session's local PostgreSQL does at once: deliver a notification, accept or end a change
# feed's session, answer a query, show a lock wait. Milliseconds; 5 s leaves room for a server busy with
# other tests' databases.
DATABASE = 5.0

# A log line a running serve prints after something the test did (a worker's feed connecting, a worker
# replaced, a reload): one supervisor round trip, or a worker process starting up.
LINE = 30.0

# ``signalgate serve`` (or the demo) until it prints its URLs: Python start-up and imports in a supervisor
# and 2 workers, migrations, or initdb for an embedded PostgreSQL, on a loaded 2-core machine.
STARTUP = 60.0

# A signalgate process exiting on SIGTERM or SIGINT: workers finish in-flight requests and close their
# database pools, the supervisor reaps them.
STOP = 30.0

# Keep-alive client loops on 2 workers: warming up (20 answers each) or running to their stop time,
# a second or two after the admin call under test.
LOAD = 30.0

# A signalgate command run to its end as a subprocess, starting no PostgreSQL: Python start-up and
# imports, then a refusal, or a migration against the session's server.
COMMAND = 60.0

# A command that initialises and starts an embedded PostgreSQL (initdb is the slow part), then its work.
EMBEDDED = 90.0

# pip building signalgate's wheel or installing one, or mypy over the package with a cold cache: seconds
# to a minute. Below pytest's 120 s per test (setup included), so the command's own timeout fires first
# and names the command.
BUILD = 100.0
