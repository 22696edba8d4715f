"""The whole app's analytics, across worker processes: each publishes, the page reads the sum.

Under gunicorn every worker process has its own queue, and a request for ``/analytics/health``
reaches whichever worker is free. So each process runs a :class:`SnapshotPublisher`: a daemon
thread that writes the process's health (with its metrics) to the shared SQLite database every
:data:`PUBLISH_INTERVAL` seconds. :func:`whole_app` reads the fresh snapshots and sums them.
A process that stopped reporting for :data:`STALE_AFTER` seconds (it exited) is left out.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

from examples.flask_app import db

logger = logging.getLogger(__name__)

#: Seconds between two snapshots of one process.
PUBLISH_INTERVAL: Final = 1.0
#: Seconds without a snapshot after which a process counts as gone.
STALE_AFTER: Final = 5.0

_SEVERITY: Final = {"healthy": 0, "degraded": 1, "critical": 2}
_SUMMED: Final = ("queue_size", "queued", "delivered", "failed", "refused", "batches_sent")


class SnapshotPublisher:
    """Writes this process's analytics health to the database, every second, from a thread.

    :meth:`arm` once, where the app is built: the thread then starts in each process forked
    from this one (gunicorn ``--preload`` workers) and, through :meth:`ensure_started`, in a
    process that serves requests itself. Safe to share between threads.

    Args:
        path: the SQLite database file.
        health: returns the current health as a JSON-ready dict (``Health.to_dict()``).
        interval: seconds between snapshots.
    """

    def __init__(
        self, path: str, health: Callable[[], dict[str, Any]], interval: float = PUBLISH_INTERVAL
    ) -> None:
        self._path = path
        self._health = health
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def arm(self) -> None:
        """Start the thread in every child this process forks (until :meth:`stop`)."""
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            publisher = ref()
            if publisher is not None:
                publisher._after_fork()

        os.register_at_fork(after_in_child=after_fork_in_child)

    def _after_fork(self) -> None:
        # The parent's thread and lock state do not exist in the child: start afresh.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if not self._closed:
            self.ensure_started()

    def ensure_started(self) -> None:
        """Start the thread in this process if it is not running (cheap when it is)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._closed or (self._thread is not None and self._pid == os.getpid()):
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="story-demo-snapshots", daemon=True
            )
            self._thread.start()

    def publish(self) -> None:
        """Write this process's snapshot now."""
        db.save_snapshot(self._path, pid=os.getpid(), updated_at=time.time(), health=self._health())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish()
            except Exception:
                logger.exception("could not publish the analytics snapshot")
            self._stop.wait(self._interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (here and in future children) and remove this process's snapshot."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)
            try:
                db.delete_snapshot(self._path, os.getpid())
            except Exception:
                logger.exception("could not remove the analytics snapshot")


def whole_app(path: str, now: float | None = None) -> dict[str, Any]:
    """The fresh snapshots of every worker process, and their sum.

    Returns:
        ``{"workers": [...], "total": {...}}``: one entry per process (``pid``, ``status``,
        ``mode``, the summed figures and ``age_s``), sorted by pid; ``total`` has the sums, the
        worst ``status``, the reasons prefixed with their pid, and ``avg_delivery_ms``
        weighted by the events each process delivered.
    """
    now = time.time() if now is None else now
    snapshots = db.fresh_snapshots(path, since=now - STALE_AFTER)
    workers = [
        {
            "pid": pid,
            "status": health["status"],
            "mode": health["mode"],
            "reasons": [reason["message"] for reason in health["reasons"]],
            **{key: int(health["metrics"][key]) for key in _SUMMED},
            "avg_delivery_ms": float(health["metrics"]["avg_delivery_ms"]),
            "age_s": round(max(0.0, now - updated_at), 3),
        }
        for pid, updated_at, health in snapshots
    ]
    return {"workers": workers, "total": _sum(workers)}


def _sum(workers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {key: sum(w[key] for w in workers) for key in _SUMMED}
    delivered = total["delivered"]
    total["avg_delivery_ms"] = (
        sum(w["avg_delivery_ms"] * w["delivered"] for w in workers) / delivered
        if delivered
        else 0.0
    )
    total["status"] = max(
        (w["status"] for w in workers), key=lambda s: _SEVERITY.get(s, 2), default="unknown"
    )
    total["modes"] = sorted({w["mode"] for w in workers})
    total["reasons"] = [f"pid {w['pid']}: {reason}" for w in workers for reason in w["reasons"]]
    return total
