"""The embedded mode: memory:// URLs run everything in one process.

memory:// is backed by fakeredis, one in-process server per URL host. These
tests prove the library's own logic works on it; live Redis behaviour is
tested elsewhere against a real redis-server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import anyio
import pytest

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    PROCESSING_RESULTS_TOPIC,
    PROFILE_EVENTS_TOPIC,
    EventProcessor,
    EventPublisher,
    EventSubscriber,
    KeyProcessed,
    KeySubmitted,
    ProfileCreated,
    ProfileProcessed,
    close_shared_publisher,
    get_publisher,
)
from redis_events.admin import EventAdmin
from redis_events.events import REDACTED
from tests.helpers import wait_until

SECRET = "my_secret_key_12345"


@pytest.fixture
def memory_url() -> str:
    """A memory:// URL of its own, so no test sees another's events."""
    return f"memory://mem-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a REDIS_URL of the machine from reaching get_publisher()."""
    for name in list(os.environ):
        if name.upper() == "REDIS_URL" or name.upper().startswith("REDIS_EVENTS_"):
            monkeypatch.delenv(name)


async def test_publisher_and_subscriber_exchange_events(memory_url: str) -> None:
    received: list[tuple[str, object]] = []
    subscriber = EventSubscriber(memory_url)

    @subscriber.on("orders", PROFILE_EVENTS_TOPIC)
    async def record(topic: str, event: object) -> None:
        received.append((topic, event))

    async with subscriber, EventPublisher(memory_url) as publisher:
        counts = [
            await publisher.publish("orders", {"event_type": "order", "n": 1}),
            await publisher.publish_profile_created(5, {"name": "p"}),
            await publisher.publish("orders", {"event_type": "order", "n": 2}),
        ]
        await wait_until(lambda: len(received) == 3)

    assert counts == [1, 1, 1]
    assert [topic for topic, _ in received] == [
        "orders",
        PROFILE_EVENTS_TOPIC,
        "orders",
    ]
    first, profile, second = (event for _, event in received)
    assert isinstance(first, dict)
    assert first["n"] == 1
    assert isinstance(second, dict)
    assert second["n"] == 2
    assert isinstance(profile, ProfileCreated)
    assert profile.profile_data == {"name": "p"}
    assert subscriber.get_stats()["events_received"] == 3
    assert subscriber.get_stats()["events_handled"] == 3
    assert publisher.get_stats()["events_published"] == 3


async def test_publish_many_reaches_the_subscriber_in_order(memory_url: str) -> None:
    received: list[int] = []
    subscriber = EventSubscriber(memory_url)

    @subscriber.on("batch")
    async def record(topic: str, event: dict[str, int]) -> None:
        received.append(event["n"])

    async with subscriber, EventPublisher(memory_url) as publisher:
        counts = await publisher.publish_many("batch", [{"n": n} for n in range(10)])
        await wait_until(lambda: len(received) == 10)

    assert counts == [1] * 10
    assert received == list(range(10))


async def test_key_submitted_arrives_with_the_key_for_the_consumer(
    memory_url: str,
) -> None:
    received: list[object] = []
    subscriber = EventSubscriber(memory_url)
    subscriber.subscribe_to_topics(
        {KEY_SUBMISSION_TOPIC: lambda topic, event: received.append(event)}
    )

    async with subscriber, EventPublisher(memory_url) as publisher:
        await publisher.publish_key_submitted(SECRET, "Production Token")
        await wait_until(lambda: len(received) == 1)

    (event,) = received
    assert isinstance(event, KeySubmitted)
    assert event.key_value.get_secret_value() == SECRET
    assert event.token_name == "Production Token"


async def test_different_memory_urls_are_isolated() -> None:
    name = uuid.uuid4().hex[:10]
    url_a, url_b = f"memory://a-{name}", f"memory://b-{name}"
    received: list[object] = []
    subscriber = EventSubscriber(url_a)
    subscriber.on("shared_topic")(lambda topic, event: received.append(event))

    async with (
        subscriber,
        EventPublisher(url_a) as publisher_a,
        EventPublisher(url_b) as publisher_b,
    ):
        receivers_b = await publisher_b.publish("shared_topic", {"from": "b"})
        receivers_a = await publisher_a.publish("shared_topic", {"from": "a"})
        await wait_until(lambda: len(received) == 1)

    assert receivers_b == 0
    assert receivers_a == 1
    assert [event["from"] for event in received if isinstance(event, dict)] == ["a"]
    assert subscriber.get_stats()["events_received"] == 1


async def test_same_memory_url_is_shared_by_separate_clients(memory_url: str) -> None:
    received: list[tuple[str, object]] = []
    first, second = EventSubscriber(memory_url), EventSubscriber(memory_url)
    first.on("t")(lambda topic, event: received.append(("first", event)))
    second.on("t")(lambda topic, event: received.append(("second", event)))

    async with first, second, EventPublisher(memory_url) as publisher:
        receivers = await publisher.publish("t", {"x": 1})
        await wait_until(lambda: len(received) == 2)

    assert receivers == 2
    assert sorted(who for who, _ in received) == ["first", "second"]


async def test_invalid_event_is_counted_and_never_reaches_a_handler(
    memory_url: str,
) -> None:
    received: list[object] = []
    subscriber = EventSubscriber(memory_url)
    subscriber.on(PROFILE_EVENTS_TOPIC)(lambda topic, event: received.append(event))

    async with subscriber, EventPublisher(memory_url) as publisher:
        # A second publisher without models can write anything.
        raw = EventPublisher(memory_url)
        raw.registry = raw.registry.copy()
        raw.registry.register(PROFILE_EVENTS_TOPIC, dict)
        await raw.publish(PROFILE_EVENTS_TOPIC, {"event_type": "nonsense"})
        await raw.close()
        await publisher.publish_profile_deleted(1)
        await wait_until(lambda: len(received) == 1)

    assert subscriber.get_stats()["invalid_events"] == 1
    assert subscriber.get_stats()["events_received"] == 2


async def test_processor_turns_a_key_submitted_into_a_key_processed(
    memory_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redis_events")
    results: list[object] = []
    processor = EventProcessor(memory_url)
    watcher = EventSubscriber(memory_url)
    watcher.on(PROCESSING_RESULTS_TOPIC)(lambda topic, event: results.append(event))

    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        async with watcher, EventPublisher(memory_url) as publisher:
            receivers = await publisher.publish_key_submitted(SECRET, "Token1")
            await wait_until(lambda: len(results) == 1)
            await wait_until(lambda: processor.get_stats()["results_received"] == 1)

        await processor.stop()

    assert receivers == 1
    (result,) = results
    assert isinstance(result, KeyProcessed)
    assert result.result.valid is True
    assert result.result.length == len(SECRET)
    assert result.result.token_name == "Token1"
    assert result.original_event["key_value"] == REDACTED
    stats = processor.get_stats()
    assert stats["keys_processed"] == 1
    assert stats["profiles_processed"] == 0
    assert stats["events_published"] == 1
    assert SECRET not in caplog.text


async def test_processor_turns_a_profile_event_into_a_profile_processed(
    memory_url: str,
) -> None:
    results: list[object] = []
    processor = EventProcessor(memory_url)
    watcher = EventSubscriber(memory_url)
    watcher.on(PROCESSING_RESULTS_TOPIC)(lambda topic, event: results.append(event))

    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        async with watcher, EventPublisher(memory_url) as publisher:
            await publisher.publish_profile_updated(7, {"active": False})
            await wait_until(lambda: len(results) == 1)

        await processor.stop()

    (result,) = results
    assert isinstance(result, ProfileProcessed)
    assert result.result.profile_id == 7
    assert result.result.action == "updated"
    assert processor.get_stats()["profiles_processed"] == 1


async def test_shared_publisher_follows_redis_url_to_memory(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", memory_url)
    received: list[object] = []
    subscriber = EventSubscriber()
    subscriber.on("t")(lambda topic, event: received.append(event))

    try:
        async with subscriber:
            shared = get_publisher()
            assert get_publisher() is shared
            assert shared.settings.redis_url == memory_url
            assert await shared.publish("t", {"x": 1}) == 1
            await wait_until(lambda: len(received) == 1)
    finally:
        await close_shared_publisher()

    assert get_publisher() is not shared
    await close_shared_publisher()


async def test_a_failing_handlers_event_lands_in_the_dead_letters_on_streams(
    memory_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Dead letters are written by a Lua script (EVALSHA), which fakeredis
    # runs with lupa, a dependency through fakeredis[lua].
    subscriber = EventSubscriber(
        memory_url,
        transport="stream",
        start_from="all",
        max_deliveries=1,
        block_seconds=0.1,
    )

    @subscriber.on("orders")
    async def fail(topic: str, event: object) -> None:
        raise ValueError("declined")

    async with EventPublisher(memory_url, transport="stream") as publisher:
        entry_id = await publisher.publish("orders", {"event_type": "order", "n": 1})

    async with EventAdmin(memory_url) as admin:
        with caplog.at_level(logging.WARNING, logger="redis_events"):
            async with subscriber:
                await wait_until(
                    lambda: subscriber.get_stats().get("dead_lettered", 0) == 1
                )

        letters = await admin.dead_letters("orders")

    assert [(d.original_id, d.reason) for d in letters] == [
        (entry_id, "handler failed 1 times")
    ]
    assert "Could not settle" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info and r.levelno < logging.ERROR]


NO_LUA_SCRIPT = """
import sys

sys.modules["lupa"] = None  # fakeredis without its lua extra: no EVALSHA

import logging

import anyio

from redis_events import EventPublisher, EventSubscriber

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")


async def main() -> None:
    url = "memory://no-lua"
    sub = EventSubscriber(
        url, transport="stream", start_from="all", max_deliveries=1, block_seconds=0.1
    )

    @sub.on("orders")
    async def fail(topic, event):
        raise ValueError("declined")

    async with EventPublisher(url, transport="stream") as publisher:
        await publisher.publish("orders", {"n": 1})

    async with sub:
        while not sub.get_stats()["handler_errors"]:
            await anyio.sleep(0.01)

    print("stopped", sub.get_stats()["dead_lettered"])


anyio.run(main)
"""


def test_a_dead_letter_that_cannot_be_written_at_stop_is_one_warning_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_LUA_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "stopped 0\n"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARN")]
    assert warnings[-1].startswith(
        "WARNING Could not acknowledge 1 entries at stop (ResponseError: unknown "
        "command 'evalsha'"
    )
    # The handler's own failure is an ERROR with its traceback; nothing else.
    assert done.stderr.count("Traceback") == 1
    assert "ValueError: declined" in done.stderr
