"""The subscriber on a real redis-server: routing, handlers, shutdown, bad input."""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any, Literal

import anyio
import pytest

from redis_events import (
    Delivery,
    Event,
    EventPublisher,
    EventSubscriber,
    ProfileUpdated,
    RedisUnavailableError,
    current_delivery,
)
from redis_events.events import ProfileEvent
from tests.helpers import client_names, wait_until
from tests.redis_server import free_port

if TYPE_CHECKING:
    import redis

pytestmark = pytest.mark.redis


class Ping(Event):
    """A user-defined event for a user-registered topic."""

    event_type: Literal["ping"] = "ping"
    n: int


def _raw(**fields: Any) -> str:
    return json.dumps(fields)


def _sub_connections(r: redis.Redis, name: str) -> list[str]:
    return [n for n in client_names(r, name) if n == f"{name}-sub"]


async def test_decorated_and_mapped_handlers_each_get_their_topics_events(
    redis_url: str, uid: str
) -> None:
    a, b = f"{uid}:a", f"{uid}:b"
    sub = EventSubscriber(redis_url, client_name=f"t-{uid}")
    got: list[tuple[str, str, int]] = []

    @sub.on(a)
    async def on_a(topic: str, event: dict[str, Any]) -> None:
        got.append(("on_a", topic, event["n"]))

    async def on_b(topic: str, event: dict[str, Any]) -> None:
        got.append(("on_b", topic, event["n"]))

    sub.subscribe_to_topics({b: on_b})
    async with sub, EventPublisher(redis_url) as pub:
        assert await pub.publish(a, {"n": 1}) == 1
        assert await pub.publish(b, {"n": 2}) == 1
        assert await pub.publish(a, {"n": 3}) == 1
        await wait_until(lambda: len(got) == 3)

    assert got == [("on_a", a, 1), ("on_b", b, 2), ("on_a", a, 3)]
    stats = sub.get_stats()
    assert stats["events_received"] == 3
    assert stats["events_handled"] == 3


async def test_a_plain_function_handler_runs_in_a_worker_thread(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:sync"
    sub = EventSubscriber(redis_url)
    threads: list[int] = []
    events: list[dict[str, Any]] = []

    def handler(topic: str, event: dict[str, Any]) -> None:
        threads.append(threading.get_ident())
        events.append(event)

    sub.on(topic)(handler)
    async with sub, EventPublisher(redis_url) as pub:
        await pub.publish(topic, {"n": 1})
        await wait_until(lambda: len(events) == 1)

    assert events[0]["n"] == 1
    assert threads[0] != threading.get_ident()


async def test_a_failing_handler_is_counted_logged_and_later_events_go_on(
    redis_url: str, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{uid}:fail"
    bad_id = f"bad-{uid}"
    sub = EventSubscriber(redis_url)
    handled: list[int] = []

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        if event["event_id"] == bad_id:
            raise ValueError("handler bug")

        handled.append(event["n"])

    caplog.set_level(logging.ERROR, logger="redis_events")
    async with sub, EventPublisher(redis_url) as pub:
        await pub.publish(topic, {"n": 0, "event_id": bad_id})
        for n in range(1, 4):
            await pub.publish(topic, {"n": n})

        await wait_until(lambda: len(handled) == 3)

    assert handled == [1, 2, 3]
    stats = sub.get_stats()
    assert stats["handler_errors"] == 1
    assert stats["events_handled"] == 3
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1
    assert bad_id in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)


async def test_a_handler_over_handler_timeout_is_cut_and_others_go_on(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:slow"
    sub = EventSubscriber(redis_url, handler_timeout=0.2)
    finished: list[int] = []

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        if event["n"] == 0:
            await anyio.sleep(5)

        finished.append(event["n"])

    async with sub, EventPublisher(redis_url) as pub:
        for n in range(4):
            await pub.publish(topic, {"n": n})

        await wait_until(lambda: sub.get_stats()["handler_timeouts"] == 1)
        await wait_until(lambda: len(finished) == 3)

    assert sorted(finished) == [1, 2, 3]
    stats = sub.get_stats()
    assert stats["handler_timeouts"] == 1
    assert stats["events_handled"] == 3
    assert stats["handlers_cancelled"] == 0


async def test_max_concurrency_bounds_handlers_in_flight_and_all_are_handled(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:conc"
    sub = EventSubscriber(redis_url, max_concurrency=3)
    gate = anyio.Event()
    running = 0
    peak = 0
    handled: list[int] = []

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        handled.append(event["n"])

    async with sub, EventPublisher(redis_url) as pub:
        await pub.publish_many(topic, [{"n": n} for n in range(10)])
        # The fourth event is read and then waits for a slot, so the reader
        # stops reading: three running, four received.
        await wait_until(
            lambda: running == 3 and sub.get_stats()["events_received"] == 4
        )
        await anyio.wait_all_tasks_blocked()
        assert running == 3
        assert sub.get_stats()["in_flight"] == 3
        gate.set()
        await wait_until(lambda: len(handled) == 10)

    assert peak == 3
    assert sorted(handled) == list(range(10))
    assert sub.get_stats()["events_handled"] == 10


async def test_stop_lets_handlers_in_flight_finish_then_disconnects(
    redis_url: str, uid: str, r: redis.Redis
) -> None:
    topic = f"{uid}:stop"
    name = f"t-{uid}"
    sub = EventSubscriber(redis_url, client_name=name, shutdown_timeout=10)
    started = 0
    finished = 0

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal started, finished
        started += 1
        await anyio.sleep(0.5)
        finished += 1

    async with anyio.create_task_group() as tg, EventPublisher(redis_url) as pub:
        await tg.start(sub.run)
        assert sub.connected
        assert _sub_connections(r, name) == [f"{name}-sub"]
        for n in range(3):
            await pub.publish(topic, {"n": n})

        await wait_until(lambda: started == 3)
        with anyio.fail_after(10):
            await sub.stop()

        assert finished == 3

    assert not sub.connected
    stats = sub.get_stats()
    assert stats["events_handled"] == 3
    assert stats["handlers_cancelled"] == 0
    assert stats["in_flight"] == 0
    await wait_until(lambda: not _sub_connections(r, name))


async def test_cancelling_the_run_task_lets_handlers_finish_within_shutdown_timeout(
    redis_url: str, uid: str, r: redis.Redis
) -> None:
    topic = f"{uid}:cancel"
    name = f"t-{uid}"
    sub = EventSubscriber(redis_url, client_name=name, shutdown_timeout=10)
    started = 0
    finished = 0

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal started, finished
        started += 1
        await anyio.sleep(0.5)
        finished += 1

    async with EventPublisher(redis_url) as pub:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(sub.run)
                for n in range(3):
                    await pub.publish(topic, {"n": n})

                await wait_until(lambda: started == 3)
                tg.cancel_scope.cancel()

    assert finished == 3
    assert sub.get_stats()["handlers_cancelled"] == 0
    assert not sub.connected
    await wait_until(lambda: not _sub_connections(r, name))


async def test_stop_cancels_a_handler_that_outlives_shutdown_timeout(
    redis_url: str, uid: str, r: redis.Redis
) -> None:
    topic = f"{uid}:stuck"
    name = f"t-{uid}"
    sub = EventSubscriber(redis_url, client_name=name, shutdown_timeout=0.5)
    started = 0
    finished = 0

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal started, finished
        started += 1
        await anyio.sleep(10)
        finished += 1

    async with anyio.create_task_group() as tg, EventPublisher(redis_url) as pub:
        await tg.start(sub.run)
        await pub.publish(topic, {"n": 1})
        await wait_until(lambda: started == 1)
        with anyio.fail_after(5):
            await sub.stop()

    assert finished == 0
    stats = sub.get_stats()
    assert stats["handlers_cancelled"] == 1
    assert stats["events_handled"] == 0
    assert stats["in_flight"] == 0
    await wait_until(lambda: not _sub_connections(r, name))


async def test_abort_cancels_handlers_in_flight_at_once(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:abort"
    sub = EventSubscriber(redis_url, shutdown_timeout=60)
    started = 0

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal started
        started += 1
        await anyio.sleep(60)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, EventPublisher(redis_url) as pub:
            await tg.start(sub.run)
            await pub.publish(topic, {"n": 1})
            await wait_until(lambda: started == 1)
            sub.abort()

    assert sub.get_stats()["handlers_cancelled"] == 1


async def test_stop_called_from_a_handler_ends_run(redis_url: str, uid: str) -> None:
    topic = f"{uid}:selfstop"
    sub = EventSubscriber(redis_url)
    calls = 0

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        await sub.stop()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, EventPublisher(redis_url) as pub:
            await tg.start(sub.run)
            await pub.publish(topic, {"n": 1})

    assert calls == 1
    assert not sub.connected


async def test_run_twice_at_once_is_refused(redis_url: str, uid: str) -> None:
    sub = EventSubscriber(redis_url)
    sub.on(f"{uid}:twice")(_noop)
    async with sub:
        with pytest.raises(RuntimeError, match="already running"):
            await sub.run()


async def test_decorators_on_a_running_subscriber_point_to_subscribe(
    redis_url: str, uid: str
) -> None:
    sub = EventSubscriber(redis_url)
    sub.on(f"{uid}:first")(_noop)
    async with sub:
        with pytest.raises(RuntimeError, match="subscribe"):
            sub.on(f"{uid}:late")

        with pytest.raises(RuntimeError, match="psubscribe"):
            sub.on_pattern(f"{uid}:late*")

        with pytest.raises(RuntimeError, match="subscribe"):
            sub.subscribe_to_topics({f"{uid}:late": _noop})

    assert sub.get_stats()["events_received"] == 0


async def test_run_raises_redis_unavailable_when_redis_is_unreachable() -> None:
    sub = EventSubscriber(
        f"redis://user:s3cret@127.0.0.1:{free_port()}/0", socket_connect_timeout=1
    )
    sub.on("anything")(_noop)
    with anyio.fail_after(10), pytest.raises(RedisUnavailableError) as info:
        await sub.run()

    assert "s3cret" not in str(info.value)
    assert not sub.connected


async def test_iterator_subscription_yields_deliveries_and_ends_on_stop(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:iter"
    sub = EventSubscriber(redis_url)
    collected: list[Delivery] = []
    ready = anyio.Event()
    ended = anyio.Event()

    async def consume() -> None:
        async with sub.subscription(topic) as deliveries:
            ready.set()
            async for delivery in deliveries:
                collected.append(delivery)

        ended.set()

    async with anyio.create_task_group() as tg, EventPublisher(redis_url) as pub:
        await tg.start(sub.run)
        tg.start_soon(consume)
        await ready.wait()
        for n in range(2):
            assert await pub.publish(topic, {"n": n}) == 1

        await wait_until(lambda: len(collected) == 2)
        with anyio.fail_after(10):
            await sub.stop()
            await ended.wait()

    assert [d.topic for d in collected] == [topic, topic]
    assert [d.pattern for d in collected] == [None, None]
    events = [d.event for d in collected]
    assert [e["n"] for e in events if isinstance(e, dict)] == [0, 1]


async def test_iterator_on_a_channel_and_a_matching_pattern_yields_each_event_once(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:it:one"
    pattern = f"{uid}:it:*"
    sub = EventSubscriber(redis_url)
    collected: list[Delivery] = []
    async with sub, EventPublisher(redis_url) as pub:
        async with sub.subscription(topic, patterns=[pattern]) as deliveries:
            # Redis sends two copies, one per matching subscription.
            assert await pub.publish(topic, {"n": 1}) == 2
            assert await pub.publish(f"{uid}:it:two", {"n": 2}) == 1
            with anyio.fail_after(10):
                collected.append(await deliveries.receive())
                collected.append(await deliveries.receive())

            assert await pub.publish(f"{uid}:it:three", {"n": 3}) == 1
            with anyio.fail_after(10):
                collected.append(await deliveries.receive())

        # Leaving the block unsubscribes both.
        assert await pub.publish(topic, {"n": 4}) == 0
        assert await pub.publish(f"{uid}:it:four", {"n": 5}) == 0

    assert [(d.topic, d.pattern) for d in collected] == [
        (topic, None),
        (f"{uid}:it:two", pattern),
        (f"{uid}:it:three", pattern),
    ]
    assert sub.get_stats()["events_received"] == 3


async def test_runtime_subscribe_and_unsubscribe_take_effect(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:rt"
    pattern = f"{uid}:rtp:*"
    sub = EventSubscriber(redis_url)
    got: list[tuple[str, str | None]] = []

    async def first(topic: str, event: object) -> None:
        got.append(("first", current_delivery().pattern))

    async def second(topic: str, event: object) -> None:
        got.append(("second", current_delivery().pattern))

    sub.on(f"{uid}:idle")(_noop)
    async with sub, EventPublisher(redis_url) as pub:
        assert await pub.publish(topic, {"n": 0}) == 0
        await sub.subscribe(topic, first)
        await sub.subscribe(topic, second)
        assert await pub.publish(topic, {"n": 1}) == 1
        await wait_until(lambda: len(got) == 2)

        await sub.unsubscribe(topic, first)
        assert await pub.publish(topic, {"n": 2}) == 1
        await wait_until(lambda: len(got) == 3)

        await sub.unsubscribe(topic)
        await wait_until_receivers(pub, topic, 0)

        await sub.psubscribe(pattern, first)
        assert await pub.publish(f"{uid}:rtp:x", {"n": 3}) == 1
        await wait_until(lambda: len(got) == 4)
        await sub.punsubscribe(pattern)
        await wait_until_receivers(pub, f"{uid}:rtp:y", 0)

    assert sorted(got[:2]) == [("first", None), ("second", None)]
    assert got[2:] == [("second", None), ("first", pattern)]


async def test_runtime_subscribe_succeeds_while_every_handler_slot_is_busy(
    redis_url: str, uid: str
) -> None:
    busy, later = f"{uid}:busy", f"{uid}:later"
    # A short socket_timeout keeps the failure quick; Redis itself is fine.
    sub = EventSubscriber(redis_url, max_concurrency=1, socket_timeout=1)
    gate = anyio.Event()
    got: list[int] = []

    @sub.on(busy)
    async def slow(topic: str, event: object) -> None:
        await gate.wait()

    async def on_later(topic: str, event: dict[str, Any]) -> None:
        got.append(event["n"])

    async with sub, EventPublisher(redis_url) as pub:
        await pub.publish(busy, {"n": 1})
        await pub.publish(busy, {"n": 2})
        # One handler holds the only slot; the second event waits for it.
        await wait_until(lambda: sub.get_stats()["events_received"] == 2)
        try:
            await sub.subscribe(later, on_later)
        finally:
            gate.set()

        assert await pub.publish(later, {"n": 3}) == 1
        await wait_until(lambda: got == [3])


async def wait_until_receivers(pub: EventPublisher, topic: str, count: int) -> None:
    """Publish probes until Redis reports ``count`` receivers for ``topic``."""
    for _ in range(200):
        if await pub.publish(topic, {"probe": True}) == count:
            return

        await anyio.sleep(0.05)

    msg = f"{topic} did not reach {count} receivers"
    raise AssertionError(msg)


async def test_invalid_events_are_counted_logged_and_skipped(
    redis_url: str, uid: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{uid}:profiles"
    sub = EventSubscriber(redis_url, max_event_bytes=1024)
    sub.registry.register(topic, ProfileEvent)
    handled: list[int] = []

    @sub.on(topic)
    async def handler(topic: str, event: object) -> None:
        assert isinstance(event, ProfileUpdated)
        handled.append(int(event.profile_id))

    bad = [
        (_raw(event_type="no_such_type", profile_id=1), "event_type"),
        ("[1, 2, 3]", "object"),
        (_raw(event_type="profile_updated"), "profile_id"),
        ("not json at all", "JSON"),
        (_raw(event_type="profile_updated", profile_id=1, pad="x" * 2000), "limit"),
    ]
    caplog.set_level(logging.WARNING, logger="redis_events.subscriber")
    async with sub:
        for n, (payload, _) in enumerate(bad):
            assert r.publish(topic, payload) == 1
            assert r.publish(topic, _raw(event_type="profile_updated", profile_id=n))

        await wait_until(lambda: len(handled) == len(bad))

    assert handled == list(range(len(bad)))
    stats = sub.get_stats()
    assert stats["invalid_events"] == len(bad)
    assert stats["events_received"] == 2 * len(bad)
    assert stats["events_handled"] == len(bad)
    warnings = [
        rec
        for rec in caplog.records
        if rec.name == "redis_events.subscriber" and rec.levelno == logging.WARNING
    ]
    assert len(warnings) == len(bad)
    for record, (_, reason) in zip(warnings, bad, strict=True):
        assert topic in record.getMessage()
        assert reason in record.getMessage()


async def test_rejection_warnings_never_quote_the_payload(
    redis_url: str, uid: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{uid}:leak"
    marker = f"leak{uid}"
    sub = EventSubscriber(redis_url, max_event_bytes=1024)
    sub.registry.register(topic, ProfileEvent)
    sub.on(topic)(_noop)
    payloads = [
        f"not json {marker}",
        _raw(event_type=marker, profile_id=1),
        _raw(event_type="profile_updated", profile_id=[marker]),
        _raw(event_type="profile_updated", profile_id=1, profile_data=marker),
        _raw(event_type="profile_updated", profile_id=1, pad=marker * 100),
    ]
    caplog.set_level(logging.DEBUG, logger="redis_events")
    async with sub:
        for payload in payloads:
            r.publish(topic, payload)

        await wait_until(lambda: sub.get_stats()["invalid_events"] == len(payloads))

    leaking = [
        rec.getMessage()
        for rec in caplog.records
        if rec.levelno > logging.DEBUG and marker in rec.getMessage()
    ]
    assert leaking == []


async def test_a_topic_without_a_model_delivers_a_dict_and_a_registered_model_its_model(
    redis_url: str, uid: str
) -> None:
    plain, modelled = f"{uid}:plain", f"{uid}:ping"
    sub = EventSubscriber(redis_url)
    sub.registry.register(modelled, Ping)
    got: list[object] = []

    @sub.on(plain, modelled)
    async def handler(topic: str, event: object) -> None:
        got.append(event)

    async with sub, EventPublisher(redis_url) as pub:
        await pub.publish(plain, {"n": 1})
        await pub.publish(modelled, Ping(n=2))
        await wait_until(lambda: len(got) == 2)

    first, second = got
    assert isinstance(first, dict)
    assert first["n"] == 1
    assert isinstance(first["event_id"], str)
    assert isinstance(second, Ping)
    assert second.n == 2


def test_repr_never_shows_the_password() -> None:
    sub = EventSubscriber("redis://user:s3cret@127.0.0.1:6390/0")
    sub.on("a")(_noop)
    text = repr(sub)
    assert "s3cret" not in text
    assert "127.0.0.1:6390" in text
    assert "'a'" in text


async def _noop(topic: str, event: object) -> None:
    pass
