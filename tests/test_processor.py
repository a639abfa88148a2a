"""EventProcessor in-process against a real redis-server.

The processor uses the fixed topic names of the original design, and pub/sub
channels are shared by every database of a server, so each live test here
owns its redis-server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from redis_events.events import REDACTED, ProfileCreated
from redis_events.processor import (
    KEY_MAX_LENGTH,
    KEY_MIN_LENGTH,
    EventProcessor,
    check_key,
)
from redis_events.publisher import EventPublisher
from tests.helpers import RawSubscriber, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    import redis

    from tests.redis_server import RedisServer

KEY_TOPIC = "key_submission"
PROFILE_TOPIC = "profile_events"
RESULTS_TOPIC = "processing_results"
TOPICS = (KEY_TOPIC, PROFILE_TOPIC, RESULTS_TOPIC)

SECRET = "abc123"
ORIGINAL_KEY_EVENT = (
    '{"event_type": "key_submitted", "key_value": "abc123", '
    '"token_name": "Token1", "timestamp": "2024-01-01T10:00:00"}'
)


@pytest.fixture
def own_r(own_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client (``R``) of the test's own server."""
    client = own_redis_server.client()
    yield client
    client.close()


@contextlib.asynccontextmanager
async def running(processor: EventProcessor) -> AsyncIterator[EventProcessor]:
    """Run ``processor`` until the block ends; it is subscribed on entry."""
    async with anyio.create_task_group() as task_group:
        await task_group.start(processor.run)
        try:
            yield processor
        finally:
            await processor.stop()


async def settle(
    processor: EventProcessor,
    results: int,
    timeout: float = 10.0,  # noqa: ASYNC109  # a polling limit, not a cancel scope
) -> None:
    """Wait until ``results`` came back and no handler is still running."""

    def settled() -> bool:
        stats = processor.get_stats()
        return stats["results_received"] >= results and stats["in_flight"] == 0

    await wait_until(settled, timeout=timeout)


def results_of(raw: RawSubscriber) -> list[dict[str, Any]]:
    """Decode what the raw subscriber saw on ``processing_results``."""
    return [json.loads(data) for ch, data in raw.messages if ch == RESULTS_TOPIC]


@pytest.mark.parametrize("key", ["abc123", "A.b_c-9", "k" * KEY_MAX_LENGTH])
def test_check_key_accepts_six_to_512_safe_characters(key: str) -> None:
    assert check_key(key) == (True, None)


@pytest.mark.parametrize(
    "key",
    [
        "abcde",
        "k" * (KEY_MAX_LENGTH + 1),
        "bad key!",
        "",
        "abc123\n",
        "abcdéf",
    ],
)
def test_check_key_rejects_with_a_reason_that_omits_the_key(key: str) -> None:
    valid, reason = check_key(key)

    assert valid is False
    assert reason
    if len(key) >= KEY_MIN_LENGTH:
        assert key not in reason


def test_check_key_limits_are_six_and_512() -> None:
    assert (KEY_MIN_LENGTH, KEY_MAX_LENGTH) == (6, 512)
    assert check_key("a" * 5)[0] is False
    assert check_key("a" * 6)[0] is True
    assert check_key("a" * 512)[0] is True
    assert check_key("a" * 513)[0] is False


def test_get_stats_has_business_publisher_and_subscriber_counters() -> None:
    processor = EventProcessor("redis://127.0.0.1:1/0")

    stats = processor.get_stats()

    expected = {
        "keys_processed",
        "profiles_processed",
        "results_received",
        "events_published",
        "handler_errors",
        "invalid_events",
        "reconnects",
    }
    assert expected <= stats.keys()
    assert all(isinstance(v, int) and v == 0 for v in stats.values())


@pytest.mark.redis
async def test_original_key_event_yields_one_redacted_key_processed(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="redis_events")
    processor = EventProcessor(own_redis_server.url)

    with RawSubscriber(own_r, RESULTS_TOPIC) as raw:
        async with running(processor):
            receivers = own_r.publish(KEY_TOPIC, ORIGINAL_KEY_EVENT)
            await wait_until(lambda: raw.count() >= 1)
            await settle(processor, results=1)
            await raw.aflush()
            stats = processor.get_stats()

        messages = raw.messages

    assert receivers == 1
    assert len(messages) == 1
    data = messages[0][1]
    result = json.loads(data)
    assert result["event_type"] == "key_processed"
    assert result["result"]["valid"] is True
    assert result["result"]["length"] == 6
    assert result["result"]["token_name"] == "Token1"
    assert result["result"]["reason"] is None
    assert result["original_event"]["key_value"] == REDACTED
    assert result["original_event"]["token_name"] == "Token1"
    assert result["original_event"]["timestamp"] == "2024-01-01T10:00:00+00:00"
    assert SECRET not in data
    assert SECRET not in caplog.text
    assert stats["keys_processed"] == 1
    assert stats["events_published"] == 1
    assert stats["results_received"] == 1
    assert stats["handler_errors"] == 0


@pytest.mark.redis
async def test_invalid_key_result_names_the_reason_but_not_the_key(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="redis_events")
    secret = "not a valid key, 9f3c!"
    processor = EventProcessor(own_redis_server.url)

    with RawSubscriber(own_r, RESULTS_TOPIC) as raw:
        async with running(processor), EventPublisher(own_redis_server.url) as pub:
            await pub.publish_key_submitted(secret, "Token2")
            await settle(processor, results=1)
            await raw.aflush()

        messages = raw.messages

    assert len(messages) == 1
    result = json.loads(messages[0][1])
    assert result["result"]["valid"] is False
    assert result["result"]["length"] == len(secret)
    assert result["result"]["reason"]
    assert secret not in messages[0][1]
    assert secret not in caplog.text


@pytest.mark.redis
@pytest.mark.parametrize("action", ["created", "updated", "deleted"])
async def test_profile_event_yields_one_profile_processed_with_its_action(
    own_redis_server: RedisServer, own_r: redis.Redis, action: str
) -> None:
    processor = EventProcessor(own_redis_server.url)

    with RawSubscriber(own_r, RESULTS_TOPIC) as raw:
        async with running(processor), EventPublisher(own_redis_server.url) as pub:
            if action == "created":
                await pub.publish_profile_created(7, {"token_name": "P"})
            elif action == "updated":
                await pub.publish_profile_updated(7, {"active": False})
            else:
                await pub.publish_profile_deleted(7)

            await settle(processor, results=1)
            await raw.aflush()
            stats = processor.get_stats()

        results = results_of(raw)

    assert len(results) == 1
    assert results[0]["event_type"] == "profile_processed"
    assert results[0]["result"]["action"] == action
    assert results[0]["result"]["profile_id"] == 7
    assert results[0]["original_event"]["event_type"] == f"profile_{action}"
    assert stats["profiles_processed"] == 1
    assert stats["keys_processed"] == 0


@pytest.mark.redis
async def test_processor_counts_its_own_results_and_never_republishes_them(
    own_redis_server: RedisServer, own_r: redis.Redis
) -> None:
    keys, profiles = 10, 10
    total = keys + profiles
    processor = EventProcessor(own_redis_server.url)

    with RawSubscriber(own_r, RESULTS_TOPIC) as raw:
        async with running(processor), EventPublisher(own_redis_server.url) as pub:
            for i in range(keys):
                await pub.publish_key_submitted(f"key-{i:04d}", f"Token{i}")

            for i in range(profiles):
                await pub.publish_profile_created(i, {})

            await settle(processor, results=total)
            await raw.aflush()
            first = (raw.count(), processor.get_stats())
            # A republished result would arrive after its original; watch
            # the channel for a while longer to see none does.
            await anyio.sleep(1.0)
            await raw.aflush()
            second = (raw.count(), processor.get_stats())

    for count, stats in (first, second):
        assert count == total
        assert stats["results_received"] == total
        assert stats["events_published"] == total
        assert stats["keys_processed"] == keys
        assert stats["profiles_processed"] == profiles
        assert stats["other_events"] == 0


class _CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``, which creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def bad_payloads(topic: str, marker: Path) -> dict[str, bytes]:
    """Four kinds of bad input for ``topic``, by name."""
    pickled = pickle.dumps(
        {
            "event_type": "key_submitted",
            "key_value": SECRET,
            "token_name": "Token1",
            "marker": _CreatesFileWhenUnpickled(marker),
        }
    )
    unknown_type = {
        "event_type": "profile_exploded",
        "key_value": SECRET,
        "token_name": "Token1",
        "profile_id": 1,
        "original_event": {},
        "result": {"profile_id": 1, "action": "created"},
    }
    return {
        "not json": b"\xff\xfe{not json at all",
        "wrong shape": json.dumps({"hello": "world", "topic": topic}).encode(),
        "pickle": pickled,
        "unknown event_type": json.dumps(unknown_type).encode(),
    }


@pytest.mark.redis
async def test_bad_input_on_every_topic_is_rejected_logged_and_counted(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG, logger="redis_events")
    marker = tmp_path / "unpickled.pwned"
    sent_raw: set[str] = set()
    receivers: list[int] = []
    processor = EventProcessor(own_redis_server.url)

    with RawSubscriber(own_r, RESULTS_TOPIC) as raw:
        async with running(processor):
            for topic in TOPICS:
                for payload in bad_payloads(topic, marker).values():
                    sent_raw.add(payload.decode("utf-8", errors="replace"))
                    receivers.append(own_r.publish(topic, payload))

            own_r.publish(KEY_TOPIC, ORIGINAL_KEY_EVENT)
            await settle(processor, results=1)
            await raw.aflush()
            stats = processor.get_stats()

        # The raw subscriber also sees the bad input sent to processing_results.
        seen = raw.messages
        results = [json.loads(data) for _, data in seen if data not in sent_raw]

    rejections = [
        record
        for record in caplog.records
        if record.name == "redis_events.subscriber"
        and record.levelno == logging.WARNING
    ]
    per_topic = {
        t: sum(getattr(r, "topic", None) == t for r in rejections) for t in TOPICS
    }
    # One receiver per topic (the processor), plus R on processing_results.
    assert receivers == [1] * 8 + [2] * 4
    assert len(seen) == 4 + 1
    assert stats["invalid_events"] == 12
    assert len(rejections) == 12
    assert per_topic == dict.fromkeys(TOPICS, 4)
    for record in rejections:
        assert isinstance(record.args, tuple)
        reason = record.args[1]
        assert isinstance(reason, str)
        assert reason.strip()
        assert SECRET not in record.getMessage()

    assert stats["other_events"] == 0
    assert stats["handler_errors"] == 0
    assert stats["keys_processed"] == 1
    assert len(results) == 1
    assert results[0]["result"]["valid"] is True
    assert not marker.exists()


@pytest.mark.redis
async def test_ten_thousand_events_are_each_processed_exactly_once(
    own_redis_server: RedisServer, own_r: redis.Redis
) -> None:
    total = 10_000
    events = [ProfileCreated(profile_id=i, profile_data={"n": i}) for i in range(total)]
    sent_ids = {event.event_id for event in events}
    processor = EventProcessor(own_redis_server.url)

    with RawSubscriber(own_r, RESULTS_TOPIC) as raw:
        async with running(processor), EventPublisher(own_redis_server.url) as pub:
            receivers = await pub.publish_many(PROFILE_TOPIC, events)
            with contextlib.suppress(AssertionError):
                await settle(processor, results=total, timeout=120)
                await wait_until(lambda: raw.count() >= total, timeout=30)

            await raw.aflush()
            stats = processor.get_stats()

        results = results_of(raw)

    received_ids = {r["original_event"]["event_id"] for r in results}
    server_log = own_redis_server.log_text().splitlines()
    # Redis logs the clients it closes for output buffer overruns.
    dropped = [line for line in server_log if "buffer" in line.lower()]
    lost = f"stats={stats}; redis log: {dropped}"
    assert receivers == [1] * total
    # Each input and each result read back from processing_results.
    assert stats["events_received"] == 2 * total, lost
    assert stats["profiles_processed"] == total, lost
    assert stats["results_received"] == total, lost
    assert stats["handler_errors"] == 0, lost
    assert stats["reconnects"] == 0, lost
    assert len(results) == total
    assert received_ids == sent_ids
