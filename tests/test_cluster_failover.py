"""Failovers on a Redis Cluster and behind Sentinel, with exact counts.

Each test owns its deployment and SIGKILLs a master while a subscriber runs.
Events published before a replication fence must all be handled; events
acknowledged by the dying master without a fence may be lost to
asynchronous replication and are counted. The counts are logged by
``tests.failover`` (run with ``--log-cli-level=INFO`` to see them) and
attached to the test report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from redis_events import EventPublisher, EventSubscriber
from redis_events._keys import stream_key
from tests.cluster_servers import _command
from tests.failover_support import Ledger, fence
from tests.helpers import wait_until

if TYPE_CHECKING:
    from tests.cluster_servers import ClusterServers, SentinelServers
    from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.fault]

RecordProperty = Callable[[str, object], None]

BEFORE = 300
AFTER = 100
RECOVERY = 30.0

STREAM_OPTIONS: dict[str, Any] = {
    "transport": "stream",
    "group": "workers",
    "start_from": "all",
    "block_seconds": 0.5,
    "claim_min_idle": 1.0,
    "claim_interval": 0.5,
    "reconnect_backoff_cap": 0.5,
}


def stream_subscriber(url: str, ledgers: dict[str, Ledger]) -> EventSubscriber:
    sub = EventSubscriber(url, **STREAM_OPTIONS)
    for topic, ledger in ledgers.items():

        @sub.on(topic)
        async def record(
            topic: str, event: dict[str, Any], led: Ledger = ledger
        ) -> None:
            # Slow enough that the kill lands while entries are in flight.
            await anyio.sleep(0.002)
            led.handle(event)

    return sub


async def publish_phase(
    pub: EventPublisher, topic: str, ledger: Ledger, phase: str, numbers: range
) -> None:
    for first in range(numbers.start, numbers.stop, 50):
        batch = range(first, min(first + 50, numbers.stop))
        await pub.publish_many(topic, [{"n": n} for n in batch])
        for n in batch:
            ledger.ack(phase, n)


async def publish_until(
    pub: EventPublisher,
    topic: str,
    ledger: Ledger,
    start: int,
    stop: anyio.Event,
) -> None:
    """Publish one event at a time, unfenced, until ``stop`` is set."""
    n = start
    while not stop.is_set():
        await pub.publish(topic, {"n": n})
        ledger.ack("unfenced", n)
        n += 1
        await anyio.sleep(0.005)


def stream_numbers(master: RedisServer, topic: str) -> set[int]:
    """Return the event numbers in ``topic``'s stream on ``master``."""
    client = master.client()
    try:
        entries: list[Any] = _command(client, "XRANGE", stream_key(topic), "-", "+")
    finally:
        client.close()

    return {int(json.loads(fields["data"])["n"]) for _, fields in entries}


async def test_stream_consumption_resumes_after_a_cluster_master_is_killed(
    own_redis_cluster: ClusterServers, record_property: RecordProperty, uid: str
) -> None:
    cluster = own_redis_cluster
    victim, bystander = cluster.spread(f"fail-{uid}", 2, key=stream_key)
    ledgers = {victim: Ledger(), bystander: Ledger()}
    dead = cluster.master_of(stream_key(victim))
    sub = stream_subscriber(cluster.url, ledgers)
    pub = EventPublisher(
        cluster.url, transport="stream", publish_retry_timeout=RECOVERY
    )
    async with sub, pub:
        for topic, ledger in ledgers.items():
            await publish_phase(pub, topic, ledger, "fenced", range(BEFORE))

        assert fence(dead, f"redis-events:{{{victim}}}:fence") == 1
        stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish_until, pub, victim, ledgers[victim], 10_000, stop)
            await anyio.sleep(0.2)
            dead.kill()
            promoted = await anyio.to_thread.run_sync(
                cluster.wait_promoted, stream_key(victim), dead
            )
            stop.set()

        for topic, ledger in ledgers.items():
            await publish_phase(
                pub, topic, ledger, "after", range(20_000, 20_000 + AFTER)
            )

        # What the promoted replica has of the unfenced events is all that
        # can ever be handled; the rest was lost with the dead master.
        kept = stream_numbers(promoted, victim)
        unfenced = ledgers[victim].acknowledged.get("unfenced", set())
        replication_loss = unfenced - kept
        expected = {
            topic: ledger.all_acknowledged()
            - (replication_loss if topic == victim else set())
            for topic, ledger in ledgers.items()
        }
        await wait_until(
            lambda: all(expected[t] <= set(ledgers[t].handled) for t in ledgers),
            timeout=RECOVERY,
        )

    stats = sub.get_stats()
    counts = ledgers[victim].report(
        "cluster stream failover (victim topic)",
        record_property,
        replication_loss=len(replication_loss),
        reconnects=stats["reconnects"],
    )
    ledgers[bystander].report("cluster stream failover (bystander topic)")
    assert not ledgers[victim].missing("fenced")
    assert not ledgers[victim].missing("after")
    assert not ledgers[bystander].missing()
    assert counts["lost"] == len(replication_loss)
    assert stats["reconnects"] >= 1


async def test_sharded_pubsub_resumes_on_the_promoted_replica(
    own_redis_cluster: ClusterServers, record_property: RecordProperty, uid: str
) -> None:
    cluster = own_redis_cluster
    victim, bystander = cluster.spread(f"psfail-{uid}", 2)
    ledgers = {victim: Ledger(), bystander: Ledger()}
    dead = cluster.master_of(victim)
    sub = EventSubscriber(cluster.url, reconnect_backoff_cap=0.5)
    for topic, ledger in ledgers.items():

        @sub.on(topic)
        async def record(
            topic: str, event: dict[str, Any], led: Ledger = ledger
        ) -> None:
            led.handle(event)

    pub = EventPublisher(cluster.url, publish_retry_timeout=RECOVERY)
    async with sub, pub:
        for n in range(20):
            for topic, ledger in ledgers.items():
                await pub.publish(topic, {"n": n})
                ledger.ack("before", n)

        await wait_until(
            lambda: all(len(led.handled) == 20 for led in ledgers.values())
        )
        dead.kill()
        promoted = await anyio.to_thread.run_sync(cluster.wait_promoted, victim, dead)

        def resubscribed() -> bool:
            client = promoted.client()
            try:
                return victim in _command(client, "PUBSUB", "SHARDCHANNELS")
            finally:
                client.close()

        await wait_until(resubscribed, timeout=RECOVERY)
        for n in range(100, 150):
            for topic, ledger in ledgers.items():
                await pub.publish(topic, {"n": n})
                ledger.ack("after", n)

        await wait_until(
            lambda: all(
                led.acknowledged["after"] <= set(led.handled)
                for led in ledgers.values()
            )
        )

    stats = sub.get_stats()
    ledgers[victim].report(
        "cluster sharded pub/sub failover",
        record_property,
        reconnects=stats["reconnects"],
    )
    assert stats["reconnects"] >= 1
    assert not ledgers[victim].missing()
    assert not ledgers[bystander].missing()


async def test_stream_consumption_resumes_after_sentinel_fails_over(
    own_sentinel_group: SentinelServers, record_property: RecordProperty, uid: str
) -> None:
    group = own_sentinel_group
    topic = f"sentinel-{uid}"
    ledger = Ledger()
    sub = stream_subscriber(group.url, {topic: ledger})
    pub = EventPublisher(group.url, transport="stream", publish_retry_timeout=RECOVERY)
    async with sub, pub:
        await publish_phase(pub, topic, ledger, "fenced", range(BEFORE))
        assert fence(group.master, "fence") == 1
        stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish_until, pub, topic, ledger, 10_000, stop)
            await anyio.sleep(0.2)
            group.master.kill()
            await anyio.to_thread.run_sync(group.wait_failover)
            stop.set()

        await publish_phase(pub, topic, ledger, "after", range(20_000, 20_000 + AFTER))
        kept = stream_numbers(group.replica, topic)
        replication_loss = ledger.acknowledged.get("unfenced", set()) - kept
        await wait_until(
            lambda: ledger.all_acknowledged() - replication_loss <= set(ledger.handled),
            timeout=RECOVERY,
        )

    stats = sub.get_stats()
    counts = ledger.report(
        "sentinel stream failover",
        record_property,
        replication_loss=len(replication_loss),
        reconnects=stats["reconnects"],
    )
    assert not ledger.missing("fenced")
    assert not ledger.missing("after")
    assert counts["lost"] == len(replication_loss)
    assert stats["reconnects"] >= 1


async def test_pubsub_resumes_after_sentinel_fails_over(
    own_sentinel_group: SentinelServers, record_property: RecordProperty, uid: str
) -> None:
    group = own_sentinel_group
    topic = f"sentinel-ps-{uid}"
    ledger = Ledger()
    sub = EventSubscriber(group.url, reconnect_backoff_cap=0.5, health_check_interval=2)

    @sub.on(topic)
    async def record(topic: str, event: dict[str, Any]) -> None:
        ledger.handle(event)

    pub = EventPublisher(group.url, publish_retry_timeout=RECOVERY)
    async with sub, pub:
        for n in range(20):
            await pub.publish(topic, {"n": n})
            ledger.ack("before", n)

        await wait_until(lambda: len(ledger.handled) == 20)
        group.master.kill()
        await anyio.to_thread.run_sync(group.wait_failover)

        def resubscribed() -> bool:
            client = group.replica.client()
            try:
                return topic in _command(client, "PUBSUB", "CHANNELS")
            finally:
                client.close()

        await wait_until(resubscribed, timeout=RECOVERY)
        for n in range(100, 150):
            await pub.publish(topic, {"n": n})
            ledger.ack("after", n)

        await wait_until(lambda: ledger.acknowledged["after"] <= set(ledger.handled))

    stats = sub.get_stats()
    ledger.report(
        "sentinel pub/sub failover", record_property, reconnects=stats["reconnects"]
    )
    assert stats["reconnects"] >= 1
    assert not ledger.missing()
