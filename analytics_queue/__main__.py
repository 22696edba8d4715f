"""The command line: ``python -m analytics_queue spool PATH [--replay]``.

``spool PATH`` shows what a spool file holds (events, the oldest one's age, its size on disk);
``--replay`` sends them to PostHog, oldest first, and removes each batch PostHog acknowledges:
for what a stopped deployment left behind. The API key and host come from ``--api-key`` and
``--host`` or from ``POSTHOG_API_KEY`` and ``POSTHOG_HOST``. Leases are honoured, so replaying
while applications use the same file never sends an event twice.

Exit status: 0 when done (every row sent, or nothing to do); 1 when PostHog could not be reached
(what is left stays in the file); 2 for a bad argument or an unusable file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TextIO

from analytics_queue._delivery import DeliveryPolicy, Verdict
from analytics_queue._spool import Event, Spool, SpoolError
from analytics_queue.config import build_config
from analytics_queue.errors import ConfigurationError
from analytics_queue.transport import PostHogTransport, Transport

#: Events and bytes per claim while replaying (each row is sent as the request it was).
REPLAY_BATCH = 500
REPLAY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did: events sent, refused for good by PostHog, and left in the file."""

    sent: int
    rejected: int
    left: int
    error: str | None = None


def describe(spool: Spool, now: float | None = None) -> dict[str, object]:
    """Events, the oldest one's tracked time and age, and the bytes of a spool file."""
    stats = spool.stats()
    now = time.time() if now is None else now
    oldest = stats.oldest_tracked_at
    return {
        "path": str(spool.path),
        "events": stats.rows,
        "oldest_tracked_at": (
            None if oldest is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest))
        ),
        "oldest_age_s": None if oldest is None else round(max(0.0, now - oldest), 1),
        "bytes_used": stats.bytes,
        "file_bytes": stats.file_bytes,
    }


def replay(spool: Spool, transport: Transport, *, timeout: float = 10.0) -> ReplayResult:
    """Send every row nobody else holds, oldest first; stop at the first retryable failure.

    A 400/413 on several events splits them in halves, as the worker does; events PostHog
    refuses for good are removed and counted as ``rejected``.
    """
    sent = rejected = 0
    while True:
        rows = spool.claim(REPLAY_BATCH, REPLAY_BYTES)
        if not rows:
            return ReplayResult(sent, rejected, spool.stats().rows)
        for index, row in enumerate(rows):
            stack: list[list[Event]] = [row.events]
            done = 0  # events of this row that reached a final state
            while stack:
                part = stack.pop()
                result = transport.send([data for data, _ in part], timeout)
                verdict = DeliveryPolicy.judge(result, len(part))
                if verdict is Verdict.SPLIT:
                    middle = len(part) // 2
                    stack.extend((part[middle:], part[:middle]))
                    continue
                if verdict is Verdict.RETRY:
                    if done:  # keep only what is not final yet
                        spool.replace(row.id, [e for sub in (part, *stack) for e in sub])
                    else:
                        spool.release([row.id])
                    spool.release(r.id for r in rows[index + 1 :])
                    error = result.error or f"HTTP {result.status}"
                    return ReplayResult(sent, rejected, spool.stats().rows, error)
                done += len(part)
                if verdict is Verdict.DELIVERED:
                    sent += len(part)
                else:
                    rejected += len(part)
            spool.ack([row.id])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analytics_queue")
    commands = parser.add_subparsers(dest="command", required=True)
    spool = commands.add_parser("spool", help="show or replay a spool file")
    spool.add_argument("path", help="the spool file (spool_path)")
    spool.add_argument("--replay", action="store_true", help="send its events to PostHog")
    spool.add_argument("--json", action="store_true", help="print JSON instead of text")
    spool.add_argument("--api-key", help="the project API key (default: POSTHOG_API_KEY)")
    spool.add_argument("--host", help="PostHog's base URL (default: POSTHOG_HOST or US cloud)")
    spool.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    return parser


def _print(out: TextIO, data: dict[str, object], as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(data) + "\n")
        return
    for key, value in data.items():
        out.write(f"{key}: {'-' if value is None else value}\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    if not os.path.exists(args.path):
        sys.stderr.write(f"no spool file at {args.path}\n")
        return 2
    transport: Transport | None = None
    if args.replay:
        try:
            config = build_config(api_key=args.api_key, host=args.host)
        except ConfigurationError as exc:
            sys.stderr.write(f"{exc}\n")
            return 2
        if config.api_key is None:
            sys.stderr.write("--replay needs an API key: --api-key or POSTHOG_API_KEY\n")
            return 2
        transport = PostHogTransport(config.api_key, config.host, gzip=config.gzip)
    try:
        spool = Spool(args.path, max_bytes=2**62, lease=max(60.0, 4 * args.timeout))
        try:
            data = describe(spool)
            if transport is not None:
                result = replay(spool, transport, timeout=args.timeout)
                data = {**data, **{f"replay_{k}": v for k, v in asdict(result).items()}}
                _print(out, data, args.json)
                return 0 if result.error is None else 1
            _print(out, data, args.json)
            return 0
        finally:
            spool.close()
            if transport is not None:
                transport.close()
    except SpoolError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    sys.exit(main())
