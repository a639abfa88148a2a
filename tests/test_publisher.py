"""The publisher against a real redis-server: counts, batches, errors, outages."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.abc import SocketAttribute

from redis_events import (
    ConfigurationError,
    EventEncodeError,
    EventPublisher,
    EventSubscriber,
    EventTooLargeError,
    KeySubmitted,
    RedisUnavailableError,
    close_shared_publisher,
    get_publisher,
)
from tests.helpers import command_calls, wait_until
from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    import redis
    from anyio.abc import SocketStream, TaskStatus

pytestmark = pytest.mark.redis


async def test_publish_returns_the_number_of_receivers(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:count"
    got: list[int] = []
    sub = EventSubscriber(redis_url)

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        got.append(event["n"])

    async with EventPublisher(redis_url) as pub:
        assert await pub.publish(topic, {"n": 0}) == 0
        async with sub:
            assert await pub.publish(topic, {"n": 1}) == 1
            await wait_until(lambda: got == [1])

        assert pub.get_stats()["events_published"] == 2


async def test_publish_many_sends_ten_thousand_events_each_received_once(
    redis_url: str, uid: str
) -> None:
    topic = f"{uid}:many"
    total = 10_000
    ids: list[str] = []
    sub = EventSubscriber(redis_url)

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        ids.append(event["event_id"])

    async with sub, EventPublisher(redis_url) as pub:
        counts = await pub.publish_many(topic, [{"n": n} for n in range(total)])
        await wait_until(lambda: len(ids) >= total, timeout=60)
        # A marker published after the batch proves nothing more is on its way.
        await pub.publish(topic, {"event_id": f"end-{uid}"})
        await wait_until(lambda: f"end-{uid}" in ids)

    assert counts == [1] * total
    assert len(ids) == total + 1
    assert len(set(ids)) == total + 1
    assert pub.get_stats()["events_published"] == total + 1
    assert sub.get_stats()["invalid_events"] == 0


async def test_publish_many_of_nothing_sends_nothing(redis_url: str, uid: str) -> None:
    async with EventPublisher(redis_url) as pub:
        assert await pub.publish_many(f"{uid}:none", []) == []
        assert pub.get_stats()["events_published"] == 0


@pytest.mark.fault
async def test_publishes_beyond_the_pool_wait_for_a_connection_instead_of_failing(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"{uid}:crowd"
    name = f"re-{uid}"
    results: list[int | str] = []
    # No retry window: a publish refused a connection would fail at once.
    pub = EventPublisher(
        redis_url, client_name=name, max_connections=2, publish_retry_timeout=0
    )

    async def publish(n: int) -> None:
        results.append(await pub.publish(topic, {"n": n}))

    async with pub:
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(publish, n)

        clients: list[dict[str, Any]] = r.client_list()
        pooled = [c for c in clients if c["name"] == f"{name}-pub"]

    assert results == [0] * 50
    assert pub.get_stats()["publish_retries"] == 0
    assert 1 <= len(pooled) <= 2


async def test_unserializable_or_oversize_events_raise_and_send_nothing(
    own_redis_server: RedisServer,
) -> None:
    r = own_redis_server.client()
    topic = "encode"
    async with EventPublisher(own_redis_server.url, max_event_bytes=1024) as pub:
        assert await pub.publish(topic, {"ok": True}) == 0
        assert command_calls(r, "publish") == 1

        with pytest.raises(EventEncodeError):
            await pub.publish(topic, {"value": object()})

        with pytest.raises(EventEncodeError):
            await pub.publish(topic, "not an event")  # type: ignore[arg-type]

        with pytest.raises(EventEncodeError):
            await pub.publish_many(topic, [{"n": 1}, {"value": object()}, {"n": 3}])

        with pytest.raises(EventEncodeError):
            # A dict that does not fit the topic's model is not sent either.
            await pub.publish("key_submission", {"token_name": "no key"})

        with pytest.raises(EventTooLargeError):
            await pub.publish(topic, {"pad": "x" * 2000})

        with pytest.raises(EventTooLargeError):
            await pub.publish_many(topic, [{"n": 1}, {"pad": "x" * 2000}])

        assert command_calls(r, "publish") == 1
        stats = pub.get_stats()
        assert stats["events_published"] == 1
        assert stats["publish_failures"] == 0

    r.close()


@pytest.mark.parametrize("topic", ["", "a b", "x\n", "tab\there", "x" * 257])
async def test_an_unusable_topic_raises_configuration_error_before_connecting(
    topic: str,
) -> None:
    # Nothing listens on this port: reaching the network would raise
    # RedisUnavailableError instead.
    pub = EventPublisher(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConfigurationError):
        await pub.publish(topic, {"n": 1})

    with pytest.raises(ConfigurationError):
        await pub.publish_many(topic, [{"n": 1}])

    await pub.close()


async def test_an_unreachable_redis_raises_redis_unavailable_without_the_password() -> (
    None
):
    port = free_port()
    pub = EventPublisher(
        f"redis://user:s3cret@127.0.0.1:{port}/0",
        publish_retry_timeout=0.5,
        socket_connect_timeout=1,
    )
    with anyio.fail_after(10), pytest.raises(RedisUnavailableError) as info:
        await pub.publish("t", {"n": 1})

    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(info.value)
    stats = pub.get_stats()
    assert stats["publish_failures"] == 1
    assert stats["publish_retries"] >= 1
    assert stats["events_published"] == 0
    await pub.close()


async def test_connect_to_an_unreachable_redis_raises_redis_unavailable() -> None:
    pub = EventPublisher(
        f"redis://:s3cret@127.0.0.1:{free_port()}/0", socket_connect_timeout=1
    )
    with anyio.fail_after(10), pytest.raises(RedisUnavailableError) as info:
        await pub.connect()

    assert "s3cret" not in str(info.value)
    await pub.close()


async def test_the_keyword_form_connects_and_publishes(
    redis_server: RedisServer, uid: str
) -> None:
    topic = f"{uid}:kw"
    got: list[int] = []
    sub = EventSubscriber(host="127.0.0.1", port=redis_server.port, db=0)

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        got.append(event["n"])

    async with (
        sub,
        EventPublisher(host="127.0.0.1", port=redis_server.port, db=0) as pub,
    ):
        assert pub.settings.redis_url == redis_server.url
        assert await pub.publish(topic, {"n": 7}) == 1
        await wait_until(lambda: got == [7])


def test_the_keyword_form_and_a_url_together_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        EventPublisher("redis://127.0.0.1:6390/0", host="127.0.0.1")


def test_get_publisher_is_shared_per_event_loop(
    redis_url: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("REDIS_EVENTS_REDIS_URL", raising=False)
    seen: list[EventPublisher] = []

    async def use_shared() -> None:
        first = get_publisher()
        second = get_publisher()
        assert first is second
        assert first.settings.redis_url == redis_url
        await first.publish(f"{uid}:shared", {"n": 1})
        seen.append(first)
        await close_shared_publisher()
        third = get_publisher()
        assert third is not first
        await close_shared_publisher()

    asyncio.run(use_shared())
    asyncio.run(use_shared())
    assert len(seen) == 2
    assert seen[0] is not seen[1]


def test_get_publisher_outside_an_event_loop_raises() -> None:
    with pytest.raises(RuntimeError):
        get_publisher()


def test_repr_never_shows_the_password() -> None:
    for pub in (
        EventPublisher("redis://user:s3cret@127.0.0.1:6390/0"),
        EventPublisher(host="127.0.0.1", port=6390, username="u", password="s3cret"),
    ):
        assert "s3cret" not in repr(pub)
        assert "s3cret" not in repr(pub.settings)
        assert "127.0.0.1:6390" in repr(pub)


async def test_publish_key_submitted_carries_the_key_but_never_shows_it(
    redis_url: str, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{uid}:keys"
    secret = f"sk-{uid}"
    sub = EventSubscriber(redis_url)
    sub.registry.register(topic, KeySubmitted)
    got: list[KeySubmitted] = []

    @sub.on(topic)
    async def handler(topic: str, event: KeySubmitted) -> None:
        got.append(event)

    caplog.set_level("DEBUG", logger="redis_events")
    async with sub, EventPublisher(redis_url) as pub:
        pub.registry.register(topic, KeySubmitted)
        await pub.publish(topic, KeySubmitted(key_value=secret, token_name="tok"))
        await wait_until(lambda: len(got) == 1)

    assert got[0].key_value.get_secret_value() == secret
    assert secret not in repr(got[0])
    assert all(secret not in rec.getMessage() for rec in caplog.records)


async def test_a_secret_sent_to_a_topic_without_a_model_warns_once_per_topic(
    redis_url: str, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"sk-{uid}"
    misspelt = "key_submision"  # one letter short of key_submission
    unrelated = f"audit_{uid}"
    caplog.set_level("DEBUG", logger="redis_events")
    async with EventPublisher(redis_url) as pub:
        await pub.publish(unrelated, {"token_name": "tok"})
        for _ in range(3):
            await pub.publish(misspelt, {"key_value": secret, "token_name": "tok"})

        await pub.publish_many(unrelated, [{"key_value": secret}] * 2)
        # The topic's own model validates it: no hint.
        await pub.publish("key_submission", {"key_value": secret, "token_name": "t"})

    warnings = [rec for rec in caplog.records if rec.levelname == "WARNING"]
    assert [getattr(rec, "topic", None) for rec in warnings] == [misspelt, unrelated]
    hinted, unhinted = (rec.getMessage() for rec in warnings)
    assert "has no model" in hinted
    assert "key_value" in hinted
    assert "did you mean key_submission?" in hinted
    assert "did you mean" not in unhinted
    assert getattr(warnings[0], "suggestion", None) == "key_submission"
    for rec in caplog.records:
        assert secret not in rec.getMessage()
        assert secret not in repr(vars(rec))


class _Gate:
    """A loopback TCP forwarder to a server that can refuse connections.

    While closed, it accepts each connection and closes it at once, so a
    client sees a lost connection, as when the server is down.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.is_open = True
        self.port = 0
        self.refused = 0

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            self.port = listener.extra(SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._forward)

    async def _forward(self, client: SocketStream) -> None:
        async with client:
            if not self.is_open:
                self.refused += 1
                return

            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
            except OSError:
                return

            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(_pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(_pipe, upstream, client, tg.cancel_scope)


async def _pipe(
    source: SocketStream, sink: SocketStream, scope: anyio.CancelScope
) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass

    scope.cancel()


@pytest.mark.fault
async def test_a_publish_during_a_short_outage_is_retried_and_delivered(
    own_redis_server: RedisServer,
) -> None:
    topic = "outage"
    server = own_redis_server
    got: list[int] = []
    sub = EventSubscriber(
        server.url, reconnect_backoff_base=0.05, reconnect_backoff_cap=0.2
    )

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        got.append(event["n"])

    # The publisher goes through a gate that stays shut until the subscriber
    # is back, so the retried publish cannot land before anyone listens.
    gate = _Gate(server.port)
    async with anyio.create_task_group() as tg, sub:
        await tg.start(gate.serve)
        pub = EventPublisher(
            f"redis://127.0.0.1:{gate.port}/0", publish_retry_timeout=5
        )
        assert await pub.publish(topic, {"n": 0}) == 1
        await wait_until(lambda: got == [0])

        server.stop()
        gate.is_open = False
        result: list[int | str] = []

        async def publish_during_outage() -> None:
            result.append(await pub.publish(topic, {"n": 1}))

        tg.start_soon(publish_during_outage)
        await wait_until(lambda: pub.get_stats()["publish_retries"] >= 1)
        await anyio.sleep(1)
        server.start()
        r = server.client()
        await wait_until(lambda: _numsub(r, topic) == 1)
        gate.is_open = True
        await wait_until(lambda: got == [0, 1])
        assert result == [1]
        r.close()
        await pub.close()
        tg.cancel_scope.cancel()

    stats = pub.get_stats()
    assert stats["events_published"] == 2
    assert stats["publish_failures"] == 0
    assert stats["publish_retries"] >= 1
    assert gate.refused >= 1
    assert sub.get_stats()["reconnects"] == 1


def _numsub(r: redis.Redis, topic: str) -> int:
    counts: list[tuple[bytes | str, int]] = r.pubsub_numsub(topic)
    return int(counts[0][1])


async def test_the_named_publish_methods_refuse_bad_fields_as_encode_errors() -> None:
    secret = "s3cr3t-named-publish"
    async with EventPublisher("memory://named-publish-bad-fields") as publisher:
        with pytest.raises(EventEncodeError) as bad_key:
            await publisher.publish_key_submitted([secret], "token")  # type: ignore[arg-type]
        with pytest.raises(EventEncodeError) as bad_profile:
            await publisher.publish_profile_deleted([1, 2])  # type: ignore[arg-type]
        with pytest.raises(EventEncodeError):
            await publisher.publish_profile_created(1, {}, timestamp="not a time")

    assert bad_key.value.topic == "key_submission"
    assert "key_value" in str(bad_key.value)
    assert secret not in str(bad_key.value)
    assert bad_profile.value.topic == "profile_events"
    assert "profile_id" in str(bad_profile.value)
