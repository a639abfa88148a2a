"""Fault injection on the streams transport: restarts, kills, freezes, idling.

Each test owns its redis-server and breaks it while a stream consumer runs.
The streams transport is at least once, so the expected results are counts:
every entry whose XADD returned an id is handled (lost 0), duplicates are
counted and logged, and reconnects are counted. Timings are shortened through
settings; a time here is only a polling limit.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import redis

from redis_events import EventPublisher, EventSubscriber, RedisUnavailableError
from redis_events._keys import stream_key
from tests.helpers import wait_until
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.redis, pytest.mark.fault]

TOPIC = "orders"
GROUP = "fault-group"
CPU_LIMIT = 0.25
# Reads block 1 s, retries after 0.2 s, claims every 0.5 s of entries idle
# for 2 s; a connection that does not answer within 1-2 s is given up.
FAST: dict[str, Any] = {
    "group": GROUP,
    "start_from": "all",
    "block_seconds": 1,
    "claim_interval": 0.5,
    "claim_min_idle": 2,
    "retry_backoff": 0.2,
    "socket_timeout": 2,
    "socket_connect_timeout": 1,
    "health_check_interval": 2,
    "reconnect_backoff_cap": 0.5,
}
AOF_ARGS = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


class Handled:
    """A handler that counts the deliveries of each event's ``n``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.counts: Counter[int] = Counter()
        self.delay = delay

    async def __call__(self, topic: str, event: dict[str, Any]) -> None:
        if self.delay:
            await anyio.sleep(self.delay)
        self.counts[event["n"]] += 1

    def has_all(self, numbers: list[int]) -> bool:
        """Tell whether every one of ``numbers`` was handled at least once."""
        return all(self.counts[n] for n in numbers)

    def lost(self, numbers: list[int]) -> int:
        """Count the ``numbers`` never handled."""
        return sum(1 for n in numbers if not self.counts[n])

    def duplicates(self) -> int:
        """Count the deliveries beyond the first of each event."""
        return sum(count - 1 for count in self.counts.values())


@pytest.fixture
def own_r(own_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """R for the test's own server; it reconnects by itself after a restart."""
    client = own_redis_server.client()
    yield client
    client.close()


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server owned by one test that writes every command to its AOF."""
    server = RedisServer(tmp_path / "redis-aof", args=AOF_ARGS).start()
    yield server
    server.stop()


def consumer(url: str, handler: Handled, **options: Any) -> EventSubscriber:
    """Return a stream subscriber on ``TOPIC`` with short timings."""
    sub = EventSubscriber(url, transport="stream", **(FAST | options))
    sub.on(TOPIC)(handler)
    return sub


def producer(url: str) -> EventPublisher:
    """Return a stream publisher that retries through a short outage."""
    return EventPublisher(
        url, transport="stream", publish_retry_timeout=15, socket_timeout=2
    )


def pending(r: redis.Redis) -> int:
    """Return XPENDING's count for the group, or -1 if R cannot ask now."""
    try:
        return int(r.xpending(stream_key(TOPIC), GROUP)["pending"])
    except redis.RedisError:
        return -1


def sub_connection_ids(r: redis.Redis) -> list[str]:
    """Return the CLIENT LIST ids of the consumer's connections."""
    entries: list[dict[str, str]] = r.client_list()
    return [e["id"] for e in entries if e.get("name") == "redis-events-sub"]


async def publish_numbers(pub: EventPublisher, numbers: range, into: list[int]) -> None:
    """Publish ``{"n": n}`` one by one; record each ``n`` that got an entry id."""
    for n in numbers:
        try:
            entry_id = await pub.publish(TOPIC, {"n": n})
        except RedisUnavailableError:
            logger.info("publish of %d gave up", n)
            continue
        assert isinstance(entry_id, str)
        into.append(n)
        await anyio.sleep(0.005)


async def settled(
    handled: Handled, numbers: list[int], r: redis.Redis, limit: float = 20
) -> None:
    """Wait until every one of ``numbers`` is handled and nothing is pending."""

    def done() -> bool:
        return handled.has_all(numbers) and pending(r) == 0

    try:
        await wait_until(done, timeout=limit)
    except AssertionError:
        msg = f"lost {handled.lost(numbers)} of {len(numbers)}, pending {pending(r)}"
        raise AssertionError(msg) from None


def records_at_least(
    caplog: pytest.LogCaptureFixture, level: int, name: str = "redis_events"
) -> list[str]:
    """Return the messages of ``name``'s records at ``level`` or above."""
    return [
        rec.getMessage()
        for rec in caplog.records
        if rec.levelno >= level and rec.name.startswith(name)
    ]


async def test_restart_with_aof_loses_no_published_entry_and_keeps_the_group(
    aof_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    server, handled, published = aof_server, Handled(), list[int]()
    r = server.client()
    sub = consumer(server.url, handled)
    async with sub, producer(server.url) as pub:
        await publish_numbers(pub, range(200), published)
        await settled(handled, published, r)
        before = sub.get_stats()

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_numbers, pub, range(200, 500), published)
            await wait_until(lambda: len(published) >= 250)
            await anyio.to_thread.run_sync(server.stop)
            await anyio.sleep(1)
            await anyio.to_thread.run_sync(server.start)

        await settled(handled, published, r, limit=30)
        stats = sub.get_stats()

    r.close()
    counts = {
        "published": len(published),
        "delivered": handled.counts.total(),
        "distinct": len(handled.counts),
        "lost": handled.lost(published),
        "duplicated": handled.duplicates(),
        "reconnects": stats["reconnects"] - before["reconnects"],
    }
    logger.info("stream restart with AOF: %s; stats %s", counts, stats)
    assert counts["published"] >= 450
    assert counts["lost"] == 0
    assert stats["groups_recreated"] == 0
    assert counts["reconnects"] >= 1
    assert counts["distinct"] == len(set(published))


async def test_sigkill_without_persistence_recreates_the_group_once(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    server, handled = own_redis_server, Handled(0.002)
    before_kill: list[int] = []
    after: list[int] = []
    sub = consumer(server.url, handled)
    async with sub, producer(server.url) as pub:
        await publish_numbers(pub, range(300), before_kill)
        await wait_until(lambda: len(handled.counts) >= 50)
        server.kill()
        await anyio.sleep(1)
        server.start()
        await publish_numbers(pub, range(1000, 1200), after)
        await settled(handled, after, own_r)
        stats = sub.get_stats()

    counts = {
        "handled before kill": sum(1 for n in before_kill if handled.counts[n]),
        "published after": len(after),
        "lost after": handled.lost(after),
        "duplicated": handled.duplicates(),
        "reconnects": stats["reconnects"],
    }
    logger.info("stream SIGKILL: %s; stats %s", counts, stats)
    assert counts["published after"] == 200
    assert counts["lost after"] == 0
    assert stats["groups_recreated"] == 1
    assert stats["reconnects"] >= 1


async def test_killed_consumer_connections_lose_no_entry_and_leave_nothing_pending(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    server, handled, published = own_redis_server, Handled(0.004), list[int]()
    kills: list[int] = []
    sub = consumer(server.url, handled)
    async with sub, producer(server.url) as pub:
        await wait_until(lambda: bool(sub_connection_ids(own_r)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_numbers, pub, range(500), published)
            for _ in range(5):
                await anyio.sleep(0.4)
                ids = sub_connection_ids(own_r)
                for client_id in ids:
                    own_r.client_kill_filter(_id=client_id)
                kills.append(len(ids))

        await settled(handled, published, own_r)
        stats = sub.get_stats()

    counts = {
        "kills": kills,
        "delivered": handled.counts.total(),
        "distinct": len(handled.counts),
        "duplicated": handled.duplicates(),
        "reconnects": stats["reconnects"],
    }
    logger.info("stream CLIENT KILL: %s; stats %s", counts, stats)
    assert sum(1 for killed in kills if killed) >= 3
    assert len(published) == 500
    assert counts["distinct"] == 500
    assert pending(own_r) == 0
    assert stats["reconnects"] >= 1


async def test_frozen_server_is_noticed_and_every_entry_is_handled_after_thaw(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    caplog.set_level(logging.WARNING, logger="redis_events")
    server, handled, published = own_redis_server, Handled(0.01), list[int]()
    sub = consumer(server.url, handled, max_concurrency=1)
    async with sub, producer(server.url) as pub:
        await publish_numbers(pub, range(300), published)
        await wait_until(lambda: len(handled.counts) >= 20)
        in_flight_at_freeze = 300 - len(handled.counts)
        server.freeze()
        try:
            await anyio.sleep(3)
        finally:
            server.thaw()
        await settled(handled, published, own_r)
        stats = sub.get_stats()

    warnings = records_at_least(caplog, logging.WARNING, "redis_events._streams")
    counts = {
        "unhandled at freeze": in_flight_at_freeze,
        "distinct": len(handled.counts),
        "duplicated": handled.duplicates(),
        "reconnect_attempts": stats["reconnect_attempts"],
        "warnings": len(warnings),
    }
    logger.info("stream freeze: %s; stats %s; warnings %s", counts, stats, warnings)
    assert in_flight_at_freeze > 0
    assert stats["reconnect_attempts"] >= 1 or warnings
    assert counts["distinct"] == 300
    assert pending(own_r) == 0


@pytest.mark.slow
async def test_idle_consumer_survives_server_timeout_and_acks_what_follows(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    caplog.set_level(logging.INFO, logger="redis_events")
    server, handled, published = own_redis_server, Handled(), list[int]()
    own_r.config_set("timeout", 2)
    # Claims every 5 s: between them the pooled connection idles past the
    # server's timeout, while the read blocking 1 s at a time stays busy.
    sub = consumer(server.url, handled, claim_interval=5, claim_min_idle=15)
    names_before: list[str] = []
    async with sub, producer(server.url) as pub:
        await publish_numbers(pub, range(5), published)
        await settled(handled, published, own_r)
        names_before = sub_connection_ids(own_r)

        cpu, wall = time.process_time(), time.monotonic()
        await anyio.sleep(8)
        idle_cpu = (time.process_time() - cpu) / (time.monotonic() - wall)
        names_after = sub_connection_ids(own_r)

        await publish_numbers(pub, range(100, 120), published)
        await settled(handled, published, own_r)
        stats = sub.get_stats()

    errors = records_at_least(caplog, logging.ERROR)
    counts = {
        "sub connection ids before/after idle": (names_before, names_after),
        "idle cpu": round(idle_cpu, 4),
        "distinct": len(handled.counts),
        "duplicated": handled.duplicates(),
        "reconnects": stats["reconnects"],
    }
    logger.info("stream idle: %s; stats %s", counts, stats)
    # The fault happened: Redis closed an idle pooled connection of the consumer.
    assert set(names_before) - set(names_after)
    assert counts["distinct"] == 25
    assert stats["acked"] >= 25
    assert pending(own_r) == 0
    assert errors == []
    assert idle_cpu < CPU_LIMIT
