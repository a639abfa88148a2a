"""Fault injection on the pub/sub transport: restarts, outages, freezes, kills.

Each test owns its redis-server and breaks it the way a case in
``/work/shared/cases`` describes (BR-01, BR-04, BR-05), or the way the
cookbook there does (a frozen server, ``CLIENT KILL``). Pub/sub is at most
once, so only events published after R sees the resubscription are counted.
Measured values are logged at INFO by this module's logger.
"""

from __future__ import annotations

import builtins
import gc
import logging
import re
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio
import pytest
import redis
import redis.exceptions

import redis_events.exceptions
from redis_events import (
    KEY_SUBMISSION_TOPIC,
    PROCESSING_RESULTS_TOPIC,
    PROFILE_EVENTS_TOPIC,
    EventProcessor,
    EventPublisher,
    EventSubscriber,
    KeySubmitted,
    ProfileCreated,
    ProfileProcessed,
    ProfileResult,
    RedisUnavailableError,
    current_delivery,
)
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from anyio.abc import TaskGroup, TaskStatus

    from tests.redis_server import RedisServer

# TODO(streams): BR-04 and BR-05 also run a stream consumer (XADD 5 entries,
# 5 of 5 processed, at most 10 XREADGROUP calls while idle); add those checks
# here when the stream transport exists.

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.redis, pytest.mark.fault]

SECRET = "fault-injection-secret-7Qx2"
RESULTS_PATTERN = "processing_*"
CPU_LIMIT = 0.25

Seen = tuple[str, str | None, str | None]


def key_event(event_id: str) -> KeySubmitted:
    """Return a ``key_submitted`` event with a known id."""
    return KeySubmitted(key_value=SECRET, token_name="fault-test", event_id=event_id)


def profile_event(event_id: str) -> ProfileCreated:
    """Return a ``profile_created`` event with a known id."""
    return ProfileCreated(profile_id=event_id, profile_data={"n": 1}, event_id=event_id)


def result_event(event_id: str) -> ProfileProcessed:
    """Return a ``profile_processed`` result with a known id."""
    return ProfileProcessed(
        original_event={"event_id": event_id},
        result=ProfileResult(profile_id=1, action="created"),
        event_id=event_id,
    )


class Recorder:
    """A handler that records (channel, matched pattern, event id)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    async def __call__(self, topic: str, event: object) -> None:
        delivery = current_delivery()
        self.seen.append((delivery.topic, delivery.pattern, delivery.event_id))

    def ids(self) -> Counter[str | None]:
        """Count the deliveries per event id."""
        return Counter(event_id for _, _, event_id in self.seen)

    def has(self, *event_ids: str) -> bool:
        """Tell whether every one of ``event_ids`` was delivered."""
        ids = self.ids()
        return all(ids[event_id] for event_id in event_ids)


@dataclass
class Tasks:
    """Start service tasks in a task group and remember which ended."""

    group: TaskGroup
    ended: list[str] = field(default_factory=list)

    async def start(self, name: str, run: Callable[..., Awaitable[None]]) -> None:
        """Start ``run`` and wait until it reports it is ready."""

        async def watched(*, task_status: TaskStatus[None]) -> None:
            try:
                await run(task_status=task_status)
            finally:
                self.ended.append(name)

        await self.group.start(watched)


@asynccontextmanager
async def supervised() -> AsyncIterator[Tasks]:
    """Run a task group whose tasks the test can check are still alive."""
    async with anyio.create_task_group() as group:
        yield Tasks(group)


async def wait_for(
    predicate: Callable[[], bool],
    what: str,
    limit: float = 10.0,
    state: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` for up to ``limit`` seconds; say what failed."""
    try:
        await wait_until(predicate, timeout=limit)
    except AssertionError as exc:
        detail = f"; state: {state()!r}" if state is not None else ""
        msg = f"{what}: {exc}{detail}"
        raise AssertionError(msg) from None


def numsub(r: redis.Redis, *channels: str) -> list[int]:
    """Return PUBSUB NUMSUB for ``channels``, or -1 each if R cannot ask."""
    try:
        return [int(count) for _, count in r.pubsub_numsub(*channels)]
    except redis.ConnectionError:
        return [-1] * len(channels)


def numpat(r: redis.Redis) -> int:
    """Return PUBSUB NUMPAT, or -1 if R cannot ask."""
    try:
        return int(r.pubsub_numpat())
    except redis.ConnectionError:
        return -1


def pubsub_counts(r: redis.Redis, *channels: str) -> list[int]:
    """Return PUBSUB NUMSUB for ``channels`` followed by PUBSUB NUMPAT."""
    return [*numsub(r, *channels), numpat(r)]


def subscriber_records(
    records: list[logging.LogRecord], level: int
) -> list[logging.LogRecord]:
    """Return the subscriber side's records at ``level`` (not the publisher's)."""
    return [
        record
        for record in records
        if record.levelno == level
        and record.name.startswith("redis_events")
        and not record.name.startswith("redis_events.publisher")
    ]


def names_exception_class(message: str) -> bool:
    """Tell whether ``message`` names a real exception class."""
    modules = (builtins, redis.exceptions, redis_events.exceptions)
    for name in re.findall(r"\b[A-Z]\w*(?:Error|Exception)\b", message):
        for module in modules:
            candidate = getattr(module, name, None)
            if isinstance(candidate, type) and issubclass(candidate, BaseException):
                return True

    return False


def assert_no_lost_task_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Fail if asyncio reported a task exception nobody retrieved."""
    gc.collect()
    lost = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert lost == [], [r.getMessage() for r in lost]


def pub_connection_ids(r: redis.Redis) -> list[str]:
    """Return the ids of the publisher's connections in CLIENT LIST."""
    return [
        str(client["id"])
        for client in r.client_list()
        if client.get("name") == "redis-events-pub"
    ]


@pytest.fixture
def own_r(own_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """R for the test's own server; it reconnects by itself after a restart."""
    client = own_redis_server.client()
    yield client
    client.close()


class CpuMeter:
    """Measure process CPU time against elapsed time."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def fraction(self) -> float:
        """Return CPU seconds per elapsed second since creation."""
        cpu = time.process_time() - self._cpu
        wall = time.monotonic() - self._wall
        return cpu / wall


@pytest.mark.parametrize("fault", ["shutdown_nosave", "kill"])
async def test_subscriber_resubscribes_after_server_restart(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    fault: Literal["shutdown_nosave", "kill"],
) -> None:
    """BR-01: after a restart every channel and pattern works again."""
    caplog.set_level(logging.DEBUG, logger="redis_events")
    caplog.set_level(logging.INFO, logger=__name__)
    server = own_redis_server
    recorder = Recorder()
    sub = EventSubscriber(server.url)
    sub.on(KEY_SUBMISSION_TOPIC, PROFILE_EVENTS_TOPIC)(recorder)
    sub.on_pattern(RESULTS_PATTERN)(recorder)
    pub = EventPublisher(server.url, publish_retry_timeout=1.0)
    outcome: list[int | str | BaseException] = []

    async def publish_during_outage() -> None:
        try:
            outcome.append(
                await pub.publish(KEY_SUBMISSION_TOPIC, key_event("during-outage"))
            )
        except RedisUnavailableError as exc:
            outcome.append(exc)

    async with supervised() as tasks, pub:
        await tasks.start("subscriber", sub.run)
        await pub.publish(KEY_SUBMISSION_TOPIC, key_event("baseline-key"))
        await pub.publish(PROFILE_EVENTS_TOPIC, profile_event("baseline-profile"))
        await pub.publish(PROCESSING_RESULTS_TOPIC, result_event("baseline-result"))
        await wait_for(lambda: len(recorder.seen) == 3, "baseline", 5, sub.get_stats)

        before_outage = len(caplog.records)
        stopped_at = anyio.current_time()
        await anyio.to_thread.run_sync(
            server.kill if fault == "kill" else server.shutdown_nosave
        )
        await anyio.sleep(1.0)
        tasks.group.start_soon(publish_during_outage)
        await wait_for(lambda: bool(outcome), "publish during the outage ends")
        await anyio.sleep_until(stopped_at + 3.0)
        await anyio.to_thread.run_sync(server.start)
        await wait_for(
            lambda: (
                pubsub_counts(own_r, KEY_SUBMISSION_TOPIC, PROFILE_EVENTS_TOPIC)
                == [1, 1, 1]
            ),
            "NUMSUB/NUMPAT back to 1/1/1",
            state=sub.get_stats,
        )

        ids = [f"key-{i}" for i in range(4)]
        ids += [f"profile-{i}" for i in range(3)]
        ids += [f"result-{i}" for i in range(3)]
        receivers = [
            await pub.publish(KEY_SUBMISSION_TOPIC, key_event(i)) for i in ids[:4]
        ]
        receivers += [
            await pub.publish(PROFILE_EVENTS_TOPIC, profile_event(i)) for i in ids[4:7]
        ]
        receivers += [
            await pub.publish(PROCESSING_RESULTS_TOPIC, result_event(i))
            for i in ids[7:]
        ]
        # Redis delivers to one connection in order: once the sentinel is
        # seen, every copy of an earlier event has been seen too.
        await pub.publish(KEY_SUBMISSION_TOPIC, key_event("sentinel"))
        await wait_for(lambda: recorder.has("sentinel", *ids), "10 events", 5)

        assert tasks.ended == []
        stats = sub.get_stats()
        await sub.stop()

    logger.info("BR-01 %s: subscriber %s; publisher %s", fault, stats, pub.get_stats())
    assert isinstance(outcome[0], RedisUnavailableError)
    assert pub.get_stats()["events_published"] == 3 + 10 + 1
    assert pub.get_stats()["publish_failures"] == 1
    assert receivers == [1] * 10
    counts = recorder.ids()
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    assert counts["during-outage"] == 0
    assert len(recorder.seen) == 3 + 10 + 1
    results = [s for s in recorder.seen if s[2] in ids[7:]]
    assert results == [(PROCESSING_RESULTS_TOPIC, RESULTS_PATTERN, i) for i in ids[7:]]
    assert stats["reconnects"] >= 1
    assert stats["handler_errors"] == 0

    records = caplog.records[before_outage:]
    assert len(subscriber_records(records, logging.WARNING)) == 1
    restored = [
        r
        for r in subscriber_records(records, logging.INFO)
        if "restored 2 channels and 1 patterns" in r.getMessage()
    ]
    assert len(restored) == 1
    assert SECRET not in caplog.text
    assert_no_lost_task_errors(caplog)


@pytest.mark.slow
async def test_outage_is_reported_and_every_listener_resumes(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BR-04: a 60 s outage is logged, retried gently, and then recovered."""
    caplog.set_level(logging.INFO, logger="redis_events")
    caplog.set_level(logging.INFO, logger=__name__)
    server = own_redis_server
    processor = EventProcessor(server.url)
    user_sub = EventSubscriber(server.url)
    user_seen: list[str | None] = []

    async def user_loop(*, task_status: TaskStatus[None]) -> None:
        async with user_sub.subscription(PROFILE_EVENTS_TOPIC) as deliveries:
            task_status.started()
            async for delivery in deliveries:
                user_seen.append(delivery.event_id)

    def attempts() -> tuple[int, int]:
        return (
            processor.get_stats()["reconnect_attempts"],
            user_sub.get_stats()["reconnect_attempts"],
        )

    async with supervised() as tasks:
        await tasks.start("processor", processor.run)
        await tasks.start("user subscriber", user_sub.run)
        await tasks.start("user loop", user_loop)
        await wait_for(
            lambda: numsub(own_r, PROFILE_EVENTS_TOPIC) == [2], "both subscribed"
        )

        before_outage = len(caplog.records)
        attempts_before = attempts()
        cpu = CpuMeter()
        started = anyio.current_time()
        await anyio.to_thread.run_sync(server.shutdown_nosave)

        def reported() -> bool:
            return not processor.subscriber.connected and not user_sub.connected

        def warned() -> list[logging.LogRecord]:
            return [
                record
                for record in caplog.records[before_outage:]
                if record.levelno >= logging.WARNING
                and record.name.startswith("redis_events")
                and names_exception_class(record.getMessage())
            ]

        await wait_for(reported, "health reports Redis down", 5)
        await wait_for(lambda: len(warned()) >= 1, "WARNING naming the error", 5)
        await anyio.sleep_until(started + 60.0)
        still_down = reported()
        outage_cpu = cpu.fraction()
        attempts_after = attempts()
        ended_during_outage = list(tasks.ended)
        await anyio.to_thread.run_sync(server.start)

        await wait_for(
            lambda: numsub(own_r, PROFILE_EVENTS_TOPIC) == [2],
            "NUMSUB profile_events back to 2",
        )

        ids = [f"profile-{i}" for i in range(5)]
        async with EventPublisher(server.url) as pub:
            for event_id in ids:
                await pub.publish(PROFILE_EVENTS_TOPIC, profile_event(event_id))

        await wait_for(
            lambda: (
                len(user_seen) >= 5 and processor.get_stats()["profiles_processed"] >= 5
            ),
            "5 profile events after recovery",
            10,
            lambda: (user_seen, processor.get_stats()),
        )
        stats = processor.get_stats()
        await processor.stop()
        await user_sub.stop()

    deltas = [a - b for a, b in zip(attempts_after, attempts_before, strict=True)]
    logger.info(
        "BR-04: reconnect attempts during 60 s %s, CPU fraction %.4f, "
        "first warning %r, processor %s",
        deltas,
        outage_cpu,
        warned()[0].getMessage(),
        stats,
    )
    assert still_down
    assert ended_during_outage == []
    assert all(6 <= delta <= 120 for delta in deltas), deltas
    assert outage_cpu < CPU_LIMIT
    assert Counter(user_seen) == Counter(ids)
    assert stats["profiles_processed"] == 5
    assert stats["reconnects"] >= 1
    assert_no_lost_task_errors(caplog)


@pytest.mark.slow
async def test_idle_reads_survive_and_a_closed_pooled_connection_heals(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BR-05: idle reads survive, and a pooled connection closed by Redis heals."""
    caplog.set_level(logging.INFO, logger="redis_events")
    caplog.set_level(logging.INFO, logger=__name__)
    server = own_redis_server
    recorder = Recorder()
    sub = EventSubscriber(server.url, socket_timeout=2, health_check_interval=10)
    sub.on(KEY_SUBMISSION_TOPIC)(recorder)
    pub = EventPublisher(server.url, socket_timeout=2)
    own_r.config_set("timeout", 3)
    async with supervised() as tasks, pub:
        await tasks.start("subscriber", sub.run)
        assert await pub.publish(KEY_SUBMISSION_TOPIC, key_event("baseline")) == 1
        await wait_for(lambda: recorder.has("baseline"), "baseline", 5)
        pooled_before = len(pub_connection_ids(own_r))

        before_idle = len(caplog.records)
        cpu = CpuMeter()
        ticks = 0
        with anyio.move_on_after(30):
            while True:
                await anyio.sleep(0.1)
                ticks += 1

        idle_cpu = cpu.fraction()
        idle_records = caplog.records[before_idle:]
        pooled_after = len(pub_connection_ids(own_r))
        ended_while_idle = list(tasks.ended)

        receivers = await pub.publish_key_submitted(
            SECRET, "fault-test", event_id="after-idle"
        )
        await wait_for(lambda: recorder.has("after-idle"), "event after idle", 2)
        stats = sub.get_stats()
        await sub.stop()

    logger.info(
        "BR-05: ticks %d, CPU fraction %.4f, pooled %d -> %d, publisher %s, "
        "subscriber %s",
        ticks,
        idle_cpu,
        pooled_before,
        pooled_after,
        pub.get_stats(),
        stats,
    )
    # The fault really happened: Redis closed the idle pooled connection.
    assert (pooled_before, pooled_after) == (1, 0)
    assert ticks >= 250
    assert idle_cpu <= CPU_LIMIT
    assert [r.getMessage() for r in idle_records if r.levelno >= logging.WARNING] == []
    assert ended_while_idle == []
    assert receivers == 1
    assert pub.get_stats()["publish_failures"] == 0
    assert recorder.ids()["after-idle"] == 1
    assert SECRET not in caplog.text
    assert_no_lost_task_errors(caplog)


async def test_frozen_server_is_detected_and_left_after_thaw(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that stops answering is given up by the health check."""
    caplog.set_level(logging.INFO, logger="redis_events")
    caplog.set_level(logging.INFO, logger=__name__)
    server = own_redis_server
    recorder = Recorder()
    sub = EventSubscriber(
        server.url,
        health_check_interval=2,
        socket_timeout=1,
        socket_connect_timeout=1,
    )
    sub.on(KEY_SUBMISSION_TOPIC)(recorder)
    async with supervised() as tasks, EventPublisher(server.url) as pub:
        await tasks.start("subscriber", sub.run)
        await pub.publish(KEY_SUBMISSION_TOPIC, key_event("baseline"))
        await wait_for(lambda: recorder.has("baseline"), "baseline", 5)

        before_freeze = len(caplog.records)
        attempts_before = sub.get_stats()["reconnect_attempts"]
        server.freeze()
        try:
            await wait_for(
                lambda: (
                    not sub.connected
                    and bool(
                        subscriber_records(
                            caplog.records[before_freeze:], logging.WARNING
                        )
                    )
                ),
                "frozen server detected",
                10,
                sub.get_stats,
            )
            # Attempts against the frozen server fail instead of hanging.
            await wait_for(
                lambda: sub.get_stats()["reconnect_attempts"] - attempts_before >= 2,
                "second reconnect attempt while frozen",
                10,
                sub.get_stats,
            )
            connected_while_frozen = sub.connected
            frozen_stats = sub.get_stats()
        finally:
            server.thaw()

        await wait_for(
            lambda: sub.connected and numsub(own_r, KEY_SUBMISSION_TOPIC) == [1],
            "resubscribed after thaw",
            10,
            sub.get_stats,
        )

        receivers = await pub.publish(KEY_SUBMISSION_TOPIC, key_event("after-thaw"))
        await pub.publish(KEY_SUBMISSION_TOPIC, key_event("sentinel"))
        await wait_for(lambda: recorder.has("sentinel"), "events after thaw", 5)
        stats = sub.get_stats()
        assert tasks.ended == []
        await sub.stop()

    logger.info(
        "Frozen server: while frozen %s; after thaw %s; WARNING %r",
        frozen_stats,
        stats,
        [r.getMessage() for r in subscriber_records(caplog.records, logging.WARNING)],
    )
    assert not connected_while_frozen
    assert stats["reconnects"] >= 1
    assert receivers == 1
    assert recorder.ids()["after-thaw"] == 1
    assert_no_lost_task_errors(caplog)


async def test_killed_subscriber_connection_is_restored(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CLIENT KILL TYPE pubsub: the subscriber reconnects and resubscribes."""
    caplog.set_level(logging.INFO, logger="redis_events")
    caplog.set_level(logging.INFO, logger=__name__)
    server = own_redis_server
    recorder = Recorder()
    sub = EventSubscriber(server.url)
    sub.on(KEY_SUBMISSION_TOPIC)(recorder)
    sub.on_pattern(RESULTS_PATTERN)(recorder)
    async with supervised() as tasks, EventPublisher(server.url) as pub:
        await tasks.start("subscriber", sub.run)
        before_kill = len(caplog.records)
        killed = own_r.client_kill_filter(_type="pubsub")
        await wait_for(
            lambda: (
                sub.get_stats()["reconnects"] >= 1
                and sub.connected
                and pubsub_counts(own_r, KEY_SUBMISSION_TOPIC) == [1, 1]
            ),
            "resubscribed after CLIENT KILL",
            10,
            sub.get_stats,
        )
        ids = ["key-0", "key-1", "result-0", "result-1"]
        receivers = [
            await pub.publish(KEY_SUBMISSION_TOPIC, key_event(i)) for i in ids[:2]
        ]
        receivers += [
            await pub.publish(PROCESSING_RESULTS_TOPIC, result_event(i))
            for i in ids[2:]
        ]
        await pub.publish(KEY_SUBMISSION_TOPIC, key_event("sentinel"))
        await wait_for(lambda: recorder.has("sentinel", *ids), "events after kill", 5)
        stats = sub.get_stats()
        assert tasks.ended == []
        await sub.stop()

    logger.info("CLIENT KILL TYPE pubsub: killed %d, subscriber %s", killed, stats)
    assert killed == 1
    assert receivers == [1] * 4
    counts = recorder.ids()
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    assert stats["reconnects"] == 1
    records = caplog.records[before_kill:]
    assert len(subscriber_records(records, logging.WARNING)) == 1
    restored = [
        r
        for r in subscriber_records(records, logging.INFO)
        if "restored 1 channels and 1 patterns" in r.getMessage()
    ]
    assert len(restored) == 1
    assert_no_lost_task_errors(caplog)


async def test_lost_subscriber_connection_is_replaced_by_one_connection(
    own_redis_server: RedisServer, own_r: redis.Redis
) -> None:
    """One lost connection costs one new connection and one SUBSCRIBE.

    A second, short-lived subscription would briefly count in NUMSUB and
    could take a message that is then thrown away with it.
    """
    sub = EventSubscriber(own_redis_server.url)
    sub.on(KEY_SUBMISSION_TOPIC)(Recorder())
    async with supervised() as tasks:
        await tasks.start("subscriber", sub.run)
        own_r.config_resetstat()
        assert own_r.client_kill_filter(_type="pubsub") == 1
        await wait_for(
            lambda: (
                sub.get_stats()["reconnects"] >= 1
                and sub.connected
                and numsub(own_r, KEY_SUBMISSION_TOPIC) == [1]
            ),
            "resubscribed after CLIENT KILL",
            10,
            sub.get_stats,
        )
        new_connections = own_r.info("stats")["total_connections_received"]
        subscribes = own_r.info("commandstats")["cmdstat_subscribe"]["calls"]
        await sub.stop()

    logger.info(
        "After one CLIENT KILL: %d new connections, %d SUBSCRIBE calls",
        new_connections,
        subscribes,
    )
    assert (new_connections, subscribes) == (1, 1)


async def test_killed_publisher_connection_is_replaced(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CLIENT KILL of pooled publisher connections: the next publish works."""
    caplog.set_level(logging.INFO, logger="redis_events")
    caplog.set_level(logging.INFO, logger=__name__)
    server = own_redis_server
    recorder = Recorder()
    sub = EventSubscriber(server.url)
    sub.on(KEY_SUBMISSION_TOPIC)(recorder)
    async with supervised() as tasks, EventPublisher(server.url) as pub:
        await tasks.start("subscriber", sub.run)
        await pub.publish(KEY_SUBMISSION_TOPIC, key_event("baseline"))
        await wait_for(lambda: recorder.has("baseline"), "baseline", 5)
        victims = pub_connection_ids(own_r)
        killed = sum(own_r.client_kill_filter(_id=victim) for victim in victims)

        receivers = await pub.publish(KEY_SUBMISSION_TOPIC, key_event("after-kill"))
        await pub.publish(KEY_SUBMISSION_TOPIC, key_event("sentinel"))
        await wait_for(lambda: recorder.has("sentinel"), "event after kill", 5)
        replacements = pub_connection_ids(own_r)
        pub_stats = pub.get_stats()
        assert tasks.ended == []
        await sub.stop()

    logger.info(
        "CLIENT KILL publisher: killed %d of %s, now %s, publisher %s",
        killed,
        victims,
        replacements,
        pub_stats,
    )
    assert len(victims) >= 1
    assert killed == len(victims)
    assert set(replacements).isdisjoint(victims)
    assert receivers == 1
    assert pub_stats["publish_failures"] == 0
    assert recorder.ids()["after-kill"] == 1
    assert_no_lost_task_errors(caplog)
