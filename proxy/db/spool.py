"""The local spool of decision rows: where a worker's decisions wait while PostgreSQL is down or slow.

One append-only file per worker in ``data_dir/spool``, JSON lines (one row, a JSON array in
``proxy.db.decisions.COLUMNS`` order, per line), replayed in order from a read offset and truncated
once all of it is in PostgreSQL. Plain blocking file IO: the writer calls it in a thread.

- Ownership: a worker holds an exclusive ``flock`` on its file for as long as it lives. The kernel
  drops the lock when the process dies, however it dies, so a file nobody holds is an orphan (its
  worker was killed, or the instance now runs fewer workers): the next worker to start adopts it,
  copying its rows into its own file ahead of everything new, then empties and removes it.
- Durability: every batch is written with one ``write`` and then ``fsync``ed, in the writer's thread,
  so the event loop never waits for the disk. A killed process loses nothing it wrote (the data is in
  the kernel's page cache); a machine crash loses at most the batch being written, whose torn last
  line is cut off when the file is next opened.
- The bound, ``max_bytes``: past half of it, rows of sampled allowed decisions are dropped; past all of
  it, every allowed decision's; refusals (and decisions a candidate policy disagrees with) are written
  up to twice it. Every drop is counted by kind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.db.decisions import AT, CLIENT_IP, COLUMNS

__all__ = ["KEPT", "SAMPLED", "UNSAMPLED", "Spool", "kind_of"]

log = logging.getLogger("signalgate.spool")

SUFFIX = ".spool"
READ_CHUNK = 1 << 20
# Row kinds, most expendable first.
SAMPLED = "sampled"  # an allowed decision kept by sampling (it stands for several)
UNSAMPLED = "allowed"  # an allowed decision, every one recorded
KEPT = "refused"  # a refusal, or a decision the candidate policy disagrees with
_DECISION = COLUMNS.index("decision")
_CANDIDATE = COLUMNS.index("candidate")
_SAMPLE_RATE = COLUMNS.index("sample_rate")


def kind_of(row: Sequence[Any]) -> str:
    if row[_DECISION] != "allow" or row[_CANDIDATE] in ("would_allow", "would_deny"):
        return KEPT
    return SAMPLED if row[_SAMPLE_RATE] < 1.0 else UNSAMPLED


def _encode(row: Sequence[Any]) -> bytes:
    values = list(row)
    values[AT] = values[AT].isoformat()
    if isinstance(values[CLIENT_IP], bytes):  # packed, as rows carry it
        values[CLIENT_IP] = str(ipaddress.ip_address(values[CLIENT_IP]))
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _decode(line: bytes) -> tuple[Any, ...]:
    values = json.loads(line)
    if not isinstance(values, list) or len(values) != len(COLUMNS):
        raise ValueError(f"expected a list of {len(COLUMNS)} values")
    values[AT] = datetime.fromisoformat(values[AT])
    return tuple(values)


class Spool:
    """One worker's spool file. Not thread-safe: one writer task uses it, one call at a time."""

    def __init__(self, directory: Path, name: str, max_bytes: int) -> None:
        self.directory = directory
        self.name = name
        self.max_bytes = max_bytes
        self.path: Path | None = None
        self.size = 0  # bytes in the file
        self.offset = 0  # bytes of it already in PostgreSQL
        self.dropped: dict[str, int] = {}
        self.corrupt = 0  # lines that could not be read back (counted, logged, skipped)
        self._fd = -1

    @property
    def waiting(self) -> bool:
        """Rows are waiting in the file to be replayed."""
        return self.offset < self.size

    def open(self) -> None:
        """Claim a file (``<name>.spool``, else ``<name>-1.spool``...), then adopt the orphans."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            path = self.directory / (f"{self.name}{SUFFIX}" if n == 0 else f"{self.name}-{n}{SUFFIX}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._fd, self.path = fd, path
            break
        else:
            raise OSError(errno.EBUSY, f"no free spool file for {self.name} in {self.directory}")
        self.size = self._cut_torn_tail(self._fd, path)
        self.offset = 0
        for other in sorted(self.directory.glob(f"*{SUFFIX}")):
            if other != path:
                self._adopt(other)

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def _cut_torn_tail(self, fd: int, path: Path) -> int:
        """The file's size once a last line without its newline (a crash mid-write) is cut off."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        start = max(0, size - READ_CHUNK)
        tail = os.pread(fd, size - start, start)
        if tail.endswith(b"\n"):
            return size
        keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        log.warning("spool %s: cutting a torn last line (%d bytes)", path, size - keep)
        os.ftruncate(fd, keep)
        return keep

    def _adopt(self, other: Path) -> None:
        try:
            fd = os.open(other, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # adopted by someone else meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live worker's
            size = self._cut_torn_tail(fd, other)
            copied = 0
            while copied < size:
                chunk = os.pread(fd, min(READ_CHUNK, size - copied), copied)
                if not chunk:
                    break
                self._write_all(chunk)
                copied += len(chunk)
            os.fsync(self._fd)
            self.size += copied
            # Emptied before removal: a process that opened it before the unlink finds nothing to read.
            os.ftruncate(fd, 0)
            other.unlink(missing_ok=True)
            if copied:
                log.info("spool %s: adopted %d bytes from %s", self.path, copied, other)
        finally:
            os.close(fd)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def append(self, rows: Sequence[Sequence[Any]]) -> int:
        """Write ``rows`` within the bound (see the module docstring); the number written."""
        lines: list[bytes] = []
        size = self.size
        half, full = self.max_bytes // 2, self.max_bytes
        for r in rows:
            line = _encode(r)
            kind = kind_of(r)
            limit = half if kind == SAMPLED else full if kind == UNSAMPLED else 2 * full
            if size + len(line) > limit:
                self.dropped[kind] = self.dropped.get(kind, 0) + 1
                continue
            lines.append(line)
            size += len(line)
        if lines:
            data = b"".join(lines)
            self._write_all(data)
            os.fsync(self._fd)
            self.size += len(data)
        return len(lines)

    def read(self, max_rows: int) -> tuple[list[tuple[Any, ...]], int]:
        """Up to ``max_rows`` rows from the read offset, and the offset after them (``advance`` to it
        once they are in PostgreSQL)."""
        rows: list[tuple[Any, ...]] = []
        position = self.offset
        while len(rows) < max_rows and position < self.size:
            chunk = os.pread(self._fd, min(READ_CHUNK, self.size - position), position)
            end = chunk.rfind(b"\n") + 1
            if end == 0:  # a line longer than a chunk: read it whole
                end = len(chunk)
                chunk = os.pread(self._fd, self.size - position, position)
                end = chunk.find(b"\n") + 1 or len(chunk)
            taken = 0
            for line in chunk[:end].splitlines(keepends=True):
                if len(rows) >= max_rows:
                    break
                taken += len(line)
                try:
                    rows.append(_decode(line))
                except (ValueError, TypeError) as exc:
                    self.corrupt += 1
                    log.error(
                        "spool %s: skipping an unreadable line at %d: %s", self.path, position + taken, exc
                    )
            position += taken
        return rows, position

    def advance(self, offset: int) -> None:
        """Rows up to ``offset`` are in PostgreSQL; an all-replayed file is emptied."""
        self.offset = offset
        if self.offset >= self.size:
            os.ftruncate(self._fd, 0)
            self.size = self.offset = 0

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            if self._fd >= 0:
                os.close(self._fd)
