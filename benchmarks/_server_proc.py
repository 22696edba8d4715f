"""The project's CaptureServer in a process of its own, driven by one command per stdin line.

The server keeps no events (`record=False`): an `on_batch` callback counts the requests and the
events it accepted, so that 100,000-event runs cost it neither memory nor time. Prints
`READY <url>`, then answers each command with one JSON line:

    stats                 {"requests": n, "events": n, "statuses": {...}, "unique": n,
                          "duplicates": n} since the last reset (unique and duplicate uuids)
    reset                 counts start again from zero
    fail <status>         answer every capture request with <status> (an outage) until `clear`
    clear                 answer normally again
    wait <events> <timeout>   returns when `events` events arrived (or at the timeout), with stats
    quit                  stops the server and exits

Run by `benchmarks._common.ServerProcess`; never imported by the measured processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from analytics_queue.testing import CapturedRequest, CaptureServer


class Counter:
    """Counts requests and accepted events from `on_batch`; the server records nothing else."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.events = 0
        self.statuses: dict[str, int] = {}
        self.uuids: set[str] = set()
        self.duplicates = 0

    def __call__(self, request: CapturedRequest) -> None:
        with self.lock:
            self.requests += 1
            self.events += request.accepted
            key = str(request.status)
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if request.accepted:
                for raw in request.raw_events:
                    uuid = raw.get("uuid")
                    if isinstance(uuid, str):
                        if uuid in self.uuids:
                            self.duplicates += 1
                        self.uuids.add(uuid)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "events": self.events,
                "statuses": dict(self.statuses),
                "unique": len(self.uuids),
                "duplicates": self.duplicates,
            }

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.events = 0
            self.statuses = {}
            self.uuids = set()
            self.duplicates = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    counter = Counter()
    server = CaptureServer(port=0, delay=args.delay, on_batch=counter, record=False)
    server.start()

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    sys.stdout.write(f"READY {server.url}\n")
    sys.stdout.flush()
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            cmd = words[0]
            if cmd == "stats":
                reply(counter.snapshot())
            elif cmd == "reset":
                counter.reset()
                reply(counter.snapshot())
            elif cmd == "wait":
                want, timeout = int(words[1]), float(words[2])
                deadline = time.monotonic() + timeout
                while counter.snapshot()["events"] < want and time.monotonic() < deadline:
                    time.sleep(0.02)
                reply(counter.snapshot())
            elif cmd == "fail":
                server.fail_with(int(words[1]))
                reply(counter.snapshot())
            elif cmd == "clear":
                server.clear_faults()
                reply(counter.snapshot())
            elif cmd == "quit":
                break
            else:
                reply({"error": f"unknown command {cmd!r}"})
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
