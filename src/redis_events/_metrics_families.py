"""Prometheus metric families built, when scraped, from ``Metrics``' counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from redis_events._group_state import GroupState
    from redis_events.metrics import _Topic

__all__ = ["group_metrics", "subscriber_metrics", "topic_metrics"]

_COUNTERS = (
    ("events_received", "Events that arrived, per topic.", "received"),
    ("events_handled", "Handler calls that succeeded, per topic.", "handled"),
    ("events_dead_lettered", "Entries moved to the dead letters.", "dead_lettered"),
    ("decode_errors", "Events that could not be decoded, per topic.", "rejected"),
    ("events_cancelled", "Handler calls cut short at a stop.", "cancelled"),
)


def topic_metrics(topics: dict[str, _Topic], bounds: list[float]) -> Iterator[Metric]:
    for name, documentation, attribute in _COUNTERS:
        family = CounterMetricFamily(
            f"redis_events_{name}", documentation, labels=["topic"]
        )
        for topic, counters in topics.items():
            family.add_metric([topic], getattr(counters, attribute))

        yield family

    failed = CounterMetricFamily(
        "redis_events_events_failed",
        "Handler calls that raised (reason=error) or timed out (reason=timeout).",
        labels=["topic", "reason"],
    )
    in_flight = GaugeMetricFamily(
        "redis_events_in_flight", "Handler calls running now.", labels=["topic"]
    )
    duration = HistogramMetricFamily(
        "redis_events_handler_duration_seconds",
        "Time handler calls took, per topic (not counting cancelled calls).",
        labels=["topic"],
    )
    for topic, counters in topics.items():
        failed.add_metric([topic, "error"], counters.failed)
        failed.add_metric([topic, "timeout"], counters.timed_out)
        in_flight.add_metric([topic], counters.in_flight)
        cumulative, total = [], 0
        for bound, count in zip([*bounds, float("inf")], counters.buckets, strict=True):
            total += count
            cumulative.append((_bound(bound), total))

        duration.add_metric([topic], cumulative, sum_value=counters.duration)

    yield from (failed, in_flight, duration)


_STATS = (
    ("reconnects", "Connections to Redis restored after a loss."),
    ("reconnect_attempts", "Attempts to reach Redis again after a loss."),
    ("retries", "Stream entries scheduled for another delivery after a failure."),
    ("reclaimed", "Stream entries claimed from consumers that went idle."),
    ("acked", "Stream entries acknowledged."),
)


def subscriber_metrics(stats: dict[str, int]) -> Iterator[Metric]:
    for name, documentation in _STATS:
        if name in stats:
            yield CounterMetricFamily(
                f"redis_events_{name}", documentation, value=stats[name]
            )


def group_metrics(groups: list[GroupState]) -> Iterator[Metric]:
    labels = ["topic", "group"]
    lag = GaugeMetricFamily(
        "redis_events_group_lag",
        "Entries in the stream not yet delivered to the consumer group.",
        labels=labels,
    )
    pending = GaugeMetricFamily(
        "redis_events_group_pending",
        "Entries delivered to the group but not acknowledged yet.",
        labels=labels,
    )
    oldest = GaugeMetricFamily(
        "redis_events_group_oldest_pending_age_seconds",
        "Age (from its entry id) of the oldest unacknowledged entry; 0 if none.",
        labels=labels,
    )
    consumers = GaugeMetricFamily(
        "redis_events_group_consumers", "Consumers in the group.", labels=labels
    )
    dead = GaugeMetricFamily(
        "redis_events_dead_letters",
        "Entries in the topic's dead-letter stream.",
        labels=["topic"],
    )
    for state in groups:
        key = [state.topic, state.group]
        if state.lag is not None:
            lag.add_metric(key, state.lag)

        pending.add_metric(key, state.pending)
        oldest.add_metric(key, state.oldest_pending_age)
        consumers.add_metric(key, state.consumers)
        dead.add_metric([state.topic], state.dead_letters)

    yield from (lag, pending, oldest, consumers, dead)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
