"""An entry waiting for its retry stays this consumer's, in one copy.

With ``retry_backoff`` above ``claim_min_idle`` the consumer's own XAUTOCLAIM
used to take a failed entry back before its retry was due, so two copies of
it ran at once: the first to settle dropped the entry's fields (its dead
letter lost the event) and stopped keeping the other copy fresh (it was
claimed and dead-lettered while its handler still ran). Found by a review
of the in-flight map change; the tests hold the consumer to one copy.
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

# Retries due after 2 s while entries idle for 1 s may be claimed.
SETTINGS: dict[str, Any] = {
    "transport": "stream",
    "start_from": "all",
    "max_deliveries": 3,
    "retry_backoff": 2.0,
    "claim_min_idle": 1.0,
    "claim_interval": 0.2,
    "block_seconds": 0.2,
}


def _xrange(r: redis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    rows: Any = r.xrange(key)
    return [(str(entry_id), dict(fields)) for entry_id, fields in rows]


class Calls:
    """Delivery counts of the handler's calls, and the most running at once."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.running = 0
        self.most = 0

    async def make(self, *, sleep: float, fail_before: int) -> None:
        """One call: record it, sleep, and fail while it is before ``fail_before``."""
        call = len(self.counts)
        self.counts.append(current_delivery().delivery_count)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            # Longer than claim_min_idle: only the keep-alive keeps it ours.
            await anyio.sleep(sleep)
        finally:
            self.running -= 1

        if call < fail_before:
            raise ValueError(f"fails before call {fail_before}")


async def test_a_failing_entry_runs_once_per_delivery_and_its_dead_letter_keeps_it(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"{uid}:once"
    sub = EventSubscriber(redis_url, group=f"{uid}-once", **SETTINGS)
    calls = Calls()

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        await calls.make(sleep=1.5, fail_before=99)

    dead = dead_letter_key(topic)
    async with sub, EventPublisher(redis_url, transport="stream") as pub:
        entry_id = str(await pub.publish(topic, {"n": 1}))
        await wait_until(lambda: r.xlen(dead) == 1, timeout=20)
        stats = sub.get_stats()

    assert calls.counts == [1, 2, 3]
    assert calls.most == 1
    assert stats["retries"] == 2
    assert stats["reclaimed"] == 0
    assert stats["dead_lettered"] == 1
    [original] = _xrange(r, stream_key(topic))
    [(_, letter)] = _xrange(r, dead)
    assert letter["original_id"] == entry_id
    assert letter["data"] == original[1]["data"]
    assert letter["delivery_count"] == "3"
    assert r.xpending(stream_key(topic), f"{uid}-once")["pending"] == 0


async def test_an_entry_that_succeeds_on_its_last_retry_is_acked_not_dead_lettered(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"{uid}:late"
    sub = EventSubscriber(redis_url, group=f"{uid}-late", **SETTINGS)
    calls = Calls()

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        await calls.make(sleep=1.5, fail_before=2)

    dead = dead_letter_key(topic)
    async with sub, EventPublisher(redis_url, transport="stream") as pub:
        await pub.publish(topic, {"n": 1})
        await wait_until(lambda: sub.get_stats()["acked"] == 1, timeout=20)
        # Past another claim_min_idle: nothing claims it afterwards either.
        await anyio.sleep(1.5)
        stats = sub.get_stats()

    assert calls.counts == [1, 2, 3]
    assert calls.most == 1
    assert stats["reclaimed"] == 0
    assert stats["dead_lettered"] == 0
    assert r.xlen(dead) == 0
    assert r.xpending(stream_key(topic), f"{uid}-late")["pending"] == 0
