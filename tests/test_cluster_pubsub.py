"""Pub/sub on a Redis Cluster: sharded channels (SPUBLISH/SSUBSCRIBE).

A topic's messages stay on the master that owns its slot; one subscriber
holds one connection per master it needs. Patterns are refused.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from redis_events import ConfigurationError, EventPublisher, EventSubscriber
from tests.cluster_servers import _command
from tests.helpers import wait_until

if TYPE_CHECKING:
    from tests.cluster_servers import ClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def shard_channels(cluster: ClusterServers, port: int) -> set[str]:
    """Return the shard channels someone subscribed to on one node."""
    node = next(n for n in cluster.running() if n.port == port)
    client = node.client()
    try:
        return set(_command(client, "PUBSUB", "SHARDCHANNELS"))
    finally:
        client.close()


async def test_topics_on_every_shard_are_subscribed_on_their_own_master(
    redis_cluster: ClusterServers, uid: str
) -> None:
    topics = redis_cluster.spread(f"news-{uid}", 6)
    received: Counter[tuple[str, int]] = Counter()
    sub = EventSubscriber(redis_cluster.url)
    for topic in topics:

        @sub.on(topic)
        async def record(topic: str, event: dict[str, Any]) -> None:
            received[(topic, event["n"])] += 1

    async with sub, EventPublisher(redis_cluster.url) as pub:
        for topic in topics:
            owner = redis_cluster.master_of(topic).port
            assert topic in shard_channels(redis_cluster, owner)
            others = [n.port for n in redis_cluster.running() if n.port != owner]
            assert all(topic not in shard_channels(redis_cluster, p) for p in others)
            # SPUBLISH counts the receivers on the owner's shard only.
            assert await pub.publish(topic, {"n": 0}) == 1
            assert await pub.publish_many(topic, [{"n": 1}, {"n": 2}]) == [1, 1]

        await wait_until(lambda: len(received) == 3 * len(topics), timeout=10)

    assert set(received.values()) == {1}


async def test_a_topic_subscribed_while_running_receives_too(
    redis_cluster: ClusterServers, uid: str
) -> None:
    first, later = redis_cluster.spread(f"late-{uid}", 2)
    received: list[str] = []

    async def record(topic: str, event: dict[str, Any]) -> None:
        received.append(topic)

    sub = EventSubscriber(redis_cluster.url)
    sub.on(first)(record)
    async with sub, EventPublisher(redis_cluster.url) as pub:
        await sub.subscribe(later, record)
        await wait_until(
            lambda: (
                later
                in shard_channels(redis_cluster, redis_cluster.master_of(later).port)
            )
        )
        await pub.publish(first, {"n": 1})
        await pub.publish(later, {"n": 1})
        await wait_until(lambda: sorted(received) == sorted([first, later]))


async def test_patterns_are_refused_on_a_cluster_when_subscribing_while_running(
    redis_cluster: ClusterServers, uid: str
) -> None:
    async def record(topic: str, event: dict[str, Any]) -> None:
        del topic, event

    sub = EventSubscriber(redis_cluster.url)
    sub.on(f"plain-{uid}")(record)
    async with sub:
        with pytest.raises(ConfigurationError, match="no sharded PSUBSCRIBE"):
            await sub.psubscribe("orders.*", record)


async def test_a_subscription_follows_its_slot_to_another_master(
    redis_cluster: ClusterServers, uid: str
) -> None:
    topic = f"moving-{uid}"
    received: list[int] = []
    sub = EventSubscriber(redis_cluster.url, reconnect_backoff_cap=0.5)

    @sub.on(topic)
    async def record(topic: str, event: dict[str, Any]) -> None:
        received.append(event["n"])

    async with sub, EventPublisher(redis_cluster.url) as pub:
        await pub.publish(topic, {"n": 0})
        await wait_until(lambda: received == [0])
        source = redis_cluster.master_of(topic)
        target = next(
            node
            for node in redis_cluster.running()
            if node is not source and node.port in masters(redis_cluster)
        )
        redis_cluster.move_slot(topic, target)
        # Redis ends the shard subscription on the old owner; the reader
        # subscribes again on the new one.
        await wait_until(lambda: topic in shard_channels(redis_cluster, target.port))
        for n in range(1, 21):
            await pub.publish(topic, {"n": n})

        await wait_until(lambda: set(range(1, 21)) <= set(received))

    assert sub.get_stats()["reconnects"] >= 1
    assert topic not in shard_channels(redis_cluster, source.port)


def masters(cluster: ClusterServers) -> set[int]:
    """Return the ports of the running masters."""
    ports = set()
    for node in cluster.running():
        client = node.client()
        try:
            if _command(client, "ROLE")[0] == "master":
                ports.add(node.port)
        finally:
            client.close()

    return ports
