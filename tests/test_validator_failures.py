"""Validation that fails with something other than a ValidationError.

pydantic turns only ValueError and AssertionError into validation errors;
an OverflowError from our own UTC conversion, or any exception from a
user's validator, must still be a rejected event, never a stopped
subscriber. Found by a hostile review (the timestamps and the ordering key).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from pydantic import field_validator

from redis_events import Event, EventPublisher, EventRegistry, EventSubscriber
from redis_events._keys import dead_letter_key, stream_key
from redis_events.exceptions import EventDecodeError, EventEncodeError
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

# A timestamp pydantic accepts, which overflows when moved to UTC: year
# 9999 at -23:59 is past datetime.max in UTC, year 1 at +23:59 before
# datetime.min.
LATE = "9999-12-31T23:59:59-23:59"
EARLY = "0001-01-01T00:00:00+23:59"
GOOD = '{"event_type":"profile_created","profile_id":2}'


@asynccontextmanager
async def running(subscriber: EventSubscriber) -> AsyncIterator[list[BaseException]]:
    """Run ``subscriber`` through the block; yield what ended its run, if anything."""
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            await subscriber.run()
        except BaseException as exc:  # the tests assert that nothing did
            failure.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            yield failure
            await subscriber.stop()


def _bad(timestamp: str) -> str:
    return (
        f'{{"event_type":"profile_created","profile_id":1,"timestamp":"{timestamp}"}}'
    )


@pytest.mark.parametrize("timestamp", [LATE, EARLY])
def test_decode_rejects_timestamp_that_overflows_utc(timestamp: str) -> None:
    # decode() promises EventDecodeError for input that does not fit.
    registry = EventRegistry()
    with pytest.raises(EventDecodeError):
        registry.decode("profile_events", _bad(timestamp))


@pytest.mark.parametrize("timestamp", [LATE, EARLY])
async def test_pubsub_subscriber_survives_timestamp_overflow(
    own_redis_server: RedisServer, timestamp: str
) -> None:
    handled: list[Any] = []
    subscriber = EventSubscriber(own_redis_server.url)

    @subscriber.on("profile_events")
    async def handle(topic: str, event: object) -> None:
        handled.append(event)

    client = own_redis_server.client()
    async with running(subscriber) as failure:
        await wait_until(lambda: client.pubsub_numsub("profile_events")[0][1] > 0)
        client.publish("profile_events", _bad(timestamp))
        client.publish("profile_events", GOOD)
        await wait_until(lambda: len(handled) == 1 or bool(failure), timeout=5)
        assert failure == []
        assert subscriber.get_stats()["invalid_events"] == 1

    client.close()


async def test_stream_subscriber_dead_letters_timestamp_overflow(
    own_redis_server: RedisServer,
) -> None:
    handled: list[Any] = []
    subscriber = EventSubscriber(
        own_redis_server.url,
        transport="stream",
        group="g",
        start_from="all",
        block_seconds=0.5,
    )

    @subscriber.on("profile_events")
    async def handle(topic: str, event: object) -> None:
        handled.append(event)

    client = own_redis_server.client()
    client.xadd(stream_key("profile_events"), {"data": _bad(LATE)})
    client.xadd(stream_key("profile_events"), {"data": GOOD})
    async with running(subscriber) as failure:
        await wait_until(lambda: len(handled) == 1 or bool(failure), timeout=5)
        assert failure == []
        await wait_until(
            lambda: client.xlen(dead_letter_key("profile_events")) == 1, timeout=5
        )

    client.close()


async def test_publish_refuses_timestamp_that_overflows_utc() -> None:
    # publish() promises EventEncodeError for an event that does not fit
    # its topic's model; an OverflowError escapes instead.
    publisher = EventPublisher("memory://break5")
    async with publisher:
        with pytest.raises(EventEncodeError):
            await publisher.publish(
                "key_submission",
                {"key_value": "abc123", "token_name": "t", "timestamp": LATE},
            )


class _KeyAbort(BaseException):
    """A BaseException that is not KeyboardInterrupt, SystemExit or cancel."""


async def test_ordering_key_raising_base_exception_rejects_event() -> None:
    # order_by(): "an event on which the function raises ... is rejected
    # like an undecodable one"; a handler raising such a BaseException is
    # that handler's failure, but from the key function it ends run().
    url = "memory://break5-order"
    subscriber = EventSubscriber(url)
    handled: list[int] = []

    def key(event: Any) -> Any:
        if event["n"] == 1:
            raise _KeyAbort
        return event["n"]

    @subscriber.on("orders")
    async def handle(topic: str, event: Any) -> None:
        handled.append(event["n"])

    subscriber.order_by("orders", key)
    async with running(subscriber) as failure, EventPublisher(url) as publisher:
        await anyio.sleep(0.3)
        for n in range(3):
            await publisher.publish("orders", {"n": n})
        await wait_until(lambda: len(handled) == 2 or bool(failure), timeout=5)
        assert failure == []
        assert sorted(handled) == [0, 2]
        assert subscriber.get_stats()["invalid_events"] == 1


class _Picky(Event):
    """A user's model whose validator raises what pydantic lets through."""

    event_type: str = "picky"
    code: str

    @field_validator("code")
    @classmethod
    def _known(cls, value: str) -> str:
        return {"a": "alpha", "b": "beta"}[value]  # KeyError for the rest


def test_a_user_validator_raising_keyerror_is_a_decode_error() -> None:
    registry = EventRegistry()
    registry.register("picky", _Picky)
    assert registry.decode("picky", '{"code":"a"}').code == "alpha"  # type: ignore[union-attr]
    with pytest.raises(EventDecodeError, match="raised KeyError") as caught:
        registry.decode("picky", '{"code":"zz-secret-zz"}')
    assert "zz-secret-zz" not in str(caught.value)
    with pytest.raises(EventEncodeError, match="raised KeyError"):
        registry.encode("picky", {"code": "zz"})


async def test_a_stream_subscriber_dead_letters_what_a_user_validator_breaks_on(
    own_redis_server: RedisServer,
) -> None:
    registry = EventRegistry()
    registry.register("picky", _Picky)
    handled: list[str] = []
    subscriber = EventSubscriber(
        own_redis_server.url,
        transport="stream",
        group="g",
        start_from="all",
        block_seconds=0.5,
        registry=registry,
    )

    @subscriber.on("picky")
    async def handle(topic: str, event: _Picky) -> None:
        handled.append(event.code)

    client = own_redis_server.client()
    client.xadd(stream_key("picky"), {"data": '{"code":"zz"}'})
    client.xadd(stream_key("picky"), {"data": '{"code":"b"}'})
    async with running(subscriber) as failure:
        await wait_until(lambda: handled == ["beta"] or bool(failure), timeout=5)
        assert failure == []
        await wait_until(lambda: client.xlen(dead_letter_key("picky")) == 1)
        assert subscriber.get_stats()["invalid_events"] == 1

    client.close()
