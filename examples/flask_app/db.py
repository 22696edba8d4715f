"""SQLite storage of the generated stories (stdlib ``sqlite3``, one short connection per call)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from contextlib import closing
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS stories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    story TEXT NOT NULL,
    analytics_mode TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


def _connect(path: str) -> sqlite3.Connection:
    # Several gunicorn workers write to one file: wait for each other's locks.
    return sqlite3.connect(path, timeout=10.0)


def init_db(path: str) -> None:
    """Create the database file (and its folder) and the table, if missing."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with closing(_connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)


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
