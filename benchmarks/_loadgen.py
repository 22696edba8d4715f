"""A closed-loop HTTP load generator, run as a process of its own (the fallback when wrk is absent).

`concurrency` threads, each with one keep-alive connection, POST the same request back to back
for `duration` seconds and record every latency. Prints `RESULT {json}` with p50/p95/p99 in
milliseconds, requests/s and error counts — the same keys as the wrk script of `routes.py`.
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from benchmarks._common import emit, quantile


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--body", default="{}")
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()

    parts = urlsplit(args.url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": "application/json"}
    for item in args.header:
        name, value = item.split(":", 1)
        headers[name.strip()] = value.strip()
    body = args.body.encode()
    latencies: list[list[float]] = [[] for _ in range(args.concurrency)]
    errors = [0] * args.concurrency
    non2xx = [0] * args.concurrency
    start = time.perf_counter()
    end = start + args.duration

    def worker(i: int) -> None:
        conn: http.client.HTTPConnection | None = None
        mine = latencies[i]
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                mine.append(time.perf_counter() - t0)
                if not 200 <= resp.status < 300:
                    non2xx[i] += 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [x for xs in latencies for x in xs]
    result: dict[str, Any] = {
        "tool": "python",
        "requests": len(flat),
        "duration_s": elapsed,
        "rps": len(flat) / elapsed,
        "errors": sum(errors),
        "non2xx": sum(non2xx),
        "p50_ms": quantile(flat, 0.50) * 1e3,
        "p95_ms": quantile(flat, 0.95) * 1e3,
        "p99_ms": quantile(flat, 0.99) * 1e3,
        "max_ms": max(flat) * 1e3 if flat else float("nan"),
    }
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
