"""The settler's acknowledgements that ride with a read, on a real redis-server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from redis_events._connection import create_client
from redis_events._keys import stream_key
from redis_events._settle import Settler
from redis_events.config import Settings
from redis_events.dispatcher import Stats

if TYPE_CHECKING:
    import redis
    from redis.asyncio.client import Pipeline

pytestmark = pytest.mark.redis


async def test_acks_written_with_a_read_are_counted_and_the_read_comes_back(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    key, group = stream_key(f"{uid}:settle"), f"group-{uid}"
    ids = [_text(r.xadd(key, {"data": b"{}"})) for _ in range(5)]
    r.xgroup_create(key, group, id="0")
    r.xreadgroup(group, "c", {key: ">"}, count=3)
    settings = Settings(redis_url=redis_url, group=group)
    stats = Stats()
    client = create_client(settings, role="sub")
    settler = Settler(client, settings, stats, "c")
    for entry_id in ids[:3]:
        settler.ack(key, entry_id)

    def read(pipe: Pipeline) -> object:
        return pipe.xreadgroup(group, "c", {key: ">"}, count=10)

    try:
        reply: Any = await settler.ack_with_read(client, read)
    finally:
        await client.aclose()

    [(_, entries)] = reply
    assert [_text(entry_id) for entry_id, _ in entries] == ids[3:]
    assert stats.extra["acked"] == 3
    assert not settler.has_acks
    # Only the two entries just read are pending now.
    assert r.xpending(key, group)["pending"] == 2


async def test_acks_refused_with_a_read_stay_queued_for_the_settler(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    key, group = stream_key(f"{uid}:settle"), f"group-{uid}"
    r.xadd(key, {"data": b"{}"})
    r.xgroup_create(key, group, id="0")
    settings = Settings(redis_url=redis_url, group=group)
    stats = Stats()
    client = create_client(settings, role="sub")
    settler = Settler(client, settings, stats, "c")
    # A stream that is no stream: Redis refuses the XACK (WRONGTYPE).
    wrong = f"{uid}:not-a-stream"
    r.set(wrong, "x")
    settler.ack(wrong, "1-1")

    def read(pipe: Pipeline) -> object:
        return pipe.xreadgroup(group, "c", {key: ">"}, count=10)

    try:
        reply: Any = await settler.ack_with_read(client, read)
    finally:
        await client.aclose()

    assert len(reply[0][1]) == 1
    assert settler.pending == 1
    assert stats.extra.get("acked", 0) == 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
