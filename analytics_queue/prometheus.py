"""Prometheus: the metrics and health of an AnalyticsQueue as Prometheus metric families.

Two ways in:

- :class:`AnalyticsQueueCollector` is a ``prometheus_client`` collector (the optional extra
  ``prometheus``: ``pip install 'analytics-queue[prometheus]'``). Register it in your own registry,
  or in the global one with :func:`register`::

      from prometheus_client import CollectorRegistry
      from analytics_queue.prometheus import AnalyticsQueueCollector

      registry = CollectorRegistry()
      registry.register(AnalyticsQueueCollector(queue))   # None: the default instance
      # several queues in one registry, labelled queue="billing" and queue="search":
      registry.register(AnalyticsQueueCollector({"billing": billing, "search": search}))

- :func:`render_text` writes the same families in the Prometheus text format (0.0.4) without
  ``prometheus_client``; the Flask and Django metrics endpoints answer with it when asked
  (``?format=prometheus`` or ``Accept: text/plain``, see :func:`choose_format`).

Names follow the Prometheus conventions: counters end in ``_total``, durations are in seconds,
rates are ratios from 0 to 1, a state is a gauge per label value:

========================================================  ========  ================================
name                                                      type      from
========================================================  ========  ================================
``analytics_queue_events_queued_total``                   counter   ``queued``
``analytics_queue_events_delivered_total``                counter   ``delivered``
``analytics_queue_events_failed_total{reason}``           counter   ``failed_by_reason``
``analytics_queue_events_refused_total{reason}``          counter   ``refused_by_reason``
``analytics_queue_events_retried_total``                  counter   ``retried``
``analytics_queue_batches_sent_total``                    counter   ``batches_sent``
``analytics_queue_batches_failed_total``                  counter   ``batches_failed``
``analytics_queue_queue_size``                            gauge     ``queue_size``
``analytics_queue_peak_queue_size``                       gauge     ``peak_queue_size``
``analytics_queue_average_delivery_seconds``              gauge     ``avg_delivery_ms`` / 1000
``analytics_queue_average_send_seconds``                  gauge     ``avg_send_ms`` / 1000
``analytics_queue_delivery_ratio``                        gauge     ``delivery_rate`` / 100
``analytics_queue_failure_ratio``                         gauge     ``failure_rate`` / 100
``analytics_queue_last_success_timestamp_seconds``        gauge     ``last_success_at`` (if any)
``analytics_queue_consecutive_failures``                  gauge     ``consecutive_failures``
``analytics_queue_worker_alive``                          gauge     ``worker_alive`` (1 or 0)
``analytics_queue_health{status}``                        gauge     1 for the current status, else 0
``analytics_queue_info{mode,version}``                    gauge     always 1
========================================================  ========  ================================

Every figure is per process: each gunicorn or uWSGI worker has its own queue and worker thread,
so scrape each process (or use your exporter's multiprocess setup) and sum the counters.

Thread safety: everything here reads a fresh snapshot on each call; safe to share between threads.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from analytics_queue._version import __version__

if TYPE_CHECKING:
    from analytics_queue import AnalyticsQueue, Health

__all__ = [
    "CONTENT_TYPE",
    "AnalyticsQueueCollector",
    "MetricFamily",
    "choose_format",
    "metric_families",
    "register",
    "render_text",
]

#: The Content-Type of :func:`render_text`'s output (the Prometheus text format 0.0.4).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: The install hint given when ``prometheus_client`` is missing.
INSTALL_HINT: Final = (
    "analytics_queue.prometheus.AnalyticsQueueCollector needs prometheus_client: "
    "pip install 'analytics-queue[prometheus]'"
)

_HEALTH_STATES: Final = ("healthy", "degraded", "critical")

Format = Literal["json", "prometheus"]


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One metric family: its name (counters without ``_total``), type, help and samples.

    Each sample is ``(labels, value)``; the family's constant labels are already merged in.
    """

    name: str
    type: Literal["counter", "gauge"]
    documentation: str
    label_names: tuple[str, ...] = ()
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    @property
    def sample_name(self) -> str:
        """The name its samples carry: counters end in ``_total``."""
        return self.name + "_total" if self.type == "counter" else self.name


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    type: Literal["counter", "gauge"]
    documentation: str
    label: str | None = None


_SPECS: Final[tuple[_Spec, ...]] = (
    _Spec("events_queued", "counter", "Events track() accepted onto the queue."),
    _Spec(
        "events_delivered",
        "counter",
        "Events PostHog acknowledged (in local mode: events logged).",
    ),
    _Spec("events_failed", "counter", "Events that reached a final failure, by reason.", "reason"),
    _Spec("events_refused", "counter", "Events track() refused, by reason.", "reason"),
    _Spec("events_retried", "counter", "Events put back in line for another attempt."),
    _Spec("batches_sent", "counter", "HTTP requests that delivered a batch."),
    _Spec("batches_failed", "counter", "HTTP requests that failed."),
    _Spec("queue_size", "gauge", "Events waiting, in retry or in flight."),
    _Spec("peak_queue_size", "gauge", "The largest queue_size seen."),
    _Spec(
        "average_delivery_seconds",
        "gauge",
        "Average time from track() to PostHog's acknowledgement.",
    ),
    _Spec("average_send_seconds", "gauge", "Average duration of one HTTP request to PostHog."),
    _Spec(
        "delivery_ratio",
        "gauge",
        "Delivered events over events that reached a final state (1 before any did).",
    ),
    _Spec("failure_ratio", "gauge", "Failed events over events that reached a final state."),
    _Spec(
        "last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last delivered batch (absent before the first).",
    ),
    _Spec(
        "consecutive_failures",
        "gauge",
        "HTTP requests that failed in a row since the last success.",
    ),
    _Spec("worker_alive", "gauge", "1 when this process's worker thread is alive."),
    _Spec(
        "health",
        "gauge",
        "1 for the current health status (healthy, degraded, critical), 0 for the others.",
        "status",
    ),
    _Spec(
        "info", "gauge", "Always 1: the delivery mode (posthog or local) and the library version."
    ),
)


def _by_reason(total: int, by_reason: Mapping[str, int]) -> dict[str, float]:
    """Per-reason counts; whatever the total holds beyond them is counted as ``other``."""
    values = {str(k): float(v) for k, v in by_reason.items()}
    unaccounted = total - sum(by_reason.values())
    if unaccounted > 0:
        values["other"] = values.get("other", 0.0) + unaccounted
    return dict(sorted(values.items()))


def _values(health: Health) -> dict[str, float | dict[str, float] | None]:
    m = health.metrics
    return {
        "events_queued": m.queued,
        "events_delivered": m.delivered,
        "events_failed": _by_reason(m.failed, m.failed_by_reason),
        "events_refused": _by_reason(m.refused, m.refused_by_reason),
        "events_retried": m.retried,
        "batches_sent": m.batches_sent,
        "batches_failed": m.batches_failed,
        "queue_size": m.queue_size,
        "peak_queue_size": m.peak_queue_size,
        "average_delivery_seconds": m.avg_delivery_ms / 1000.0,
        "average_send_seconds": m.avg_send_ms / 1000.0,
        "delivery_ratio": m.delivery_rate / 100.0,
        "failure_ratio": m.failure_rate / 100.0,
        "last_success_timestamp_seconds": m.last_success_at,
        "consecutive_failures": m.consecutive_failures,
        "worker_alive": 1.0 if m.worker_alive else 0.0,
        "health": {s: 1.0 if health.status == s else 0.0 for s in _HEALTH_STATES},
    }


def _families(health: Health | None, labels: Mapping[str, str] | None) -> list[MetricFamily]:
    const = dict(labels or {})
    values = _values(health) if health is not None else {}
    families: list[MetricFamily] = []
    for spec in _SPECS:
        label_names = tuple(const)
        samples: list[tuple[dict[str, str], float]] = []
        if spec.name == "info":
            label_names += ("mode", "version")
            if health is not None:
                samples.append(({**const, "mode": health.mode, "version": __version__}, 1.0))
        elif spec.label is not None:
            label_names += (spec.label,)
            by = values.get(spec.name)
            if isinstance(by, dict):
                for key, value in by.items():
                    samples.append(({**const, spec.label: key}, value))
        else:
            single = values.get(spec.name)
            if isinstance(single, (int, float)):
                samples.append((dict(const), float(single)))
        families.append(
            MetricFamily(
                f"analytics_queue_{spec.name}", spec.type, spec.documentation, label_names, samples
            )
        )
    return families


def metric_families(
    health: Health, *, labels: Mapping[str, str] | None = None
) -> list[MetricFamily]:
    """Turn one health verdict (and the metrics snapshot it was judged on) into metric families.

    Args:
        health: from ``AnalyticsQueue.health()``; its ``metrics`` are the figures exported.
        labels: constant labels added to every sample (``{"queue": "billing"}``), to tell
            several queues apart in one registry.

    Returns:
        The families in a fixed order, with their samples.
    """
    return _families(health, labels)


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_families(families: Iterable[MetricFamily]) -> str:
    """Write metric families in the Prometheus text format 0.0.4."""
    lines: list[str] = []
    for fam in families:
        name = fam.sample_name
        lines.append(f"# HELP {name} {_escape_help(fam.documentation)}")
        lines.append(f"# TYPE {name} {fam.type}")
        for sample_labels, value in fam.samples:
            if sample_labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample_labels.items())
                lines.append(f"{name}{{{inner}}} {_format_value(value)}")
            else:
                lines.append(f"{name} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def render_text(queue: AnalyticsQueue, *, labels: Mapping[str, str] | None = None) -> str:
    """The metrics and health of ``queue`` in the Prometheus text format, without prometheus_client.

    Args:
        queue: the AnalyticsQueue to read.
        labels: constant labels added to every sample.

    Returns:
        The exposition text; serve it with :data:`CONTENT_TYPE`.
    """
    return render_families(metric_families(queue.health(), labels=labels))


def _media_ranges(accept: str) -> Iterator[tuple[str, float]]:
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        if not media:
            continue
        quality = 1.0
        for param in pieces[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        yield media, quality


def _quality(ranges: list[tuple[str, float]], media_type: str) -> float:
    """The q of the most specific media range matching ``media_type`` (0 when none does)."""
    main = media_type.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for media, quality in ranges:
        if media == media_type:
            specificity = 2
        elif media == f"{main}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]


def choose_format(format_param: str | None, accept: str | None) -> Format:
    """Decide between JSON and the Prometheus text format for a metrics request.

    ``?format=prometheus`` (or ``text``, ``openmetrics``) and ``?format=json`` win; otherwise the
    ``Accept`` header decides: Prometheus text when it prefers ``text/plain`` (or
    ``application/openmetrics-text``, as Prometheus itself asks) over ``application/json``; JSON on
    a tie, for ``*/*`` and without the header.

    Raises:
        ValueError: an unknown ``format`` value.
    """
    if format_param:
        wanted = format_param.strip().lower()
        if wanted in ("prometheus", "text", "openmetrics"):
            return "prometheus"
        if wanted == "json":
            return "json"
        raise ValueError(f"unknown format {format_param!r}: use 'json' or 'prometheus'")
    if not accept:
        return "json"
    ranges = list(_media_ranges(accept))
    text = max(_quality(ranges, "text/plain"), _quality(ranges, "application/openmetrics-text"))
    return "prometheus" if text > _quality(ranges, "application/json") else "json"


def _prometheus_client_core() -> Any:
    try:
        return importlib.import_module("prometheus_client.core")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


class AnalyticsQueueCollector:
    """A ``prometheus_client`` collector over the metrics and health of one or more AnalyticsQueues.

    Args:
        queues: what to export. ``None``: the default instance (the one
            ``analytics_queue.track()`` uses, looked up on each scrape, so ``configure()`` is
            followed). An AnalyticsQueue: that one. A mapping ``{name: queue}``: each of them,
            its samples labelled ``{label: name}`` (one registry cannot hold two collectors
            with the same metric names, so several queues share one collector).
        label: the label name that tells the queues of a mapping apart.

    Example::

        registry.register(AnalyticsQueueCollector({"billing": billing, "search": search}))

    Raises:
        ImportError: ``prometheus_client`` is not installed (the ``prometheus`` extra).

    Safe to share between threads: each ``collect()`` reads a fresh snapshot.
    """

    def __init__(
        self,
        queues: AnalyticsQueue | Mapping[str, AnalyticsQueue] | None = None,
        *,
        label: str = "queue",
    ) -> None:
        self._core = _prometheus_client_core()
        self._sources: list[tuple[dict[str, str], AnalyticsQueue | None]]
        if isinstance(queues, Mapping):
            if not queues:
                raise ValueError("queues: give at least one AnalyticsQueue")
            self._sources = [({label: str(name)}, queue) for name, queue in queues.items()]
        else:
            self._sources = [({}, queues)]

    def _to_prometheus(self, per_source: list[list[MetricFamily]]) -> Iterator[Any]:
        for merged in zip(*per_source, strict=True):
            first = merged[0]
            cls = (
                self._core.CounterMetricFamily
                if first.type == "counter"
                else self._core.GaugeMetricFamily
            )
            out = cls(first.name, first.documentation, labels=list(first.label_names))
            for fam in merged:
                for sample_labels, value in fam.samples:
                    out.add_metric([sample_labels[name] for name in fam.label_names], value)
            yield out

    def collect(self) -> Iterator[Any]:
        """Yield the metric families of a fresh snapshot (called by the registry per scrape)."""
        import analytics_queue

        per_source = []
        for labels, queue in self._sources:
            health = (queue or analytics_queue.get_default()).health()
            per_source.append(metric_families(health, labels=labels))
        yield from self._to_prometheus(per_source)

    def describe(self) -> Iterator[Any]:
        """Yield the families without samples, so that registering never reads a queue."""
        yield from self._to_prometheus([_families(None, self._sources[0][0])])


def register(
    queues: AnalyticsQueue | Mapping[str, AnalyticsQueue] | None = None,
    *,
    registry: Any = None,
    label: str = "queue",
) -> AnalyticsQueueCollector:
    """Create an :class:`AnalyticsQueueCollector` and register it.

    Args:
        queues: what to export: ``None`` (the default instance), one AnalyticsQueue, or a
            mapping ``{name: queue}``.
        registry: a ``prometheus_client.CollectorRegistry``; default the global ``REGISTRY``.
        label: the label name for the names of a mapping.

    Returns:
        The registered collector (``registry.unregister(collector)`` removes it).

    Raises:
        ImportError: ``prometheus_client`` is not installed.
    """
    collector = AnalyticsQueueCollector(queues, label=label)
    if registry is None:
        registry = importlib.import_module("prometheus_client").REGISTRY
    registry.register(collector)
    return collector
