"""A real redis-server for the Celery and RQ tests, on a Unix socket in a temporary directory.

A Unix socket instead of a TCP port: no port is picked ahead of time, so two test runs on one
machine never race for one. Debian's ``redis-server`` package provides the binary (``.ci/run``
installs it).

Thread safety: one server per test; start and stop from the test's thread.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def running_redis(directory: Path) -> Iterator[Path]:
    """Start redis-server listening only on ``directory/redis.sock``; yields the socket path."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run adds it)")
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--daemonize", "no",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the server logs this line once it accepts connections
            if "ready to accept connections" in line.lower():
                break
        else:
            raise RuntimeError(f"redis-server ended with {process.wait(timeout=10)}")
        yield socket_path
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
