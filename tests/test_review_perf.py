"""Review of the perf change: one id -> fields in-flight map in the streams consumer.

Each test fails on the change under review and states the expected behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from redis_events import EventPublisher, EventSubscriber, current_delivery
from redis_events._keys import dead_letter_key, stream_key
from tests.helpers import wait_until

if TYPE_CHECKING:
    import redis

pytestmark = pytest.mark.redis


def _xrange(r: redis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    rows: Any = r.xrange(key)
    return [(str(entry_id), dict(fields)) for entry_id, fields in rows]


async def test_a_dead_letter_keeps_its_data_when_its_entry_was_in_flight_twice(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    # retry_backoff longer than claim_min_idle: an entry that failed and waits
    # for its retry is not kept alive, so this consumer's own XAUTOCLAIM takes
    # it back before the retry. Calls: 1 fails (retry A due at 2 s); 2, the
    # reclaim at about 1 s, fails (retry B due at about 3 s); 3, retry A,
    # runs from 2 s to 4 s; 4, retry B with delivery count 3, starts at about
    # 3 s while call 3 still runs, and fails after call 3 failed: the entry
    # reaches max_deliveries and is dead-lettered.
    topic, group = f"{uid}:twice", f"{uid}-twice"
    sub = EventSubscriber(
        redis_url,
        transport="stream",
        group=group,
        start_from="all",
        max_deliveries=3,
        retry_backoff=2.0,
        claim_min_idle=1.0,
        claim_interval=0.2,
        block_seconds=0.2,
    )
    counts: list[int] = []
    sleeps = {2: 2.0, 3: 1.2}

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        call = len(counts)
        counts.append(current_delivery().delivery_count)
        await anyio.sleep(sleeps.get(call, 0))
        raise ValueError("this event can never be handled")

    dead = dead_letter_key(topic)
    async with sub, EventPublisher(redis_url, transport="stream") as pub:
        entry_id = str(await pub.publish(topic, {"n": 1}))
        await wait_until(lambda: r.xlen(dead) == 1, timeout=15)

    assert counts[:4] == [1, 2, 2, 3]
    [original] = _xrange(r, stream_key(topic))
    [(_, letter)] = _xrange(r, dead)
    assert letter["original_id"] == entry_id
    # The change pops the entry's fields when call 3 settles, so call 4's
    # dead letter is written without the event: no "data" field at all.
    assert letter.get("data") == original[1]["data"]


async def test_an_entry_in_its_handler_is_kept_alive_after_an_earlier_copy_settled(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    # The same double delivery as above (pre-existing, not new in this
    # change): calls 3 and 4 hold the same entry at once. Call 3 fails at
    # 4 s and its settle drops the id from the in-flight map, so call 4, which
    # runs until about 6 s and succeeds, is no longer kept alive: idle for
    # claim_min_idle, the entry is claimed again and dead-lettered while the
    # handler still runs, and the success is lost.
    topic, group = f"{uid}:alive", f"{uid}-alive"
    sub = EventSubscriber(
        redis_url,
        transport="stream",
        group=group,
        start_from="all",
        max_deliveries=3,
        retry_backoff=2.0,
        claim_min_idle=1.0,
        claim_interval=0.2,
        block_seconds=0.2,
    )
    calls: list[int] = []
    finished = anyio.Event()

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        call = len(calls)
        calls.append(current_delivery().delivery_count)
        if call == 3:
            await anyio.sleep(3.0)
            finished.set()
            return

        await anyio.sleep(2.0 if call == 2 else 0)
        raise ValueError("fails until its fourth call")

    dead = dead_letter_key(topic)
    async with sub, EventPublisher(redis_url, transport="stream") as pub:
        await pub.publish(topic, {"n": 1})
        with anyio.fail_after(15):
            await finished.wait()

        await wait_until(lambda: sub.get_stats()["acked"] + r.xlen(dead) >= 1)
        stats = sub.get_stats()

    assert calls[:4] == [1, 2, 2, 3]
    # Handled by call 4: acknowledged, never dead-lettered under it.
    assert r.xlen(dead) == 0
    assert stats["acked"] == 1
