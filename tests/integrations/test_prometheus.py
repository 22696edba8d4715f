"""analytics_queue.prometheus: the collector, the dependency-free text, content negotiation."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import analytics_queue
import analytics_queue._default
from analytics_queue import AnalyticsQueue
from analytics_queue.prometheus import (
    INSTALL_HINT,
    AnalyticsQueueCollector,
    choose_format,
    register,
    render_text,
)

MakeQueue = Callable[..., AnalyticsQueue]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition text, read with prometheus_client's own parser."""
    values: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def deliver_and_fail(queue: AnalyticsQueue, capture_server: Any) -> None:
    """3 events delivered, then 1 rejected with a 400 (a final failure, never retried)."""
    for i in range(3):
        assert queue.track("page_viewed", distinct_id=f"user-{i}")
    assert queue.flush(timeout=5.0)
    capture_server.wait_for(3)
    capture_server.fail_with(400, times=1)
    assert queue.track("page_viewed", distinct_id="rejected")
    assert queue.flush(timeout=5.0)


def test_the_collector_exports_the_metrics_into_the_users_registry(
    make_queue: MakeQueue, capture_server: Any
) -> None:
    queue = make_queue()
    deliver_and_fail(queue, capture_server)
    registry = CollectorRegistry()
    registry.register(AnalyticsQueueCollector(queue))

    values = samples(generate_latest(registry).decode())
    metrics = queue.metrics()
    assert metrics.failed_by_reason == {"rejected_400": 1}
    assert values[("analytics_queue_events_queued_total", ())] == 4
    assert values[("analytics_queue_events_delivered_total", ())] == 3
    assert values[("analytics_queue_events_failed_total", (("reason", "rejected_400"),))] == 1
    assert values[("analytics_queue_batches_sent_total", ())] == metrics.batches_sent
    assert values[("analytics_queue_batches_failed_total", ())] == 1
    assert values[("analytics_queue_queue_size", ())] == 0
    assert values[("analytics_queue_delivery_ratio", ())] == pytest.approx(0.75)
    assert values[("analytics_queue_failure_ratio", ())] == pytest.approx(0.25)
    assert values[("analytics_queue_worker_alive", ())] == 1
    assert values[("analytics_queue_average_send_seconds", ())] == pytest.approx(
        metrics.avg_send_ms / 1000
    )
    assert values[("analytics_queue_last_success_timestamp_seconds", ())] == pytest.approx(
        metrics.last_success_at
    )
    health = queue.health().status
    for status in ("healthy", "degraded", "critical"):
        assert values[("analytics_queue_health", (("status", status),))] == (status == health)

    types = families(generate_latest(registry).decode())
    assert types["analytics_queue_events_delivered"] == "counter"
    assert types["analytics_queue_queue_size"] == "gauge"


def test_render_text_matches_what_prometheus_client_generates(
    make_queue: MakeQueue, capture_server: Any
) -> None:
    queue = make_queue()
    deliver_and_fail(queue, capture_server)
    registry = CollectorRegistry()
    registry.register(AnalyticsQueueCollector(queue))

    ours = render_text(queue)
    theirs = generate_latest(registry).decode()
    # last_success_at and the averages do not move at rest: both reads see the same figures.
    assert samples(ours) == samples(theirs)
    assert families(ours) == families(theirs)


def test_one_collector_labels_several_queues_in_one_registry(
    make_queue: MakeQueue, capture_server: Any
) -> None:
    billing, search = make_queue(), make_queue()
    assert billing.track("invoice_paid", distinct_id="u")
    assert billing.flush(timeout=5.0)
    capture_server.wait_for(1)
    registry = CollectorRegistry()
    register({"billing": billing, "search": search}, registry=registry)

    values = samples(generate_latest(registry).decode())
    assert values[("analytics_queue_events_delivered_total", (("queue", "billing"),))] == 1
    assert values[("analytics_queue_events_delivered_total", (("queue", "search"),))] == 0
    assert values[("analytics_queue_worker_alive", (("queue", "search"),))] == 0
    with pytest.raises(ValueError, match="at least one"):
        AnalyticsQueueCollector({})


def test_registering_reads_nothing_and_none_follows_the_default_instance(
    make_queue: MakeQueue, isolated_default: None, capture_server: Any
) -> None:
    registry = CollectorRegistry(auto_describe=True)
    register(registry=registry)  # describe() only: no default instance is created
    assert analytics_queue._default._default is None

    default = analytics_queue.configure(api_key="phc_test", host=capture_server.url)
    assert analytics_queue.track("signed_up", distinct_id="u")
    assert analytics_queue.flush(timeout=5.0)
    capture_server.wait_for(1)
    assert (
        samples(generate_latest(registry).decode())[("analytics_queue_events_delivered_total", ())]
        == 1
    )
    assert analytics_queue.get_default() is default


def test_register_defaults_to_the_global_registry(make_queue: MakeQueue) -> None:
    queue = make_queue()
    collector = register(queue)
    try:
        assert "analytics_queue_info{" in generate_latest(REGISTRY).decode()
    finally:
        REGISTRY.unregister(collector)
    assert "analytics_queue_info{" not in generate_latest(REGISTRY).decode()


def test_a_clear_error_without_prometheus_client(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue()
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError

    with pytest.raises(ImportError, match=r"pip install 'analytics-queue\[prometheus\]'") as err:
        AnalyticsQueueCollector(queue)
    assert str(err.value) == INSTALL_HINT
    # The text format needs no prometheus_client.
    assert "analytics_queue_events_queued_total 0.0" in render_text(queue)


def test_label_values_and_help_are_escaped(make_queue: MakeQueue) -> None:
    text = render_text(make_queue(), labels={"queue": 'a "quoted"\\name\nnext'})
    values = samples(text)
    assert values[("analytics_queue_queue_size", (("queue", 'a "quoted"\\name\nnext'),))] == 0


@pytest.mark.parametrize(
    ("format_param", "accept", "expected"),
    [
        (None, None, "json"),
        (None, "", "json"),
        (None, "*/*", "json"),
        (None, "application/json", "json"),
        (None, "text/plain", "prometheus"),
        (None, "text/*", "prometheus"),
        (None, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "json"),
        (None, "text/plain;q=0.5, application/json", "json"),
        (None, "text/plain, application/json;q=0.5", "prometheus"),
        (None, "application/openmetrics-text;version=1.0.0,*/*;q=0.1", "prometheus"),
        (None, "text/plain;version=0.0.4;q=0.3,*/*;q=0.1", "prometheus"),
        (None, "text/plain;q=0", "json"),
        (None, "text/plain;q=oops", "json"),
        ("prometheus", "application/json", "prometheus"),
        ("PROMETHEUS", None, "prometheus"),
        ("json", "text/plain", "json"),
    ],
)
def test_choose_format(format_param: str | None, accept: str | None, expected: str) -> None:
    assert choose_format(format_param, accept) == expected


def test_choose_format_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        choose_format("xml", None)
