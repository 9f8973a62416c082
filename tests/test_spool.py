"""The decision spool: append and replay in order, its bound by kind, torn lines, and orphaned files
adopted exactly once (real files, real flock)."""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.db.decisions import COLUMNS
from proxy.db.spool import KEPT, SAMPLED, UNSAMPLED, Spool, kind_of

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def make_row(
    n: int, decision: str = "allow", sample_rate: float = 1.0, candidate: str | None = None
) -> tuple[Any, ...]:
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(
        request_id=f"req{n:06d}",
        at=T0 + timedelta(milliseconds=n),
        method="GET",
        path=f"/p/{n}",
        decision=decision,
        reason="allowed" if decision == "allow" else "network_denied",
        status=200 if decision == "allow" else 403,
        latency_ms=0.5,
        candidate=candidate,
        sample_rate=sample_rate,
        client_ip="127.0.0.1",
        owner="ünïcode team",
    )
    return tuple(values[c] for c in COLUMNS)


def ids(rows: list[tuple[Any, ...]]) -> list[str]:
    return [r[0] for r in rows]


def test_rows_come_back_in_order_and_equal(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "worker-0", 1 << 20)
    spool.open()
    rows = [make_row(n) for n in range(10)]
    assert spool.append(rows[:6]) == 6 and spool.append(rows[6:]) == 4
    assert spool.waiting
    first, offset = spool.read(4)
    assert first == rows[:4]  # datetimes and text round-trip exactly
    spool.advance(offset)
    rest, offset = spool.read(100)
    assert rest == rows[4:]
    spool.advance(offset)
    assert not spool.waiting and spool.size == 0 and os.path.getsize(spool.path or "") == 0  # emptied
    spool.close()


def test_the_bound_drops_sampled_allows_first_then_allows_and_keeps_refusals(tmp_path: Path) -> None:
    probe = Spool(tmp_path / "probe", "p", 1 << 20)
    probe.open()
    probe.append([make_row(100)])
    line = probe.size  # bytes of an allowed row's line (rows 100-999 all have this length)
    probe.append([make_row(100, decision="deny")])
    refusal = probe.size - line
    probe.close()
    spool = Spool(tmp_path, "worker-0", 10 * line)
    spool.open()
    assert kind_of(make_row(1, sample_rate=0.5)) == SAMPLED
    assert kind_of(make_row(1)) == UNSAMPLED
    assert kind_of(make_row(1, decision="deny")) == KEPT
    assert kind_of(make_row(1, candidate="would_deny")) == KEPT
    assert spool.append([make_row(n) for n in range(100, 105)]) == 5  # half full
    assert spool.append([make_row(200, sample_rate=0.5)]) == 0  # sampled: not past half
    assert spool.append([make_row(n) for n in range(105, 112)]) == 5  # allowed: up to the bound
    fits = (20 * line - spool.size) // refusal
    assert spool.append([make_row(n, decision="deny") for n in range(300, 300 + fits + 3)]) == fits
    assert spool.size <= 20 * line  # refusals: up to twice the bound
    assert spool.dropped == {SAMPLED: 1, UNSAMPLED: 2, KEPT: 3}
    spool.close()


def test_a_torn_last_line_is_cut_when_the_file_is_opened_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "worker-0", 1 << 20)
    spool.open()
    spool.append([make_row(n) for n in range(3)])
    path = spool.path
    spool.close()
    assert path is not None
    with path.open("ab") as handle:
        handle.write(b'["req999999","2026-')  # a crash in the middle of a write
    again = Spool(tmp_path, "worker-0", 1 << 20)
    again.open()
    rows, _ = again.read(10)
    assert ids(rows) == ["req000000", "req000001", "req000002"]
    again.close()


def test_an_orphan_is_adopted_once_and_a_live_file_is_left_alone(tmp_path: Path) -> None:
    live = Spool(tmp_path, "worker-1", 1 << 20)
    live.open()
    live.append([make_row(50)])
    dead = Spool(tmp_path, "worker-3", 1 << 20)  # a worker of a larger, earlier run
    dead.open()
    dead.append([make_row(n, decision="deny") for n in range(3)])
    dead.close()  # its process is gone: nobody holds the lock

    adopter = Spool(tmp_path, "worker-0", 1 << 20)
    adopter.open()
    rows, _ = adopter.read(10)
    assert ids(rows) == ["req000000", "req000001", "req000002"]  # the orphan's, not the live one's
    assert not (tmp_path / "worker-3.spool").exists()
    assert (tmp_path / "worker-1.spool").exists()

    second = Spool(tmp_path, "worker-0", 1 << 20)  # the same name while it is held: another file
    second.open()
    assert second.path == tmp_path / "worker-0-1.spool"
    assert second.read(10)[0] == []  # nothing adopted twice
    for spool in (second, adopter, live):
        spool.close()


def test_the_file_is_held_with_an_exclusive_lock(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "worker-0", 1 << 20)
    spool.open()
    fd = os.open(tmp_path / "worker-0.spool", os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        spool.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the file
    finally:
        os.close(fd)


def test_a_packed_client_address_is_spooled_as_text(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "worker-0", 1 << 20)
    spool.open()
    packed = list(make_row(1))
    packed[COLUMNS.index("client_ip")] = bytes([192, 0, 2, 7])  # as proxy.db.decisions.row makes it
    spool.append([tuple(packed)])
    (back,), _ = spool.read(1)
    assert back[COLUMNS.index("client_ip")] == "192.0.2.7"
    spool.close()
