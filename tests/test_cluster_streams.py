"""The streams transport on a 3-master Redis Cluster.

Topics are spread over the masters by their hash tag; one subscriber reads
them all (one read loop per slot), several share a group, and reclaiming and
dead letters work per shard. ``R`` here is a plain synchronous cluster
client.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from redis.crc import key_slot

from redis_events import EventPublisher, EventSubscriber
from redis_events._keys import dead_letter_key, stream_key
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

    from tests.cluster_servers import ClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

GROUP = "workers"


@pytest.fixture
def rc(redis_cluster: ClusterServers) -> Iterator[redis.RedisCluster]:
    """``R`` on the session's cluster."""
    client = redis_cluster.client()
    yield client
    client.close()


def spread_topics(cluster: ClusterServers, uid: str, count: int = 6) -> list[str]:
    """Return ``count`` topics whose streams are spread over the masters."""
    return cluster.spread(f"orders-{uid}", count, key=stream_key)


def subscriber(url: str, **options: Any) -> EventSubscriber:
    settings: dict[str, Any] = {
        "transport": "stream",
        "group": GROUP,
        "start_from": "all",
        "block_seconds": 0.5,
    }
    return EventSubscriber(url, **(settings | options))


def pending(rc: redis.RedisCluster, topic: str) -> int:
    summary: dict[str, Any] = rc.xpending(stream_key(topic), GROUP)
    return int(summary["pending"])


async def test_one_subscriber_handles_every_event_of_topics_on_every_shard(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, uid: str
) -> None:
    topics = spread_topics(redis_cluster, uid)
    handled: Counter[tuple[str, int]] = Counter()
    sub = subscriber(redis_cluster.url)
    for topic in topics:

        @sub.on(topic)
        async def record(topic: str, event: dict[str, Any]) -> None:
            handled[(topic, event["n"])] += 1

    async with sub, EventPublisher(redis_cluster.url, transport="stream") as pub:
        for topic in topics:
            await pub.publish(topic, {"n": 0})
            ids = await pub.publish_many(topic, [{"n": n} for n in range(1, 20)])
            assert len(ids) == 19

        await wait_until(lambda: len(handled) == 20 * len(topics), timeout=20)

    assert set(handled.values()) == {1}
    assert all(pending(rc, topic) == 0 for topic in topics)
    assert sub.get_stats()["acked"] == 20 * len(topics)


async def test_failed_entries_go_to_the_dead_letters_of_their_own_shard(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, uid: str
) -> None:
    topics = spread_topics(redis_cluster, uid, count=4)
    sub = subscriber(redis_cluster.url, max_deliveries=2, retry_backoff=0.05)
    for topic in topics:

        @sub.on(topic)
        async def fail(topic: str, event: dict[str, Any]) -> None:
            raise RuntimeError("always")

    async with sub, EventPublisher(redis_cluster.url, transport="stream") as pub:
        for topic in topics:
            await pub.publish_many(topic, [{"n": n} for n in range(3)])

        await wait_until(
            lambda: all(rc.xlen(dead_letter_key(t)) == 3 for t in topics), timeout=20
        )

    for topic in topics:
        assert key_slot(dead_letter_key(topic).encode()) == key_slot(
            stream_key(topic).encode()
        )
        letters: list[Any] = rc.xrange(dead_letter_key(topic)) or []
        assert {fields["topic"] for _, fields in letters} == {topic}
        assert pending(rc, topic) == 0

    assert sub.get_stats()["dead_lettered"] == 3 * len(topics)


async def test_entries_of_a_consumer_that_vanished_are_reclaimed_on_every_shard(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, uid: str
) -> None:
    topics = spread_topics(redis_cluster, uid, count=4)
    stuck = subscriber(redis_cluster.url, consumer=f"stuck-{uid}")
    started: list[str] = []
    for topic in topics:

        @stuck.on(topic)
        async def hang(topic: str, event: dict[str, Any]) -> None:
            started.append(topic)
            await anyio.sleep_forever()

    async with EventPublisher(redis_cluster.url, transport="stream") as pub:
        for topic in topics:
            await pub.publish_many(topic, [{"n": n} for n in range(5)])

    async with stuck:
        await wait_until(lambda: len(started) == 5 * len(topics), timeout=20)
        # Gone without settling: its handlers are cancelled mid-way, as in
        # a process that dies, and its entries stay pending under its name.
        stuck.abort()

    assert sum(pending(rc, topic) for topic in topics) == 5 * len(topics)
    handled: Counter[tuple[str, int]] = Counter()
    rescuer = subscriber(
        redis_cluster.url,
        consumer=f"rescuer-{uid}",
        claim_min_idle=0.3,
        claim_interval=0.2,
    )
    for topic in topics:

        @rescuer.on(topic)
        async def record(topic: str, event: dict[str, Any]) -> None:
            handled[(topic, event["n"])] += 1

    async with rescuer:
        await wait_until(lambda: len(handled) == 5 * len(topics), timeout=20)

    assert set(handled.values()) == {1}
    assert rescuer.get_stats()["reclaimed"] == 5 * len(topics)
    assert all(pending(rc, topic) == 0 for topic in topics)


async def test_instances_in_a_group_share_the_shards_and_a_clean_stop_leaves_none(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, uid: str
) -> None:
    topics = spread_topics(redis_cluster, uid, count=3)
    handled: Counter[tuple[str, int]] = Counter()
    by_instance: Counter[int] = Counter()
    instances = [subscriber(redis_cluster.url, read_count=5) for _ in range(3)]
    for index, instance in enumerate(instances):
        for topic in topics:

            @instance.on(topic)
            async def record(topic: str, event: dict[str, Any], i: int = index) -> None:
                await anyio.sleep(0.005)
                handled[(topic, event["n"])] += 1
                by_instance[i] += 1

    async with (
        instances[0],
        instances[1],
        instances[2],
        EventPublisher(redis_cluster.url, transport="stream") as pub,
    ):
        for topic in topics:
            await pub.publish_many(topic, [{"n": n} for n in range(100)])

        await wait_until(lambda: len(handled) == 100 * len(topics), timeout=30)

    assert set(handled.values()) == {1}
    assert sum(by_instance.values()) == 100 * len(topics)
    for topic in topics:
        consumers = rc.xinfo_consumers(stream_key(topic), GROUP)
        assert len(consumers) == 3
        # Stopped cleanly: no entry is left pending under any of them.
        assert {int(row["pending"]) for row in consumers} == {0}
        assert pending(rc, topic) == 0


async def test_consumption_follows_a_topic_whose_slot_moves_to_another_master(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, uid: str
) -> None:
    topic = f"moving-{uid}"
    handled: Counter[int] = Counter()
    sub = subscriber(redis_cluster.url)

    @sub.on(topic)
    async def record(topic: str, event: dict[str, Any]) -> None:
        handled[event["n"]] += 1

    async with sub, EventPublisher(redis_cluster.url, transport="stream") as pub:
        await pub.publish_many(topic, [{"n": n} for n in range(50)])
        await wait_until(lambda: len(handled) == 50)
        source = redis_cluster.master_of(stream_key(topic))
        target = next(
            redis_cluster.master_of(stream_key(other))
            for other in redis_cluster.spread(f"other-{uid}", 3, key=stream_key)
            if redis_cluster.master_of(stream_key(other)) is not source
        )
        # The stream moves with its group (MIGRATE carries both); reads and
        # acknowledgements follow the MOVED redirection.
        redis_cluster.move_slot(stream_key(topic), target)
        await pub.publish_many(topic, [{"n": n} for n in range(50, 100)])
        await wait_until(lambda: len(handled) == 100, timeout=20)

    assert set(handled.values()) == {1}
    assert pending(rc, topic) == 0
