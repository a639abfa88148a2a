"""Prometheus metrics and a health check for one subscriber.

``Metrics`` is an observer (``redis_events.observers``): attached to a
subscriber, it counts each event per topic in plain integers, and a
collector turns those into Prometheus metrics only when scraped, so the
per-event cost is a dictionary look-up and a few additions. For streams it
also reads the consumer group's lag, pending count and oldest pending entry
from Redis (``refresh()``, with a short timeout, at most every
``refresh_interval`` seconds).

Every ``Metrics`` has its own ``CollectorRegistry``, so several instances in
one process (tests, two subscribers) never collide::

    metrics = Metrics()
    metrics.attach(subscriber)
    async with metrics.serving(port=9464):  # /metrics and /healthz
        await subscriber.run()
"""

from __future__ import annotations

import bisect
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from redis_events._group_state import read_group_state, redis_answers
from redis_events._metrics_families import (
    group_metrics,
    subscriber_metrics,
    topic_metrics,
)
from redis_events.dispatcher import Outcome
from redis_events.observers import EventObserver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from prometheus_client.metrics_core import Metric
    from redis.asyncio import Redis

    from redis_events._group_state import GroupState
    from redis_events.dispatcher import Delivery
    from redis_events.subscriber import EventSubscriber

__all__ = ["DEFAULT_BUCKETS", "OTHER_TOPICS", "Metrics"]

DEFAULT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)  # fmt: skip
# Topics past ``max_topics`` are counted under this label, so that a
# publisher inventing channel names cannot grow the metrics without bound.
OTHER_TOPICS = "_other"
# The label of events whose channel name is not a valid topic.
INVALID_TOPIC = "_invalid"

_FAILED = (Outcome.FAILED, Outcome.TIMED_OUT)
_TIMED = (Outcome.HANDLED, *_FAILED)


class _Topic:
    """The counters of one topic: plain integers, read when scraped."""

    __slots__ = (
        "buckets",
        "cancelled",
        "dead_lettered",
        "duration",
        "failed",
        "handled",
        "in_flight",
        "received",
        "rejected",
        "timed_out",
    )

    def __init__(self, size: int) -> None:
        self.received = self.handled = self.failed = self.timed_out = 0
        self.cancelled = self.dead_lettered = self.rejected = self.in_flight = 0
        self.buckets = [0] * size
        self.duration = 0.0


class Metrics(EventObserver):
    """Prometheus metrics of one subscriber, with ``/metrics`` and ``/healthz``.

    Note:
        Counting happens on the event loop's thread, and so does scraping
        through ``serving()``. Scraping ``registry`` from another thread
        (prometheus_client's own server) works too, but a scrape may then
        see one event's counters half updated.
    """

    def __init__(
        self,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_topics: int = 500,
        redis_timeout: float = 1.0,
        refresh_interval: float = 1.0,
        stale_after: float = 15.0,
    ) -> None:
        """Set up counters and a registry of their own.

        ``redis_timeout`` bounds every look at Redis (group state, the
        health check's PING); ``refresh_interval`` is the shortest time
        between two reads of the group state; ``stale_after`` is how long
        the consume loop may go without a connection before ``/healthz``
        says it is not consuming.
        """
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.redis_timeout = redis_timeout
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self._bounds = sorted(float(b) for b in buckets)
        self._max_topics = max_topics
        self._topics: dict[str, _Topic] = {}
        self._subscriber: EventSubscriber | None = None
        self._client: Redis | None = None
        self._groups: list[GroupState] | None = None
        self._refreshed = -float("inf")
        self._refreshing = anyio.Lock()
        self._redis_up: bool | None = None
        self._disconnected_since: float | None = None

    def attach(self, subscriber: EventSubscriber) -> None:
        """Count ``subscriber``'s events; call it before the subscriber runs.

        Raises:
            RuntimeError: These metrics already belong to a subscriber.
        """
        if self._subscriber is not None:
            msg = "a Metrics object counts one subscriber; make one per subscriber"
            raise RuntimeError(msg)

        subscriber.add_observer(self)
        self._subscriber = subscriber

    # The observer side: called for every event, so it stays this short.

    def received(self, topic: str) -> None:
        """Count an event that arrived."""
        (self._topics.get(topic) or self._add(topic)).received += 1

    def rejected(self, topic: str | None) -> None:
        """Count an event that could not be decoded."""
        (self._topics.get(topic or INVALID_TOPIC) or self._add(topic)).rejected += 1

    def started(self, delivery: Delivery) -> object:
        """Count a handler call in flight; return its start time."""
        (self._topics.get(delivery.topic) or self._add(delivery.topic)).in_flight += 1
        return time.perf_counter()

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        """Count the outcome of a handler call and time it."""
        counters = self._topics.get(delivery.topic) or self._add(delivery.topic)
        counters.in_flight -= 1
        if outcome is Outcome.HANDLED:
            counters.handled += 1
        elif outcome is Outcome.FAILED:
            counters.failed += 1
        elif outcome is Outcome.TIMED_OUT:
            counters.timed_out += 1
        else:
            counters.cancelled += 1

        if outcome in _TIMED:
            assert isinstance(token, float), "the start time from started()"
            elapsed = time.perf_counter() - token
            counters.buckets[bisect.bisect_left(self._bounds, elapsed)] += 1
            counters.duration += elapsed

    def dead_lettered(self, topic: str) -> None:
        """Count an entry moved to the dead letters."""
        (self._topics.get(topic) or self._add(topic)).dead_lettered += 1

    def _add(self, topic: str | None) -> _Topic:
        name = topic or INVALID_TOPIC
        if len(self._topics) >= self._max_topics:
            name = OTHER_TOPICS

        counters = self._topics.get(name)
        if counters is None:
            counters = self._topics[name] = _Topic(len(self._bounds) + 1)

        return counters

    # The Redis side: group state and health, never blocking for long.

    async def refresh(self, *, force: bool = False) -> None:
        """Read the group state and whether Redis answers, within the timeout.

        Does nothing when the last read is younger than ``refresh_interval``
        (unless ``force``). Never raises for Redis trouble: then
        ``redis_events_redis_up`` is 0 and the group gauges are left out.
        """
        async with self._refreshing:
            now = anyio.current_time()
            if not force and now - self._refreshed < self.refresh_interval:
                return

            self._refreshed = now
            subscriber = self._subscriber
            if subscriber is None:
                return

            client = self._redis(subscriber)
            stream = subscriber.settings.transport == "stream"
            up, groups = False, None
            with anyio.move_on_after(self.redis_timeout):
                if stream:
                    groups = await read_group_state(
                        client, subscriber.settings.group, subscriber.topics
                    )
                    up = groups is not None
                else:
                    up = await redis_answers(client)

            self._redis_up, self._groups = up, groups

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Check Redis with a PING and the subscriber's consume loop.

        Returns:
            Whether all is well, and a JSON-ready report that says why not.
        """
        subscriber = self._subscriber
        report: dict[str, Any] = {"redis": "down", "consuming": False}
        if subscriber is None:
            report["reason"] = "no subscriber attached"
            return False, report

        answered = False
        with anyio.move_on_after(self.redis_timeout):
            answered = await redis_answers(self._redis(subscriber))

        self._redis_up = answered
        report["redis"] = "up" if answered else "down"
        report["consuming"] = consuming = self._consuming(subscriber)
        report["transport"] = subscriber.settings.transport
        report["in_flight"] = sum(t.in_flight for t in self._topics.values())
        if not subscriber.running:
            report["reason"] = "the subscriber is not running"
        elif not answered:
            report["reason"] = f"Redis did not answer a PING in {self.redis_timeout} s"
        elif not consuming:
            report["reason"] = "the consume loop has no connection to Redis"

        return answered and consuming, report

    def _consuming(self, subscriber: EventSubscriber) -> bool:
        if not subscriber.running:
            self._disconnected_since = None
            return False

        if subscriber.connected:
            self._disconnected_since = None
            return True

        # A reconnect in progress is not yet a failure: only a loop that has
        # been without a connection for ``stale_after`` is.
        now = anyio.current_time()
        if self._disconnected_since is None:
            self._disconnected_since = now

        return now - self._disconnected_since < self.stale_after

    def render(self) -> bytes:
        """Return the metrics in Prometheus's text format."""
        return generate_latest(self.registry)

    @asynccontextmanager
    async def serving(
        self, *, host: str = "127.0.0.1", port: int = 0
    ) -> AsyncIterator[int]:
        """Answer ``/metrics`` and ``/healthz`` over HTTP inside the block.

        Yields:
            The port listened on (useful with ``port=0``).

        Raises:
            OSError: The address cannot be listened on.

        Note:
            Leaving the block closes the listening socket, every open
            connection and the Redis client used for the group state.
        """
        from redis_events._metrics_http import MetricsServer

        try:
            async with MetricsServer(self, host=host, port=port) as server:
                yield server.port
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Close the Redis client used for the group state and health."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _redis(self, subscriber: EventSubscriber) -> Redis:
        if self._client is None:
            from redis_events._connection import create_client

            timeout = self.redis_timeout
            settings = subscriber.settings.model_copy(
                update={
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout,
                    "max_connections": 2,
                }
            )
            self._client = create_client(settings, role="metrics")

        return self._client

    def _collect(self) -> Iterator[Metric]:
        yield from topic_metrics(self._topics, self._bounds)
        if self._subscriber is not None:
            yield from subscriber_metrics(self._subscriber.get_stats())

        up = GaugeMetricFamily(
            "redis_events_redis_up",
            "1 when Redis answered the last look (group state or PING), else 0.",
        )
        if self._redis_up is not None:
            up.add_metric([], 1.0 if self._redis_up else 0.0)
            yield up

        if self._groups is not None and self._subscriber is not None:
            yield from group_metrics(self._groups)


class _Collector:
    """Hand a registry the metrics of one ``Metrics``, built when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._collect()
