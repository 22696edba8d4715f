"""Run the capture server standalone: ``python -m analytics_queue.testing``.

Also installed as the ``analytics-queue-capture-server`` console script. It prints
``capture server listening on http://HOST:PORT`` as its first line, then (with ``--print``) one
line per request received, and a summary when SIGINT or SIGTERM stops it::

    $ python -m analytics_queue.testing --port 0 --print
    capture server listening on http://127.0.0.1:41817
    200 POST /batch/ events=3 accepted=3 body=412B json=412B names=signup,page_view*2

The server keeps no events in memory here (``record=False``), so it can run for long benchmarks;
it only counts. The main thread waits for a signal while the server threads do the work.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from ._records import CapturedRequest
from ._server import CaptureServer

__all__ = ["main"]

_MAX_NAMES = 8
_MAX_ERROR = 200


class _Stop(Exception):
    """Raised by the signal handler in the main thread to end the wait."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


class _Reporter:
    """The ``on_batch`` callback: counts every request and prints one line each with --print.

    Called from the server's connection threads at once, hence the lock.
    """

    def __init__(self, out: TextIO, verbose: bool) -> None:
        self._out = out
        self._verbose = verbose
        self._lock = threading.Lock()
        self.requests = 0
        self.accepted = 0
        self._uuids: set[str] = set()
        self.duplicates = 0

    def __call__(self, request: CapturedRequest) -> None:
        line = format_request(request) if self._verbose else None
        with self._lock:
            self.requests += 1
            self.accepted += request.accepted
            for raw in request.raw_events[: request.accepted]:
                uuid = raw.get("uuid")
                if isinstance(uuid, str):
                    key = uuid.lower()
                    if key in self._uuids:
                        self.duplicates += 1
                    else:
                        self._uuids.add(key)
            if line is not None:
                print(line, file=self._out, flush=True)


def format_request(request: CapturedRequest) -> str:
    """One line about `request`: status, method, path, counts, sizes, event names, error."""
    status = "---" if request.status is None else str(request.status)
    parts = [
        status,
        request.method,
        request.path,
        f"events={request.event_count}",
        f"accepted={request.accepted}",
        f"body={request.body_size}B",
        f"json={request.decompressed_size}B",
    ]
    if request.gzipped:
        parts.append("gzip")
    counts: dict[str, int] = {}
    for name in request.event_names:
        counts[name] = counts.get(name, 0) + 1
    if counts:
        names = [f"{n}*{c}" if c > 1 else n for n, c in list(counts.items())[:_MAX_NAMES]]
        if len(counts) > _MAX_NAMES:
            names.append("...")
        parts.append("names=" + ",".join(names))
    if request.status is None:
        parts.append("(no answer)")
    elif request.error:
        error = " ".join(request.error.split())
        parts.append(f"error={error[:_MAX_ERROR]!r}")
    return " ".join(parts)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analytics-queue-capture-server",
        description="A local PostHog-compatible capture server (POST /batch/, /e/, ...).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds to hold back every answer"
    )
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="probability (0..1) of answering 503 instead of ingesting",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_requests",
        help="print one line per request received",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; return the exit code (0, or 1 if it cannot
    listen). Must run in the main thread (it installs signal handlers)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    reporter = _Reporter(sys.stdout, verbose=args.print_requests)
    try:
        server = CaptureServer(
            args.host,
            args.port,
            delay=args.delay,
            fail_rate=args.fail_rate,
            on_batch=reporter,
            record=False,
        )
    except ValueError as exc:
        parser.error(str(exc))

    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as exc:
            print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"capture server listening on {server.url}", flush=True)
        forever = threading.Event()
        while True:
            forever.wait(3600)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    print(
        f"capture server stopped: {reporter.requests} requests, {reporter.accepted} events "
        f"accepted, {reporter.duplicates} duplicate uuids",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
