"""The worker's side of the spool: write-ahead, replay, hand-over, and what to do when disk fails.

:class:`SpoolKeeper` speaks the pump's language (:class:`~analytics_queue._ledger.Pending`) and
owns every decision about the file:

- it opens the :class:`~analytics_queue._spool.Spool` lazily, on the worker's first use, so
  ``track()`` and the constructor never touch the disk;
- a corrupt file is moved aside (``<name>.broken-<time>-<pid>``) and a fresh one opened;
- a full disk stops new writes only: what the file holds is still replayed and removed, new
  events stay in memory, and writing is tried again after :data:`RETRY_AFTER` seconds;
- a read-only path or any other failure turns it *off*: every method then returns what it was
  given untouched, the pump goes on in memory only, and the file is tried again after
  :data:`RETRY_AFTER` seconds;
- :meth:`SpoolKeeper.figures` says what happened;
- a busy file (another process held the write lock too long) is skipped this time only.

Thread safety: every method that touches the file holds the keeper's I/O lock (in practice
only the pump calls them, under its send lock); :meth:`SpoolKeeper.figures` reads a snapshot
under a separate lock and never touches the file. Safe to share between threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from analytics_queue._guard import reading
from analytics_queue._ledger import REPLAYED, Pending
from analytics_queue._spool import Spool, SpoolError, SpoolStats, move_aside

logger = logging.getLogger(__name__)

#: After a failure other than ``busy``, the file is tried again this many seconds later.
RETRY_AFTER: Final = 30.0
#: The figures (rows, bytes, oldest) are read from the file at most this often, seconds.
STATS_INTERVAL: Final = 1.0
#: Acknowledged rows wait for the next write at most this many: then they are deleted at once.
ACK_AT_MOST: Final = 64
#: Events handed over without a row are written in rows of at most this many events and bytes
#: (what one request carries), so that a row always fits in one send.
ROW_EVENTS: Final = 500
ROW_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolFigures:
    """The spool as the metrics show it.

    Attributes:
        path: the spool file.
        max_bytes: its bound.
        active: True while the file is in use (False: memory only, see ``problem``).
        rows: events waiting in the file (of every process sharing it).
        bytes: bytes the file uses for them.
        oldest_tracked_at: when the oldest waiting event was tracked (wall time), or None.
        dropped: rows deleted by this process, by reason (``spool_full``: the size bound).
        problem: what went wrong with the file last, or None.
        moved_to: where a corrupt file was moved, or None.
    """

    path: str
    active: bool
    max_bytes: int
    rows: int = 0
    bytes: int = 0
    oldest_tracked_at: float | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    problem: str | None = None
    moved_to: str | None = None


class SpoolKeeper:
    """Writes, replays and hands over events to one spool file for the pump.

    Args:
        path: the spool file (its directory must exist).
        max_bytes: the file's bound; the oldest rows go past it.
        lease: seconds a claimed batch is held before other processes may take it.
        clock: wall-clock seconds.
        monotonic: the clock of the retry and refresh intervals.
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int,
        lease: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._lease = lease
        self._clock = clock
        self._monotonic = monotonic
        self._store: Spool | None = None
        self._retry_at = 0.0  # monotonic: when a failed file is tried again
        self._write_at = 0.0  # monotonic: when writing is tried again after a full disk
        self._stats_at = -STATS_INTERVAL
        self._claimable = True
        self._acked: list[int] = []  # delivered rows not yet deleted: see ack()
        # The rows this process holds: how many events each has, and how many are not final.
        self._size: dict[int, int] = {}
        self._held: dict[int, int] = {}
        self._io = threading.RLock()  # one thread at a time on the file
        self._lock = threading.Lock()  # guards the figures below
        self._stats = SpoolStats(0, 0, None, 0)
        self._dropped: Counter[str] = Counter()
        self._problem: str | None = None
        self._moved_to: str | None = None

    # -- the file ---------------------------------------------------------------------------

    def _open(self) -> Spool | None:
        if self._store is not None:
            return self._store
        if self._monotonic() < self._retry_at:
            return None
        try:
            self._store = self._open_or_move_aside()
        except SpoolError as exc:
            self._failed(exc)
            return None
        self._stats_at = -STATS_INTERVAL
        self._claimable = True
        if not self._write_at:
            self._recovered()
        return self._store

    def _recovered(self) -> None:
        with self._lock:
            if self._problem is not None:
                logger.info("analytics spool %s is in use again", self.path)
            self._problem = None

    def _open_or_move_aside(self) -> Spool:
        try:
            return Spool(self.path, max_bytes=self._max_bytes, lease=self._lease)
        except SpoolError as exc:
            if exc.kind != "corrupt":
                raise
            try:
                moved = move_aside(self.path)
            except OSError as move_error:
                raise SpoolError("corrupt", f"{exc}; cannot move it aside: {move_error}") from None
            logger.error("analytics spool %s was corrupt (%s); moved to %s", self.path, exc, moved)
            with self._lock:
                self._moved_to = str(moved)
            return Spool(self.path, max_bytes=self._max_bytes, lease=self._lease)

    def _failed(self, exc: SpoolError) -> None:
        if exc.kind == "busy":
            logger.debug("analytics spool busy: %s", exc)
            return
        if exc.kind == "full":  # reading and removing still work: only writing waits
            self._write_at = self._monotonic() + RETRY_AFTER
            if self._store is not None:
                try:  # a WAL that cannot grow would block the removals as well
                    self._store.checkpoint()
                except SpoolError:
                    pass
        elif self._store is not None:
            self._store.close()
            self._store = None
        self._retry_at = self._monotonic() + RETRY_AFTER
        problem = f"spool {exc.kind}: {exc}"
        with self._lock:
            first = self._problem is None
            self._problem = problem
        logger.log(
            logging.ERROR if first else logging.DEBUG,
            "analytics spool %s unusable (%s); events are kept in memory only",
            self.path,
            problem,
        )
        if exc.kind == "corrupt":  # found mid-run: the next open moves it aside
            self._retry_at = 0.0

    def close(self) -> None:
        """Delete the acknowledged rows, then close the file (the other rows stay in it)."""
        with self._io:
            self.settle()
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- what the pump calls ----------------------------------------------------------------

    def write_ahead(self, pendings: list[Pending]) -> list[Pending]:
        """Write the events not yet in the file as one row, leased to this process, before
        their send.

        Returns the events with their row id; unchanged when the file cannot be written.
        """
        with self._io:
            new = [p for p in pendings if p.row is None]
            if not new:
                return pendings
            ids = self._add([new], lease=True, remove=self._acked)
            if ids is None:
                return pendings
            row = ids[0]
            self._held[row] = self._size[row] = len(new)
            if len(new) == len(pendings):  # the usual case: every event is new
                return [Pending(p[0], p[1], p[2], row) for p in pendings]
            return [p if p.row is not None else p._replace(row=row) for p in pendings]

    def keep(self, pendings: Sequence[Pending]) -> list[Pending]:
        """Hand ``pendings`` over to the file for later (they leave memory).

        Rows this process holds are released (anyone may send them), rewritten first with
        only the events given when some of theirs already reached a final state; events not
        in the file are written as new rows. Returns the events the file could not take: they
        stay the caller's.
        """
        with self._io:
            if not pendings or self._open() is None:
                return list(pendings)
            by_row: dict[int, list[Pending]] = {}
            new: list[Pending] = []
            for p in pendings:
                if p.row is None:
                    new.append(p)
                else:
                    by_row.setdefault(p.row, []).append(p)
            whole = [row for row, group in by_row.items() if len(group) == self._size.get(row)]
            parts = {row: group for row, group in by_row.items() if row not in whole}
            if whole and not self._run(lambda store: store.release(whole)):
                return list(pendings)
            rewrites = [(row, [(p[1], p[2]) for p in group]) for row, group in parts.items()]

            def rewrite(store: Spool) -> None:
                for row, events in rewrites:
                    store.replace(row, events)

            if rewrites and not self._run(rewrite):
                return [p for p in pendings if p.row is None or p.row in parts]
            for row in by_row:
                self._held.pop(row, None)
                self._size.pop(row, None)
            if new and self._add(_chunks(new), lease=False) is None:
                return new
            self._claimable = True
            return []

    def claim(self, max_events: int, max_bytes: int | None = None) -> list[Pending]:
        """Take the oldest rows nobody holds (whole rows, within ``max_events`` events and
        ``max_bytes`` bytes when more than one), leased to this process."""
        with self._io:
            store = self._open()
            if store is None or not self._claimable:
                return []
            try:
                rows = store.claim(max_events, max_bytes)
            except SpoolError as exc:
                self._failed(exc)
                return []
            taken: list[Pending] = []
            for row in rows:
                self._held[row.id] = self._size[row.id] = len(row.events)
                taken += [Pending(REPLAYED, data, at, row.id) for data, at in row.events]
            if not rows:
                self._claimable = False  # until the next refresh or hand-over
            return taken

    def ack(self, pendings: Sequence[Pending]) -> None:
        """The events reached a final state: a row whose events all did is removed.

        The rows are deleted in the transaction of the next write-ahead, or by :meth:`settle`,
        which the pump calls before it rests with nothing to send: one commit per batch instead
        of two. A process killed in between sends those rows again after its restart.
        """
        with self._io:
            for p in pendings:
                row = p.row
                if row is None or row not in self._held:
                    continue
                self._held[row] -= 1
                if self._held[row] <= 0:
                    del self._held[row], self._size[row]
                    self._acked.append(row)
            if len(self._acked) >= ACK_AT_MOST:
                self.settle()

    def settle(self) -> None:
        """Delete the acknowledged rows now (the pump is about to wait, or to end)."""
        with self._io:
            if not self._acked:
                return
            rows, self._acked = self._acked, []
            if self._run(lambda store: store.ack(rows)) and self._stats.rows:
                self.refresh(force=True)  # the figures said rows wait: say when they are gone

    def renew(self, pendings: Sequence[Pending]) -> None:
        """Extend this process's lease on the rows of ``pendings`` (a long send ahead)."""
        with self._io:
            rows = [p.row for p in pendings if p.row is not None]
            if rows:
                self._run(lambda store: store.renew(rows))

    def waiting(self) -> int:
        """Rows this process could replay now (0 when none or the file is off)."""
        with self._io:
            if self._open() is None:
                return 0
            self.refresh()
            return self._stats.rows if self._claimable else 0

    def refresh(self, *, force: bool = False) -> None:
        """Read the figures from the file (at most every :data:`STATS_INTERVAL` seconds)."""
        with self._io:
            store = self._store
            now = self._monotonic()
            if store is None or (not force and now - self._stats_at < STATS_INTERVAL):
                return
            self._stats_at = now
            try:
                stats = store.stats()
                self._claimable = self._claimable or store.claimable()
            except SpoolError as exc:
                self._failed(exc)
                return
            if stats.rows == 0:
                self._claimable = False
            with self._lock:
                self._stats = stats

    def figures(self) -> SpoolFigures:
        """The latest figures; safe to call from any thread (never touches the file)."""
        with reading(self._lock):
            stats = self._stats
            return SpoolFigures(
                path=str(self.path),
                active=self._problem is None,
                max_bytes=self._max_bytes,
                rows=stats.rows,
                bytes=stats.bytes,
                oldest_tracked_at=stats.oldest_tracked_at,
                dropped=dict(self._dropped),
                problem=self._problem,
                moved_to=self._moved_to,
            )

    # -- helpers ----------------------------------------------------------------------------

    def _add(
        self, batches: list[list[Pending]], *, lease: bool, remove: list[int] | None = None
    ) -> list[int] | None:
        store = self._open()
        if store is None or self._monotonic() < self._write_at:
            return None
        rows = [[(p[1], p[2]) for p in batch] for batch in batches]
        try:
            ids, dropped = store.add(rows, lease=lease, remove=remove or ())
        except SpoolError as exc:
            self._failed(exc)
            return None
        if remove:
            remove.clear()
        if self._write_at:
            self._write_at = 0.0
            self._recovered()
        if dropped:
            with self._lock:
                self._dropped["spool_full"] += dropped
            logger.warning(
                "analytics spool over %d bytes: the %d oldest event(s) were dropped",
                self._max_bytes,
                dropped,
            )
        return ids

    def _run(self, action: Callable[[Spool], None]) -> bool:
        store = self._open()
        if store is None:
            return False
        try:
            action(store)
        except SpoolError as exc:
            self._failed(exc)
            return False
        return True


def _chunks(pendings: list[Pending]) -> list[list[Pending]]:
    """Cut events into rows of at most :data:`ROW_EVENTS` events and :data:`ROW_BYTES` bytes."""
    rows: list[list[Pending]] = [[]]
    size = 0
    for p in pendings:
        if rows[-1] and (len(rows[-1]) >= ROW_EVENTS or size + len(p[1]) > ROW_BYTES):
            rows.append([])
            size = 0
        rows[-1].append(p)
        size += len(p[1]) + 1
    return rows
