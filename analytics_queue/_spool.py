"""The spool store: a SQLite file where serialized events wait until PostHog acknowledges them.

One table of rows, oldest first by ``id`` (AUTOINCREMENT: an id is never reused, so a stale id
can never name another row). A row is one *batch*: its events' JSON bytes exactly as sent (each
with its uuid and timestamp inside, one per line: compact JSON holds no raw newline), their
tracked times (packed doubles), their count, and a *lease*: the owner (``host:pid``) and the wall
time until which no one else may take it. One row per batch keeps the spool's cost per request,
not per event. Leases make one file safe to share between processes (gunicorn workers):
:meth:`Spool.claim` takes the oldest unleased rows in one write transaction, so two processes
never hold the same row; a row whose lease expired, or whose owner is a process of this host
that no longer exists, can be claimed by anyone.

The file is opened in WAL mode with ``synchronous=NORMAL``: a committed row survives the process
being killed (``kill -9``, the OOM killer); a power cut may lose the last commits. The store is
bounded by ``max_bytes`` of used pages: past it, the oldest unleased rows are deleted and their
events counted.

Every SQLite failure surfaces as :class:`SpoolError` with a ``kind`` the caller acts on.

Thread safety: not thread-safe; one thread at a time uses a :class:`Spool` (the worker holds its
send lock). Several processes may open the same path at once.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import sqlite3
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, Literal, NamedTuple

#: How long SQLite waits for another process's write lock before giving up, milliseconds.
BUSY_TIMEOUT_MS: Final = 2000
#: The default lease on claimed rows, seconds (the worker passes its own, above its timeout).
DEFAULT_LEASE: Final = 60.0

# SQLite's primary result codes (https://sqlite.org/rescode.html) ...
_PERM, _BUSY, _LOCKED, _READONLY, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 11, 13, 14, 26
# ... and SQLITE_IOERR_WRITE: a write refused by the file system (a file size limit, a quota).
_IOERR_WRITE = 778

SpoolErrorKind = Literal["busy", "full", "read_only", "corrupt", "unavailable"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    events BLOB NOT NULL,
    tracked BLOB NOT NULL,
    count INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0
)
"""

#: One event as the spool keeps it: its JSON bytes and the wall time it was tracked.
Event = tuple[bytes, float]


class SpoolError(Exception):
    """A spool operation failed; ``kind`` says how.

    ``busy``: another process held the file too long (try again later); ``full``: the disk,
    a quota or the file size limit refused a write; ``read_only``: the path cannot be written;
    ``corrupt``: the file is not a usable SQLite database (move it aside); ``unavailable``:
    anything else.
    """

    def __init__(self, kind: SpoolErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: SpoolErrorKind = kind


class Row(NamedTuple):
    """One spooled batch: its row id and its events, oldest first."""

    id: int
    events: list[Event]


def _pack(events: Sequence[Event]) -> tuple[bytes, bytes, int]:
    return (
        b"\n".join(data for data, _ in events),
        array("d", [tracked_at for _, tracked_at in events]).tobytes(),
        len(events),
    )


def _unpack(data: bytes, tracked: bytes) -> list[Event]:
    times = array("d")
    times.frombytes(tracked)
    return list(zip(data.split(b"\n"), times, strict=True))


class SpoolStats(NamedTuple):
    """What the file holds: events, used bytes, the oldest one's tracked_at, the file's size."""

    rows: int
    bytes: int
    oldest_tracked_at: float | None
    file_bytes: int


def _classify(exc: BaseException) -> SpoolErrorKind:
    if isinstance(exc, PermissionError):
        return "read_only"
    if isinstance(exc, OSError):
        return "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "unavailable"
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary in (_BUSY, _LOCKED) or "locked" in text:
        return "busy"
    if primary == _FULL or code == _IOERR_WRITE or "disk is full" in text:
        return "full"
    if primary in (_READONLY, _PERM, _CANTOPEN):
        return "read_only"
    if primary in (_CORRUPT, _NOTADB) or "malformed" in text:
        return "corrupt"
    if "not a database" in text:
        return "corrupt"
    return "unavailable"


def _error(exc: BaseException, doing: str) -> SpoolError:
    kind = _classify(exc)
    return SpoolError(kind, f"spool {doing}: {type(exc).__name__}: {exc}")


def this_owner() -> str:
    """The lease owner name of this process: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_exists(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host (it may be another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, it is not ours
        return True
    return True


class Spool:
    """The SQLite store of spooled batches of events, with leases and a size bound.

    Args:
        path: the database file; its directory must exist. Created when missing.
        max_bytes: past this many used bytes, the oldest unleased rows are deleted.
        lease: seconds a claim holds its rows before others may take them.
        owner: this holder's lease name (default ``host:pid``).
        clock: wall-clock seconds, for leases.
        alive: whether a pid of this host still runs (rows of a dead owner are free at once).

    Raises:
        SpoolError: the file cannot be opened or is not a spool database.

    Not thread-safe: one thread at a time (see the module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        lease: float = DEFAULT_LEASE,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        alive: Callable[[int], bool] = process_exists,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.lease = lease
        self.owner = owner or this_owner()
        self._host = self.owner.rpartition(":")[0]
        self._clock = clock
        self._alive = alive
        # The used size is read (two pragmas) once this many bytes were added since the last
        # read, not on every write: the bound is exceeded by at most about 1/64 of itself.
        self._check_every = max_bytes // 64
        self._unchecked = self._check_every
        try:
            self._db = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc, "open") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError("read_only", f"spool open: cannot switch to WAL (mode {mode})")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute("SELECT id FROM batches LIMIT 1").fetchall()  # reads a page
            self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        except SpoolError:
            self._db.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            self._db.close()
            raise _error(exc, "open") from None

    def close(self) -> None:
        """Close the connection (committed rows stay in the file)."""
        try:
            self._db.close()
        except sqlite3.Error:
            pass

    # -- writes -----------------------------------------------------------------------------

    def add(
        self, batches: Sequence[Sequence[Event]], *, lease: bool, remove: Sequence[int] = ()
    ) -> tuple[list[int], int]:
        """Append each of ``batches`` as one row, leased to this holder when ``lease`` is True.

        ``remove``: rows to delete in the same transaction (acknowledged ones: one commit
        instead of two). Returns the new row ids (in order) and how many events of the oldest
        rows the size bound deleted to make room.
        """
        batches = [batch for batch in batches if batch]
        if not batches:
            self.ack(remove)
            return [], 0
        now = self._clock()
        owner, until = (self.owner, now + self.lease) if lease else ("", 0.0)
        packed = [(*_pack(batch), owner, until) for batch in batches]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._delete(remove)
                sql = (
                    "INSERT INTO batches (events, tracked, count, owner, lease_until) "
                    "VALUES (?,?,?,?,?)"
                )
                if len(packed) == 1:  # the write-ahead of one request: no id query needed
                    first = int(self._db.execute(sql, packed[0]).lastrowid or 0)
                else:
                    first = self._next_id()
                    self._db.executemany(sql, packed)
                self._unchecked += sum(len(row[0]) for row in packed)
                dropped = 0
                if self._unchecked >= self._check_every:
                    dropped, self._unchecked = self._trim(now), 0
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc, "write") from None
        return list(range(first, first + len(batches))), dropped

    def _next_id(self) -> int:
        # Inside the write transaction nobody else inserts: AUTOINCREMENT hands out the next
        # ids in order, one above the largest ever used.
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
        return (int(row[0]) if row else 0) + 1

    def _trim(self, now: float) -> int:
        used = self._used_bytes()
        dropped = 0
        for _ in range(8):
            if used <= self.max_bytes:
                break
            rows = int(self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])
            if rows == 0:
                break
            per_row = max(1.0, used / rows)
            count = max(1, math.ceil((used - self.max_bytes) / per_row))
            victims = self._db.execute(
                "SELECT id, count FROM batches WHERE lease_until < ? OR owner = ? "
                "ORDER BY id LIMIT ?",
                (now, self.owner, count),
            ).fetchall()
            if not victims:
                break
            self._delete([int(row_id) for row_id, _ in victims])
            dropped += sum(int(n) for _, n in victims)
            used = self._used_bytes()
        return dropped

    def claim(self, max_events: int, max_bytes: int | None = None) -> list[Row]:
        """Lease and return the oldest rows nobody else holds: at least one whole row, then as
        many as fit in ``max_events`` events and ``max_bytes`` bytes."""
        now = self._clock()
        rows: list[Row] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._free_dead_owners(now)
                cursor = self._db.execute(
                    "SELECT id, events, tracked, count FROM batches WHERE lease_until < ? "
                    "ORDER BY id",
                    (now,),
                )
                events = size = 0
                for row_id, data, tracked, count in cursor:
                    events += int(count)
                    size += len(data)
                    if rows and (events > max_events or (max_bytes and size > max_bytes)):
                        break
                    rows.append(Row(int(row_id), _unpack(bytes(data), bytes(tracked))))
                cursor.close()
                if rows:  # the rows taken are exactly the free ones in [first, last]
                    self._db.execute(
                        "UPDATE batches SET owner = ?, lease_until = ? "
                        "WHERE id BETWEEN ? AND ? AND lease_until < ?",
                        (self.owner, now + self.lease, rows[0].id, rows[-1].id, now),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc, "claim") from None
        return rows

    def _free_dead_owners(self, now: float) -> None:
        holders = self._db.execute(
            "SELECT DISTINCT owner FROM batches WHERE lease_until >= ? AND owner != ?",
            (now, self.owner),
        ).fetchall()
        for (holder,) in holders:
            host, _, pid = str(holder).rpartition(":")
            if host == self._host and pid.isdigit() and not self._alive(int(pid)):
                self._db.execute(
                    "UPDATE batches SET owner = '', lease_until = 0 WHERE owner = ?", (holder,)
                )

    def ack(self, ids: Iterable[int]) -> None:
        """Delete rows that reached a final state (delivered, or refused for good)."""
        self._write("DELETE FROM batches WHERE id BETWEEN ? AND ?", _ranges(ids), "delete")

    def _delete(self, ids: Sequence[int]) -> None:
        if ids:
            self._db.executemany("DELETE FROM batches WHERE id BETWEEN ? AND ?", _ranges(ids))

    def release(self, ids: Iterable[int]) -> None:
        """End this holder's lease on rows: anyone may claim them again."""
        params = [(*span, self.owner) for span in _ranges(ids)]
        sql = (
            "UPDATE batches SET owner = '', lease_until = 0 WHERE id BETWEEN ? AND ? AND owner = ?"
        )
        self._write(sql, params, "release")

    def replace(self, row_id: int, events: Sequence[Event]) -> None:
        """Rewrite a row this holder leased with ``events`` (those of it not final yet) and
        release it."""
        data, tracked, count = _pack(events)
        sql = (
            "UPDATE batches SET events = ?, tracked = ?, count = ?, owner = '', lease_until = 0 "
            "WHERE id = ? AND owner = ?"
        )
        self._write(sql, [(data, tracked, count, row_id, self.owner)], "replace")

    def renew(self, ids: Iterable[int]) -> None:
        """Extend this holder's lease on rows by another full lease from now."""
        until = self._clock() + self.lease
        params = [(until, *span, self.owner) for span in _ranges(ids)]
        sql = "UPDATE batches SET lease_until = ? WHERE id BETWEEN ? AND ? AND owner = ?"
        self._write(sql, params, "renew")

    def _write(self, sql: str, params: Sequence[tuple[object, ...]], doing: str) -> None:
        if not params:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc, doing) from None

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it: frees disk after a write was refused."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc, "checkpoint") from None

    # -- reads ------------------------------------------------------------------------------

    def _used_bytes(self) -> int:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def stats(self) -> SpoolStats:
        """Events, used bytes, the oldest event's tracked_at and the file's size (WAL included)."""
        try:
            events = int(self._db.execute("SELECT TOTAL(count) FROM batches").fetchone()[0])
            oldest = self._db.execute("SELECT tracked FROM batches ORDER BY id LIMIT 1").fetchone()
            used = self._used_bytes()
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc, "read") from None
        oldest_at = None
        if oldest is not None:
            times = array("d")
            times.frombytes(bytes(oldest[0]))
            oldest_at = min(times, default=None)
        return SpoolStats(events, used, oldest_at, file_size(self.path))

    def claimable(self) -> bool:
        """True when a claim may find rows: some row is free, or held by another holder (who
        may have died: :meth:`claim` frees the rows of a dead process of this host)."""
        try:
            row = self._db.execute(
                "SELECT 1 FROM batches WHERE lease_until < ? OR owner != ? LIMIT 1",
                (self._clock(), self.owner),
            ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc, "read") from None
        return row is not None


def _ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Row ids as (first, last) runs of consecutive ids: one statement per run, not per row."""
    spans: list[tuple[int, int]] = []
    for i in sorted(ids):
        if spans and i <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(i, spans[-1][1]))
        else:
            spans.append((i, i))
    return spans


def file_size(path: Path) -> int:
    """The bytes of the database file and its WAL on disk (0 for what does not exist)."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return total


def move_aside(path: Path, clock: Callable[[], float] = time.time) -> Path:
    """Rename a broken spool file (and its -wal and -shm) to ``<name>.broken-<time>``.

    Returns the new path of the main file.

    Raises:
        OSError: the rename failed (a read-only directory).
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
    target = path.with_name(f"{path.name}.broken-{stamp}-{os.getpid()}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        try:
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
        except FileNotFoundError:
            pass
    return target
