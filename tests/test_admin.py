"""EventAdmin and the instance stats hash, on a real redis-server.

Groups, lag and pending come from a real ``EventSubscriber`` on streams that
handled some of the published events; dead letters are made by a real
subscriber (a handler that fails with ``max_deliveries=1``, and an entry that
is not JSON). Every topic and group name carries ``uid``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    ConfigurationError,
    EventProcessor,
    EventPublisher,
    EventSubscriber,
    RedisUnavailableError,
)
from redis_events._constants import DEFAULT_PROCESSOR_TOPICS
from redis_events._keys import dead_letter_key, instance_key, stream_key
from redis_events.admin import EventAdmin
from tests.helpers import wait_until
from tests.redis_server import free_port

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis

pytestmark = pytest.mark.redis

FAST: dict[str, Any] = {
    "retry_backoff": 0.1,
    "claim_interval": 0.5,
    "claim_min_idle": 1.0,
    "block_seconds": 0.3,
}
# Stats written every 0.1 s, kept for 2 s after the last write.
STATS: dict[str, Any] = {"instance_stats_interval": 0.1, "instance_stats_ttl": 2}
SECRET = "SECRET-admin-5d1e"


def stream_subscriber(url: str, group: str, **options: Any) -> EventSubscriber:
    """Return a subscriber on streams with short timings, reading from the start."""
    return EventSubscriber(
        url, transport="stream", group=group, start_from="all", **(FAST | options)
    )


def counter(into: list[int]) -> Callable[[str, dict[str, Any]], Any]:
    """Return a handler that appends each event's ``n``."""

    async def handle(topic: str, event: dict[str, Any]) -> None:
        into.append(event["n"])

    return handle


def pending(r: redis.Redis, topic: str, group: str) -> int:
    """Return the group's pending count (XPENDING)."""
    return int(r.xpending(stream_key(topic), group)["pending"])


async def publish(url: str, topic: str, numbers: range) -> list[str]:
    """Publish ``{"n": n}`` for each number on streams; return the entry ids."""
    async with EventPublisher(url, transport="stream") as pub:
        ids = await pub.publish_many(topic, [{"n": n} for n in numbers])

    return [str(i) for i in ids]


# Groups: lag, pending, consumers.


async def test_groups_report_lag_pending_and_the_oldest_pending_entry(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group, n, m = f"{uid}-orders", f"{uid}-g", 10, 4
    handled: list[int] = []
    first = stream_subscriber(redis_url, group, consumer="first")
    first.on(topic)(counter(handled))
    await publish(redis_url, topic, range(m))
    async with first:
        await wait_until(lambda: len(handled) == m and pending(r, topic, group) == 0)

    ids = await publish(redis_url, topic, range(m, n))
    async with EventAdmin(redis_url) as admin:
        [idle] = await admin.groups([topic])

        release = anyio.Event()
        started: list[int] = []

        async def hold(topic: str, event: dict[str, Any]) -> None:
            started.append(event["n"])
            await release.wait()

        second = stream_subscriber(
            redis_url, group, consumer="second", max_concurrency=2, read_count=1
        )
        second.on(topic)(hold)
        async with second:
            await wait_until(lambda: len(started) == 2)
            [busy] = await admin.groups([topic])
            release.set()
            await wait_until(
                lambda: pending(r, topic, group) == 0 and len(started) == 6
            )
            [drained] = await admin.groups([topic])

    assert (idle.topic, idle.group) == (topic, group)
    assert idle.lag == n - m
    assert idle.pending == 0
    assert idle.oldest_pending_id is None
    assert [c.name for c in idle.consumers] == ["first"]
    assert idle.consumers[0].pending == 0
    assert idle.consumers[0].idle >= 0
    # Delivered entries are pending (held by handlers or read ahead); the
    # rest of the backlog is lag, and nothing is counted twice.
    assert busy.pending >= 2
    assert busy.lag is not None
    assert busy.lag + busy.pending == n - m
    assert busy.oldest_pending_id == ids[0]
    assert busy.oldest_pending_idle is not None
    assert busy.oldest_pending_idle >= 0
    assert {c.name for c in busy.consumers} == {"first", "second"}
    assert sum(c.pending for c in busy.consumers) == busy.pending
    assert (drained.lag, drained.pending, drained.last_delivered_id) == (0, 0, ids[-1])


async def test_topics_are_discovered_and_an_unknown_topic_is_named(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    r.xadd(stream_key(f"{uid}-a"), {"data": "{}"})
    r.xadd(dead_letter_key(f"{uid}-b"), {"data": "{}", "reason": "x"})
    r.set(f"redis-events:{{{uid}-c}}:other", "not a topic key")

    async with EventAdmin(redis_url) as admin:
        topics = await admin.topics()
        streams = {s.topic: s for s in await admin.streams([f"{uid}-a", f"{uid}-b"])}
        with pytest.raises(ConfigurationError, match=f"unknown topic '{uid}-z'"):
            await admin.groups([f"{uid}-z"])

    assert {t for t in topics if t.startswith(uid)} == {f"{uid}-a", f"{uid}-b"}
    assert (streams[f"{uid}-a"].length, streams[f"{uid}-a"].entries_added) == (1, 1)
    assert (streams[f"{uid}-b"].length, streams[f"{uid}-b"].dead_letters) == (0, 1)


async def test_an_unreachable_redis_is_a_redis_unavailable_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailableError, match="unavailable"):
        async with EventAdmin(url, socket_connect_timeout=1):
            pass


# Dead letters: list, show, requeue, purge.


async def test_dead_letters_are_listed_requeued_and_then_handled(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}-pay", f"{uid}-g"
    failing = {1, 3}
    handled: list[int] = []
    sub = stream_subscriber(redis_url, group, max_deliveries=1)

    @sub.on(topic)
    async def handle(topic: str, event: dict[str, Any]) -> None:
        if event["n"] in failing:
            raise ValueError("declined")

        handled.append(event["n"])

    dead = dead_letter_key(topic)
    async with sub, EventAdmin(redis_url) as admin:
        ids = await publish(redis_url, topic, range(5))
        await wait_until(lambda: r.xlen(dead) == 2 and len(handled) == 3)
        letters = await admin.dead_letters(topic)
        shown = await admin.dead_letter(topic, letters[1].id)
        failing.clear()
        result = await admin.requeue(topic, [letters[0].id])
        await wait_until(lambda: 1 in handled)
        again = await admin.requeue(topic, [letters[0].id])
        rest = await admin.requeue(topic)
        await wait_until(lambda: 3 in handled and pending(r, topic, group) == 0)
        nothing = await admin.dead_letter(topic, letters[0].id)

    assert [(d.original_id, d.delivery_count) for d in letters] == [
        (ids[1], 1),
        (ids[3], 1),
    ]
    assert all("failed" in d.reason and d.group == group for d in letters)
    assert shown == letters[1]
    assert shown is not None
    body = shown.redacted_data()
    assert isinstance(body, dict)
    assert body["n"] == 3
    assert list(result.requeued) == [letters[0].id]
    assert result.requeued[letters[0].id] > ids[-1]
    assert (result.missing, result.empty) == ([], [])
    # A second requeue of the same id finds nothing: never requeued twice.
    assert (again.requeued, again.missing) == ({}, [letters[0].id])
    assert list(rest.requeued) == [letters[1].id]
    assert sorted(handled) == [0, 1, 2, 3, 4]
    assert r.xlen(dead) == 0
    assert nothing is None


async def test_an_invalid_entry_is_listed_without_its_payload_and_can_be_purged(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}-raw", f"{uid}-g"
    sub = stream_subscriber(redis_url, group, max_deliveries=1)

    @sub.on(topic)
    async def refuse(topic: str, event: dict[str, Any]) -> None:
        raise ValueError("refused")

    key, dead = stream_key(topic), dead_letter_key(topic)
    async with sub:
        r.xadd(key, {"data": f"not json {SECRET}"})
        r.xadd(
            key, {"data": f'{{"key_value": "{SECRET}", "nested": [{{"key_value": 1}}]'}
        )
        r.xadd(key, {"data": f'{{"key_value": "{SECRET}", "x": [{{"key_value": 1}}]}}'})
        await wait_until(lambda: r.xlen(dead) == 3)

    async with EventAdmin(redis_url) as admin:
        letters = await admin.dead_letters(topic)
        paged = await admin.dead_letters(topic, count=1, after=letters[0].id)
        purged_one = await admin.purge(topic, [letters[0].id, "1-1"])
        purged_rest = await admin.purge(topic)
        purged_none = await admin.purge(topic)

    assert [d.reason.split(":")[0] for d in letters] == ["invalid"] * 2 + [
        "handler failed 1 times"
    ]
    assert [str(d.redacted_data()) for d in letters[:2]] == [
        f"<{len(f'not json {SECRET}')} bytes, not JSON: not shown>",
        f"<{len(letters[1].data or b'')} bytes, not JSON: not shown>",
    ]
    assert letters[2].redacted_data() == {
        "key_value": "**********",
        "x": [{"key_value": "**********"}],
    }
    assert SECRET not in repr(letters)
    assert paged == [letters[1]]
    assert (purged_one, purged_rest, purged_none) == (1, 2, 0)
    assert r.exists(dead) == 0


async def test_requeue_keeps_other_original_fields_and_skips_empty_letters(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"{uid}-fields"
    dead = dead_letter_key(topic)
    full = r.xadd(dead, {"data": "{}", "original:trace": "t-1", "reason": "x"})
    empty = r.xadd(dead, {"reason": "no body", "original_id": "1-1"})

    async with EventAdmin(redis_url, stream_maxlen=0) as admin:
        result = await admin.requeue(topic)

    entries: Any = r.xrange(stream_key(topic))
    [(new_id, fields)] = entries
    assert result.requeued == {str(full): str(new_id)}
    assert result.empty == [str(empty)]
    assert fields == {"data": "{}", "trace": "t-1"}
    left: Any = r.xrange(dead)
    assert [str(i) for i, _ in left] == [str(empty)]


# The instance stats hash.


async def test_a_running_stream_subscriber_writes_its_stats_hash_with_a_ttl(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}-stats", f"{uid}-g"
    handled: list[int] = []
    sub = stream_subscriber(redis_url, group, consumer="c1", **STATS)
    sub.on(topic)(counter(handled))
    key = instance_key(group, "c1")
    async with sub, EventAdmin(redis_url) as admin:
        await publish(redis_url, topic, range(7))
        await wait_until(lambda: len(handled) == 7 and pending(r, topic, group) == 0)
        stats = sub.get_stats()
        await wait_until(lambda: r.hget(key, "events_handled") == "7")
        [instance] = [i for i in await admin.instances() if i.group == group]
        ttl = r.ttl(key)

    assert (instance.key, instance.consumer, instance.transport) == (
        key,
        "c1",
        "stream",
    )
    assert instance.topics == (topic,)
    assert instance.started_at <= instance.last_seen
    assert instance.stats == stats
    assert stats["events_handled"] == 7
    assert 0 < ttl <= 2
    assert instance.ttl is not None
    assert 0 < instance.ttl <= 2
    # A clean stop deletes the hash.
    assert r.exists(key) == 0


async def test_a_pubsub_subscriber_writes_its_stats_hash_and_it_expires(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    group = f"{uid}-g"
    sub = EventSubscriber(redis_url, group=group, consumer="p1", **STATS)
    sub.on(KEY_SUBMISSION_TOPIC, f"{uid}-b")(counter([]))
    key = instance_key(group, "p1")
    async with sub:
        await wait_until(lambda: r.exists(key) == 1)
        fields = r.hgetall(key)
        # A dead instance (no stop, no more writes) leaves only its TTL.
        r.rename(key, f"{key}-dead")
        # Read at once: the stop below may take a while on a loaded machine.
        ttl = r.ttl(f"{key}-dead")

    assert fields["transport"] == "pubsub"
    assert fields["topics"] == f"{uid}-b,{KEY_SUBMISSION_TOPIC}"
    assert int(fields["events_received"]) == 0
    assert 0 < ttl <= 2
    await wait_until(lambda: r.exists(f"{key}-dead") == 0, timeout=5)


async def test_a_failing_stats_write_is_logged_once_and_never_stops_the_subscriber(
    redis_url: str, r: redis.Redis, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = f"{uid}-w", f"{uid}-g"
    handled: list[int] = []
    key = instance_key(group, "c1")
    r.set(key, "a string: HSET fails with WRONGTYPE")
    sub = stream_subscriber(redis_url, group, consumer="c1", **STATS)
    sub.on(topic)(counter(handled))
    with caplog.at_level(logging.DEBUG, logger="redis_events"):
        async with sub:
            await publish(redis_url, topic, range(3))
            await wait_until(lambda: len(handled) == 3)

            def failures() -> list[logging.LogRecord]:
                return [
                    rec
                    for rec in caplog.records
                    if "instance stats" in rec.getMessage().lower()
                ]

            await wait_until(lambda: len(failures()) >= 3)
            r.delete(key)
            await wait_until(lambda: r.type(key) == "hash")

    levels = [rec.levelno for rec in failures()]
    assert levels[0] == logging.WARNING
    assert set(levels[1:-1]) == {logging.DEBUG}
    assert "WRONGTYPE" in failures()[0].getMessage()
    assert "written to" in failures()[-1].getMessage()
    assert sorted(handled) == [0, 1, 2]


async def test_instance_stats_can_be_switched_off(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}-off", f"{uid}-g"
    handled: list[int] = []
    sub = stream_subscriber(redis_url, group, consumer="c1", instance_stats_interval=0)
    sub.on(topic)(counter(handled))
    async with sub:
        await publish(redis_url, topic, range(2))
        await wait_until(lambda: len(handled) == 2)

    assert r.keys(f"redis-events:instances:{group}:*") == []


async def test_a_processor_writes_its_business_counters_too(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    group = f"{uid}-p"
    processor = EventProcessor(
        redis_url, transport="stream", group=group, consumer="p1", **(FAST | STATS)
    )
    key = instance_key(group, "p1")
    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        await wait_until(lambda: r.exists(key) == 1)
        fields = r.hgetall(key)
        await processor.stop()

    assert fields["transport"] == "stream"
    assert fields["topics"] == ",".join(sorted(DEFAULT_PROCESSOR_TOPICS))
    assert {"keys_processed", "profiles_processed", "events_handled"} <= set(fields)
    assert r.exists(key) == 0


def test_a_ttl_not_above_the_interval_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="instance_stats_ttl"):
        EventSubscriber(instance_stats_interval=10, instance_stats_ttl=10)
