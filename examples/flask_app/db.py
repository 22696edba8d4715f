"""SQLite storage shared by every worker process of the demo (stdlib ``sqlite3``).

Three tables: the generated ``stories``; the ``request_timings`` of each story request, so the
page can compare the modes over every request the app served; and ``worker_snapshots``, the
latest analytics health of each worker process, so the page can show the whole app. One short
connection per call: safe to call from any thread and any process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import statistics
from collections.abc import Iterable
from contextlib import closing
from typing import Any, Final

SCHEMA = """
CREATE TABLE IF NOT EXISTS stories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    story TEXT NOT NULL,
    analytics_mode TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS request_timings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    analytics_mode TEXT NOT NULL,
    generate_ms REAL NOT NULL,
    save_ms REAL NOT NULL,
    track_ms REAL NOT NULL,
    total_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS request_timings_mode ON request_timings (analytics_mode, id);
CREATE TABLE IF NOT EXISTS worker_snapshots (
    pid INTEGER PRIMARY KEY,
    updated_at REAL NOT NULL,
    health TEXT NOT NULL
);
"""

#: The timing fields of a story request, in milliseconds.
TIMING_FIELDS: Final = ("generate", "save", "track", "total")

#: How many recent requests per mode the medians are taken over.
SUMMARY_WINDOW: Final = 500


def _connect(path: str) -> sqlite3.Connection:
    # Several gunicorn workers write to one file: wait for each other's locks.
    return sqlite3.connect(path, timeout=10.0)


def init_db(path: str) -> None:
    """Create the database file (and its folder) and the table, if missing."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with closing(_connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)


def save_story(path: str, *, user_id: str, topic: str, story: str, analytics_mode: str) -> int:
    """Insert one story; returns its id."""
    created_at = dt.datetime.now(dt.timezone.utc).isoformat()
    with closing(_connect(path)) as conn, conn:
        cursor = conn.execute(
            "INSERT INTO stories (user_id, topic, story, analytics_mode, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (user_id, topic, story, analytics_mode, created_at),
        )
        story_id = cursor.lastrowid
    assert story_id is not None
    return story_id


def get_story(path: str, story_id: int) -> dict[str, Any] | None:
    """One story as a dict, or None."""
    with closing(_connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM stories WHERE id = ?", (story_id,)).fetchone()
    return dict(row) if row is not None else None


def save_timings(path: str, *, analytics_mode: str, timings_ms: dict[str, float]) -> None:
    """Record the timings of one story request (keys: :data:`TIMING_FIELDS`)."""
    with closing(_connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO request_timings"
            " (analytics_mode, generate_ms, save_ms, track_ms, total_ms) VALUES (?, ?, ?, ?, ?)",
            (analytics_mode, *(float(timings_ms[key]) for key in TIMING_FIELDS)),
        )


def timing_summary(path: str, modes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per mode: ``requests`` (all served) and the median of each timing field, in ms.

    The medians cover the last :data:`SUMMARY_WINDOW` requests of the mode; they are None for a
    mode that served no request yet.
    """
    summary: dict[str, dict[str, Any]] = {}
    with closing(_connect(path)) as conn:
        for mode in modes:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM request_timings WHERE analytics_mode = ?", (mode,)
            ).fetchone()
            rows = conn.execute(
                "SELECT generate_ms, save_ms, track_ms, total_ms FROM request_timings"
                " WHERE analytics_mode = ? ORDER BY id DESC LIMIT ?",
                (mode, SUMMARY_WINDOW),
            ).fetchall()
            medians = {
                key: round(statistics.median(row[i] for row in rows), 3) if rows else None
                for i, key in enumerate(TIMING_FIELDS)
            }
            summary[mode] = {"requests": count, **medians}
    return summary


def save_snapshot(path: str, *, pid: int, updated_at: float, health: dict[str, Any]) -> None:
    """Store (replace) the latest health of worker process ``pid``."""
    with closing(_connect(path)) as conn, conn:
        conn.execute(
            "INSERT OR REPLACE INTO worker_snapshots (pid, updated_at, health) VALUES (?, ?, ?)",
            (pid, updated_at, json.dumps(health)),
        )


def delete_snapshot(path: str, pid: int) -> None:
    """Forget worker process ``pid`` (it stopped)."""
    with closing(_connect(path)) as conn, conn:
        conn.execute("DELETE FROM worker_snapshots WHERE pid = ?", (pid,))


def fresh_snapshots(path: str, *, since: float) -> list[tuple[int, float, dict[str, Any]]]:
    """``(pid, updated_at, health)`` of every worker that reported at or after ``since``."""
    with closing(_connect(path)) as conn:
        rows = conn.execute(
            "SELECT pid, updated_at, health FROM worker_snapshots"
            " WHERE updated_at >= ? ORDER BY pid",
            (since,),
        ).fetchall()
    return [(pid, updated_at, json.loads(health)) for pid, updated_at, health in rows]
