"""AnalyticsQueue: the public client. ``track()`` checks, captures and queues; nothing more.

The hot path of an accepted event is: a few type checks, one loop over the properties that
copies them, 128 random bits from a per-process ``random.Random`` (``uuid.uuid4()`` reads
``os.urandom``, which releases the GIL and so puts the caller at the back of the line behind any
busy thread), ``time.time()``, and ``put_nowait`` of a small tuple. Serialization, enrichment and
the UUID's formatting happen on the worker.

Safe to share between threads: one instance per process serves every request thread.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from analytics_queue import _lifecycle
from analytics_queue._buffer import BufferBytesFull, BufferClosed, EventBuffer
from analytics_queue._guard import deferred, guarded, inside, run_deferred, run_outside
from analytics_queue._uwsgi import in_master, uwsgi_problems
from analytics_queue._worker import Worker
from analytics_queue.builders import (
    alias_event,
    common,
    group_event,
    person_event,
    person_options,
    resolve_track,
    track_options,
)
from analytics_queue.config import OPTIONS_BY_NAME, Config, build_config
from analytics_queue.context import current_scope
from analytics_queue.errors import (
    QueueFullError,
    RefusedError,
    ShutdownError,
    UnserializableError,
)
from analytics_queue.event import (
    MAX_DISTINCT_ID_LENGTH,
    MAX_EVENT_NAME_LENGTH,
    EventEncoder,
    EventOptions,
    QueuedEvent,
    capture_sized,
    check_event_name,
    check_timestamp,
    check_uuid,
    shown,
)
from analytics_queue.metrics import (
    LOCAL_MODE,
    Counters,
    Health,
    Metrics,
    Reason,
    evaluate_health,
)
from analytics_queue.retry import RetryPolicy
from analytics_queue.sending import ForkAware, LocalTransport, Transport

if TYPE_CHECKING:
    from analytics_queue._spool_keeper import SpoolKeeper as _SpoolKeeper

logger = logging.getLogger(__name__)

#: At most one "queue full" warning per this many seconds.
QUEUE_FULL_WARNING_INTERVAL: Final = 60.0
#: Added to an event's size estimate for what every event carries (uuid, stamps, enrichment).
EVENT_OVERHEAD_BYTES: Final = 200
LOCAL_MODE_REASON: Final = "no API key: events are logged, not sent"
#: In uWSGI's master, track() sends on the caller at once, for at most this many seconds.
UWSGI_MASTER_SEND_TIMEOUT: Final = 2.0
#: The shortest lease a process holds on a spooled batch it sends, seconds.
SPOOL_MIN_LEASE: Final = 60.0

_UNSET: Final[Any] = object()
_new_tuple: Final[Any] = tuple.__new__


class AnalyticsQueue:
    """Queues analytics events and sends them to PostHog from one background thread.

    Every option not passed is read from the environment (``POSTHOG_API_KEY``,
    ``POSTHOG_HOST``, ``ANALYTICS_QUEUE_<OPTION>``), else it takes the default below.

    Args:
        api_key: the PostHog project API key. None (and none in the environment): local
            fallback mode, where events are logged to ``analytics_queue.local``, not sent.
        host: PostHog's base URL (default ``https://us.i.posthog.com``).
        batch_size: send as soon as this many events wait (10).
        flush_interval: seconds; a waiting event is sent at most this long after track() (5.0).
        max_queue_size: past this many waiting events track() refuses (10,000).
        max_queue_bytes: past about this many bytes of waiting events (their size estimated
            at track()) it refuses too (32 MiB; None: no byte bound).
        requeue_limit: after a retryable failure, the first N events of the batch go again and
            the rest fail with reason ``retry_limit`` (5; None: all of them go again).
        shutdown_timeout: the exit budget, seconds (5.0).
        timeout: seconds for one HTTP attempt (10.0).
        gzip: compress request bodies (True).
        app_version: added to every event's properties as ``app_version``.
        environment: added to every event's properties as ``environment``.
        strict: refusals raise from track() instead of returning False (False).
        disabled: track() is a no-op that returns False (False).
        disable_geoip: send ``$geoip_disable: true`` so that PostHog does not locate users by
            the server's address (True, as posthog-python); each call can say otherwise.
        super_properties: properties merged over every event's own, as posthog-python merges
            them (they win over the call's properties).
        historical_migration: mark batches as a historical import (False).
        before_send: ``callable(event: dict) -> dict | None``, run on the worker thread before
            an event is serialized: return it (changed or not), or None to drop it.
        request_context: the Flask and Django integrations open a context per request (True).
        request_context_ip: ... and add the client's address as ``$ip`` (False: personal data).
        health_window: seconds of delivery history that health() judges (300.0).
        spool_path: a SQLite file where events wait on disk through outages, restarts and
            crashes (None: memory only). Only the worker thread touches it.
        spool_max_bytes: past this many bytes in the spool its oldest events are dropped
            (256 MiB).
        transport: a sender to use instead of PostHog's or the local one (tests, custom sinks).
        retry_policy: the backoff between failed attempts.

    Raises:
        ConfigurationError: an explicit option is bad (a ``ValueError``).

    Safe to share between threads.
    """

    def __init__(
        self,
        api_key: str | None = None,
        host: str | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        max_queue_size: int | None = None,
        requeue_limit: int | None = _UNSET,
        shutdown_timeout: float | None = None,
        timeout: float | None = None,
        gzip: bool | None = None,
        app_version: str | None = None,
        environment: str | None = None,
        strict: bool | None = None,
        disabled: bool | None = None,
        health_window: float | None = None,
        *,
        max_queue_bytes: int | None = _UNSET,
        disable_geoip: bool | None = None,
        super_properties: Mapping[str, Any] | None = None,
        historical_migration: bool | None = None,
        before_send: Callable[[dict[str, Any]], Any] | None = None,
        request_context: bool | None = None,
        request_context_ip: bool | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
        transport: Transport | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        # Every parameter named like an option is one; _UNSET marks those where None is a value.
        given = locals()
        options = {name: given[name] for name in OPTIONS_BY_NAME if given[name] is not _UNSET}
        with guarded():  # a handler that tracks our own warnings must not loop back here
            self._config = build_config(**options)
            self._problems = uwsgi_problems()
        self._transport: Transport = transport or self._default_transport(self._config)
        self._retry_policy = retry_policy
        self._encoder = self._make_encoder(self._config)
        self._lock = threading.Lock()
        self._closed = False
        self._last_full_warning = 0.0
        self._reset_process_state()
        _lifecycle.register(self)

    @staticmethod
    def _default_transport(config: Config) -> Transport:
        if config.api_key is None:
            return LocalTransport()
        # Imported here: urllib3 and TLS cost tens of milliseconds at import, and an instance
        # without an API key (tests, local development) never needs them.
        from analytics_queue.transport import PostHogTransport

        return PostHogTransport(
            config.api_key,
            config.host,
            gzip=config.gzip,
            historical_migration=config.historical_migration,
        )

    @staticmethod
    def _make_encoder(config: Config) -> EventEncoder:
        return EventEncoder(
            config.app_version,
            config.environment,
            disable_geoip=config.disable_geoip,
            super_properties=config.super_properties,
            before_send=config.before_send,
        )

    def _reset_process_state(self) -> None:
        """Everything that belongs to one process: buffer, worker, counters, random source."""
        config = self._config
        self._ready = False
        self._rng = random.Random()
        self._random_bits = self._rng.getrandbits
        self._buffer = EventBuffer(
            config.max_queue_size, max_bytes=config.max_queue_bytes, wake_at=config.batch_size
        )
        self._counters = Counters(health_window=config.health_window)
        self._reentrant_refusals = 0
        # uWSGI's master loads the app, then forks at the C level and never runs exit
        # handlers: a thread of ours there could hold the GIL at a fork (the worker then
        # hangs) and would drain nothing at exit. So no thread: track() sends at once.
        self._uwsgi_master = in_master()
        self._worker = Worker(
            self._buffer,
            self._transport,
            self._encoder,
            self._counters,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
            requeue_limit=config.requeue_limit,
            timeout=config.timeout,
            shutdown_timeout=config.shutdown_timeout,
            retry_policy=self._retry_policy,
            spool=self._make_spool(config),
        )
        # Last: a thread that sees this pid sees the new buffer and worker. track() takes its
        # fast path only while _ready is True: a started worker in this process, not shut
        # down, not disabled.
        self._pid = os.getpid()

    @staticmethod
    def _make_spool(config: Config) -> _SpoolKeeper | None:
        """The spool of this process (opened by the worker on first use), or None."""
        if config.spool_path is None:
            return None
        lease = max(SPOOL_MIN_LEASE, 4 * config.timeout)  # well above one attempt
        from analytics_queue._spool_keeper import SpoolKeeper  # SQLite: only with a spool

        return SpoolKeeper(config.spool_path, max_bytes=config.spool_max_bytes, lease=lease)

    @property
    def pid(self) -> int:
        """The process whose buffer and worker this instance holds now."""
        return self._pid

    # -- configuration ----------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The options in force (the API key is not in its repr)."""
        return self._config

    # -- the hot path -----------------------------------------------------------------------

    def track(
        self,
        event: str,
        *,
        distinct_id: str | int | Any = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        groups: Mapping[str, Any] | None = None,
        disable_geoip: bool | None = None,
    ) -> bool:
        """Queue one event; returns True when queued, False when refused (and counted).

        Never blocks and, unless ``strict=True``, never raises.

        Args:
            event: the event name, a non-empty str.
            distinct_id: the user's id: a non-empty str (an int or a UUID is stringified).
                None (or ""): the current context's (``identify_context``), else the event
                is personless, as in posthog-python: a random id and
                ``$process_person_profile: false``.
            properties: a mapping with str keys; copied now, so later changes do not reach it.
                The current context's tags go under them; ``$set``/``$set_once`` in them
                update the person, as PostHog reads them.
            timestamp: when it happened (a datetime, naive meaning UTC, or an ISO-8601 str);
                default now.
            uuid: the event's id (a UUID or its str); default a new random version-4 UUID.
            groups: group type to group key (``{"company": "acme"}``), sent as ``$groups``.
            disable_geoip: this event's ``$geoip_disable``; None: the instance's option.

        Raises:
            RefusedError: only with ``strict=True``; a ``TypeError`` or ``ValueError`` for a bad
                event (naming the event and the property path), a ``RuntimeError`` for a full
                or shut down queue.
        """
        if not self._ready or inside.active or self._pid != os.getpid():
            refusal = self._prepare()
            if refusal is not None:
                return self._refuse(refusal)
        try:
            # The fast path: a short ASCII str needs no further check (isascii() is O(1)).
            if (
                type(event) is not str
                or not 0 < len(event) <= MAX_EVENT_NAME_LENGTH
                or not event.isascii()
            ):
                event = check_event_name(event)
            props, size = capture_sized(event, properties)
            scope = current_scope()
            if (
                scope is not None
                or groups
                or type(distinct_id) is not str
                or not 0 < len(distinct_id) <= MAX_DISTINCT_ID_LENGTH
                or not distinct_id.isascii()
            ):
                distinct_id, props = resolve_track(
                    event, distinct_id, props, scope, groups, self._random_bits
                )
            when = None if timestamp is None else check_timestamp(event, timestamp)
            event_id = self._random_bits(128) if uuid is None else check_uuid(event, uuid)
            options = None if disable_geoip is None else track_options(disable_geoip)
        except RefusedError as refusal:
            return self._refuse(refusal)
        except Exception as exc:  # a Mapping whose items() raises, a hostile __eq__, ...
            name = shown(event) if type(event) is str else type(event).__name__
            return self._refuse(
                UnserializableError(f"event {name}: {type(exc).__name__} while checking it")
            )
        size += len(event) + len(distinct_id) + EVENT_OVERHEAD_BYTES
        # tuple.__new__: the same QueuedEvent without the NamedTuple constructor's Python frame.
        return self._admit(
            _new_tuple(
                QueuedEvent, (event, distinct_id, props, when, event_id, time.time(), options, size)
            )
        )

    def _admit(self, item: QueuedEvent) -> bool:
        """Put a built event on the buffer, or refuse it (counted)."""
        # Inside the queue's mutex: a re-entrant track() on this thread refuses instead of
        # waiting for it, and a signal that ends the process waits until it is released.
        inside.active = True
        try:
            self._buffer.put_nowait(item)
        except BufferBytesFull:
            refused: RefusedError | None = QueueFullError(
                f"event {shown(item.event)}: the queue holds about "
                f"{self._config.max_queue_bytes} bytes of events"
            )
        except queue.Full:
            refused = QueueFullError(
                f"event {shown(item.event)}: the queue holds {self._config.max_queue_size} events"
            )
        except BufferClosed:
            refused = ShutdownError("the analytics queue was shut down")
        else:
            refused = None
        finally:
            inside.active = False
        if deferred:
            run_deferred()
        if refused is not None:
            return self._refuse(refused)
        if self._uwsgi_master:
            self._send_from_uwsgi_master()
        return True

    # -- persons and groups: posthog-python's calls, queued like track() -----------------------

    def set(
        self,
        *,
        distinct_id: Any = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
    ) -> bool:
        """Set properties on a person: a ``$set`` event. Returns True when queued.

        ``distinct_id`` defaults to the context's; without one, or without properties, the
        call is refused (reason ``invalid``), as posthog-python sends nothing then.
        """
        return self._queue_built(
            "$set",
            self._build_person,
            "$set",
            distinct_id,
            properties,
            timestamp,
            uuid,
            disable_geoip,
        )

    def set_once(
        self,
        *,
        distinct_id: Any = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
    ) -> bool:
        """Set person properties that are not set yet: a ``$set_once`` event (see :meth:`set`)."""
        return self._queue_built(
            "$set_once",
            self._build_person,
            "$set_once",
            distinct_id,
            properties,
            timestamp,
            uuid,
            disable_geoip,
        )

    def alias(
        self,
        previous_id: Any,
        distinct_id: Any = None,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
    ) -> bool:
        """Merge ``previous_id`` into ``distinct_id`` (default: the context's): a
        ``$create_alias`` event. Returns True when queued.
        """
        return self._queue_built(
            "$create_alias",
            self._build_alias,
            previous_id,
            distinct_id,
            timestamp,
            uuid,
            disable_geoip,
        )

    def group_identify(
        self,
        group_type: str,
        group_key: Any,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
        distinct_id: Any = None,
    ) -> bool:
        """Set properties on a group: a ``$groupidentify`` event. Returns True when queued.

        ``distinct_id`` defaults to the context's, else a random one (as in posthog-python).
        """
        return self._queue_built(
            "$groupidentify",
            self._build_group,
            group_type,
            group_key,
            properties,
            timestamp,
            uuid,
            disable_geoip,
            distinct_id,
        )

    def _build_person(
        self,
        kind: str,
        distinct_id: Any,
        properties: Any,
        timestamp: Any,
        uuid: Any,
        disable_geoip: Any,
    ) -> QueuedEvent:
        chosen, top_level = person_event(kind, distinct_id, properties)
        options = person_options(disable_geoip, top_level)
        return self._built(kind, chosen, {}, timestamp, uuid, options)

    def _build_alias(
        self, previous_id: Any, distinct_id: Any, timestamp: Any, uuid: Any, disable_geoip: Any
    ) -> QueuedEvent:
        sent_as, props = alias_event(previous_id, distinct_id)
        options = person_options(disable_geoip)
        return self._built("$create_alias", sent_as, props, timestamp, uuid, options)

    def _build_group(
        self,
        group_type: Any,
        group_key: Any,
        properties: Any,
        timestamp: Any,
        uuid: Any,
        disable_geoip: Any,
        distinct_id: Any,
    ) -> QueuedEvent:
        chosen, props = group_event(
            group_type, group_key, properties, distinct_id, self._random_bits
        )
        options = person_options(disable_geoip)
        return self._built("$groupidentify", chosen, props, timestamp, uuid, options)

    def _built(
        self,
        event: str,
        distinct_id: str,
        props: dict[str, Any],
        timestamp: Any,
        uuid: Any,
        options: EventOptions,
    ) -> QueuedEvent:
        when, event_id = common(event, timestamp, uuid, self._random_bits)
        return QueuedEvent(event, distinct_id, props, when, event_id, time.time(), options)

    def _queue_built(self, name: str, build: Callable[..., QueuedEvent], *args: Any) -> bool:
        """The admission of a built event: the same refusals and counters as track()."""
        if not self._ready or inside.active or self._pid != os.getpid():
            refusal = self._prepare()
            if refusal is not None:
                return self._refuse(refusal)
        try:
            item = build(*args)
        except RefusedError as refusal:
            return self._refuse(refusal)
        except Exception as exc:
            return self._refuse(
                UnserializableError(f"event {shown(name)}: {type(exc).__name__} while checking it")
            )
        return self._admit(item)

    def _send_from_uwsgi_master(self) -> None:
        budget = min(self._config.timeout, UWSGI_MASTER_SEND_TIMEOUT)
        if not self._worker.flush(time.monotonic() + budget):
            with guarded():
                logger.warning(
                    "analytics events tracked in the uWSGI master could not be sent within "
                    "%.1f s; the master never drains at exit, so they are lost (track them "
                    "in the workers, or run with --lazy-apps)",
                    budget,
                )

    def _prepare(self) -> RefusedError | None:
        """The slow path of track(): fork, first call, shutdown, disabled, re-entry."""
        if inside.active:
            return _Reentrant("track() re-entered inside analytics_queue on this thread")
        with guarded():
            if self._pid != os.getpid():
                self._after_fork_in_child()
            if self._config.disabled:
                return _Disabled("analytics is disabled")
            if self._closed:
                return ShutdownError("the analytics queue was shut down")
            if self._uwsgi_master:
                return None  # no thread in uWSGI's master: track() sends on the caller
            with self._lock:
                if not self._ready and not self._closed:
                    self._worker.start()
                    self._ready = True
        return None

    def _refuse(self, refusal: RefusedError) -> bool:
        if refusal.reason == "reentrant":
            # The interrupted frame on this thread may hold the counters' lock: no lock here.
            self._reentrant_refusals += 1
            return False
        with guarded():
            self._counters.refuse(refusal.reason)
            if refusal.reason == "queue_full":
                self._warn_queue_full()
        if self._config.strict and refusal.reason not in _SILENT_REASONS:
            raise refusal
        return False

    def _warn_queue_full(self) -> None:
        now = time.monotonic()
        if now - self._last_full_warning < QUEUE_FULL_WARNING_INTERVAL:
            return
        self._last_full_warning = now
        with guarded():
            try:
                logger.warning(
                    "analytics queue is full (%d events): new events are refused and counted "
                    "as queue_full; is PostHog reachable?",
                    self._config.max_queue_size,
                )
            except Exception:  # a logging handler or filter that raises: track() never does
                pass

    # -- flush and shutdown -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send what waits now; True when everything tracked before the call reached a final
        state (delivered or failed) within ``timeout`` seconds (default: the ``timeout``
        option). Sends on the calling thread when no worker runs in this process.

        Called from inside the library on this thread (a signal handler or ``__del__`` whose
        interrupted frame holds one of its locks), it returns False at once instead of waiting.
        """
        if inside.active:
            return False
        self._check_process()
        limit = self._config.timeout if timeout is None else max(0.0, timeout)
        return self._worker.flush(time.monotonic() + limit)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, then stop the worker; True when nothing is left undelivered.

        Idempotent. ``track()`` returns False afterwards. Waits at most ``timeout`` seconds
        (default: the ``shutdown_timeout`` option), even when the server never answers.

        Called from a signal handler while the main thread is inside the library, it returns
        False at once and the shutdown runs as soon as that frame leaves the library.
        """
        if inside.active:
            if threading.current_thread() is threading.main_thread():
                run_outside(lambda: self._shutdown_later(timeout))
            return False
        limit = self._config.shutdown_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + limit
        self._begin_shutdown(deadline)
        return self._finish_shutdown(deadline)

    def _shutdown_later(self, timeout: float | None) -> None:
        self.shutdown(timeout)

    def _begin_shutdown(self, deadline: float) -> None:
        self._check_process()
        with guarded():
            with self._lock:
                self._closed = True
                self._ready = False
            self._worker.begin_stop(deadline)  # closes the buffer: admission ends here

    def _finish_shutdown(self, deadline: float) -> bool:
        done = self._worker.wait_stopped(deadline)
        if not self._worker.alive:
            with guarded():
                self._transport.close()
        return done

    @property
    def closed(self) -> bool:
        """True once shutdown() began (or the exit drain): track() refuses from then on."""
        return self._closed

    def _after_fork_in_child(self) -> None:
        """Give this process its own queue and worker; the parent keeps what it queued."""
        pid = os.getpid()
        if self._pid == pid:
            return
        # Several threads of the child may get here at once after a fork that skipped
        # Python's hooks: one resets, the others wait for it. The lock is made per process
        # (dict.setdefault is atomic), so one held at the fork cannot block the child.
        with _fork_locks.setdefault(pid, threading.Lock()):
            if self._pid == pid:
                return
            self._ready = False
            self._lock = threading.Lock()
            if isinstance(self._transport, ForkAware):
                self._transport.reset_after_fork()
            self._reset_process_state()

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            with guarded():
                self._after_fork_in_child()

    # -- figures ----------------------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        """Events not yet delivered or failed: waiting, in the retry line, and in flight."""
        self._check_process()
        return self._worker.totals().unfinished

    def metrics(self) -> Metrics:
        """A frozen snapshot of the delivery figures."""
        self._check_process()
        totals = self._worker.totals()
        spool = self._worker.spool
        with guarded():
            return self._counters.snapshot(
                queued=totals.accepted,
                queue_size=totals.unfinished,
                worker_alive=self._worker.alive,
                extra_refusals={"reentrant": self._reentrant_refusals},
                spooled=totals.spooled,
                replayed=totals.replayed,
                spool=None if spool is None else spool.figures(),
            )

    def health(self) -> Health:
        """healthy / degraded / critical, with the reasons, from a fresh snapshot."""
        notes = [Reason(code, message) for code, message in self._problems]
        if self._config.local:
            notes.insert(0, Reason(LOCAL_MODE, LOCAL_MODE_REASON))
        metrics = self.metrics()
        with guarded():
            oldest = self._worker.ledger.oldest_unfinished()
        return evaluate_health(
            metrics,
            mode="local" if self._config.local else "posthog",
            notes=notes,
            oldest_waiting_age=None if oldest is None else max(0.0, time.time() - oldest),
            flush_interval=self._config.flush_interval,
        )

    def __repr__(self) -> str:
        mode = "local" if self._config.local else self._config.host
        return f"<AnalyticsQueue {mode} queue_size={self.queue_size}>"


class _Disabled(RefusedError):
    reason = "disabled"


class _Reentrant(RefusedError):
    reason = "reentrant"


_fork_locks: dict[int, threading.Lock] = {}

# Refusals that never raise, even in strict mode: disabling analytics is deliberate, and a
# logging handler must never get an exception back from our own log line.
_SILENT_REASONS: Final = frozenset({"disabled", "reentrant"})
