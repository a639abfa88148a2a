"""A slow handler under a fast producer, on both transports.

What must hold: the subscriber's memory stays bounded by its concurrency
limit (it stops reading instead of queueing), and what happens to the excess
is stated in the stats and logs. On pub/sub, Redis cuts a client that falls
behind by more than its output-buffer limit: the subscriber counts and logs
the lost connection and reconnects. On streams the excess waits in the
stream and nothing is lost.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import pytest

from redis_events import EventSubscriber
from redis_events._keys import stream_key
from tests.helpers import wait_until

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.fault]

CONCURRENCY = 4
EVENTS = 20_000
PAYLOAD = b'{"event_type": "tick", "pad": "' + b"x" * 160 + b'"}'
# Pub/sub needs more bytes than the kernel's socket buffers hold before
# Redis's own output buffer fills: 20,000 events of 2 kB.
BIG_PAYLOAD = b'{"event_type": "tick", "pad": "' + b"x" * 2000 + b'"}'


class SlowHandler:
    """Takes 10 ms per event; remembers the most handlers seen at once."""

    def __init__(self, sub: EventSubscriber) -> None:
        self.sub = sub
        self.peak_in_flight = 0
        self.handled = 0

    async def __call__(self, topic: str, event: object) -> None:
        in_flight = self.sub.get_stats()["in_flight"]
        self.peak_in_flight = max(self.peak_in_flight, in_flight)
        await anyio.sleep(0.01)
        self.handled += 1


def rss_kib() -> int:
    """Return this process's resident set size in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    msg = "no VmRSS line"
    raise AssertionError(msg)


async def test_a_slow_pubsub_subscriber_is_cut_by_redis_and_says_so(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redis_events")
    r = own_redis_server.client()
    r.config_set("client-output-buffer-limit", "pubsub 256kb 128kb 1")
    sub = EventSubscriber(
        own_redis_server.url, max_concurrency=CONCURRENCY, reconnect_backoff_cap=0.5
    )
    slow = SlowHandler(sub)
    sub.on("ticks")(slow)

    before = rss_kib()
    async with sub:
        pipe = r.pipeline(transaction=False)
        for _ in range(EVENTS):
            pipe.publish("ticks", BIG_PAYLOAD)

        pipe.execute()
        await wait_until(lambda: sub.get_stats()["reconnects"] >= 1, timeout=20)
        grown = rss_kib() - before

    stats = sub.get_stats()
    assert slow.peak_in_flight <= CONCURRENCY
    # Far fewer than all: the rest was dropped by Redis with the connection.
    assert 0 < slow.handled < EVENTS
    assert stats["reconnects"] >= 1
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
    lost = [r for r in caplog.records if "Lost the subscriber connection" in r.message]
    restored = [r for r in caplog.records if "restored 1 channels" in r.message]
    assert lost
    assert restored
    assert "output buffer limits" in own_redis_server.log_text()
    r.close()


async def test_a_slow_stream_consumer_keeps_the_excess_in_the_stream(
    own_redis_server: RedisServer,
) -> None:
    r = own_redis_server.client()
    key = stream_key("ticks")
    pipe = r.pipeline(transaction=False)
    for _ in range(EVENTS):
        pipe.xadd(key, {"data": PAYLOAD})

    pipe.execute()
    sub = EventSubscriber(
        own_redis_server.url,
        transport="stream",
        start_from="all",
        max_concurrency=CONCURRENCY,
    )
    slow = SlowHandler(sub)
    sub.on("ticks")(slow)

    before = rss_kib()
    async with sub:
        await wait_until(lambda: slow.handled >= 200, timeout=20)
        pending = r.xpending(key, "redis-events")["pending"]
        grown = rss_kib() - before

    stats = sub.get_stats()
    info = {g["name"]: g for g in r.xinfo_groups(key)}["redis-events"]
    assert slow.peak_in_flight <= CONCURRENCY
    # No more taken from the stream than there are handler slots.
    assert pending <= CONCURRENCY
    # Everything not read is still in the stream; at most one batch of free
    # slots was read at the stop without being handed to a handler.
    unread = EVENTS - stats["events_received"]
    assert unread - CONCURRENCY <= info["lag"] <= unread
    assert stats["acked"] == slow.handled
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
    r.close()
