"""Regressions of the break-it review of the hot-path merge (perf2).

One test per defect found by attacking the publisher's slot-bounded pool,
the acknowledgements that ride with a stream read, and the dispatcher's
``submit_nowait``; each failed on the merged code (029310c) and passes since.
The defect is in the docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

from redis_events._cluster_streams import ShardedStreamConsumer
from redis_events._connection import create_client
from redis_events._keys import stream_key
from redis_events._settle import Settler
from redis_events.config import Settings
from redis_events.dispatcher import Delivery, Dispatcher, Outcome, Stats

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio.client import Pipeline

    from redis_events._stream_entries import Room
    from redis_events._streams import StreamConsumer
    from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.mark.fault
async def test_a_stop_during_acks_with_a_read_lets_the_round_trip_finish(
    own_redis_server: RedisServer,
) -> None:
    """A stop cut the XACKs-with-read round trip in half.

    The acknowledgements were queued again although Redis had run them, so
    the settler wrote them a second time and counted none of them, and the
    entries of the read were left pending with no handler. A stop now lets
    the round trip finish, as it lets every other write of the settler.
    """
    server = own_redis_server
    r = server.client()
    key, group = stream_key("stop-during-ack"), "group"
    ids = [str(r.xadd(key, {"data": b"{}"})) for _ in range(5)]
    r.xgroup_create(key, group, id="0")
    r.xreadgroup(group, "c", {key: ">"}, count=3)
    settings = Settings(redis_url=server.url, group=group, socket_timeout=30)
    stats = Stats()
    client = create_client(settings, role="sub")
    settler = Settler(client, settings, stats, "c")
    for entry_id in ids[:3]:
        settler.ack(key, entry_id)

    def read(pipe: Pipeline) -> object:
        return pipe.xreadgroup(group, "c", {key: ">"}, count=10)

    replies: list[Any] = []

    async def ack_and_read(scope: anyio.CancelScope) -> None:
        with scope:
            replies.append(await settler.ack_with_read(client, read))

    try:
        # Connected before the freeze: the round trip is then written at once.
        await client.ping()
        server.freeze()
        try:
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()
                tg.start_soon(ack_and_read, scope)
                # Blocked on the reply of the frozen server: stop it there.
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                server.thaw()
        finally:
            server.thaw()
    finally:
        await client.aclose()

    assert stats.extra.get("acked", 0) == 3
    assert not settler.has_acks
    assert r.xpending(key, group)["pending"] == 2


class _Part:
    """A slot's read loop that hands over what it is given, one by one."""

    def __init__(
        self,
        stats: Stats,
        deliveries: list[Delivery],
        *,
        after: anyio.Event | None = None,
    ) -> None:
        self.stats = stats
        self.deliveries = deliveries
        self.after = after
        self.handing = anyio.Event()

    async def run(
        self, deliver: Callable[[Delivery], Awaitable[None]], room: Room
    ) -> None:
        if self.after is not None:
            await self.after.wait()
            await anyio.wait_all_tasks_blocked()

        for delivery in self.deliveries:
            # Counted as received when prepared, as StreamConsumer does.
            self.stats.events_received += 1
            self.handing.set()
            await deliver(delivery)


async def test_a_slot_read_loop_stopped_before_its_turn_counts_its_delivery() -> None:
    """A delivery waiting for its turn among a cluster's slot loops was lost.

    The slot loops of a cluster hand deliveries over one at a time. One that
    was stopped while waiting for its turn had counted its entry as received,
    but the entry was neither started nor counted as not started, so the
    counters no longer added up. It now counts as not started.
    """
    stats = Stats()
    release = anyio.Event()
    outcomes: list[Outcome] = []

    async def handler(topic: str, event: Any) -> None:
        await release.wait()

    dispatcher = Dispatcher(
        max_concurrency=1,
        handler_timeout=None,
        shutdown_timeout=30,
        stats=stats,
        on_outcome=lambda delivery, outcome: outcomes.append(outcome),
    )

    def on_delivery(delivery: Delivery) -> Awaitable[None] | None:
        if dispatcher.submit_nowait(handler, delivery):
            return None

        return dispatcher.submit(handler, delivery)

    # The first loop fills the dispatcher, then waits for room holding its
    # turn; the second loop's delivery waits for that turn.
    first = _Part(stats, [Delivery("a", {}), Delivery("a", {})])
    second = _Part(stats, [Delivery("b", {})], after=first.handing)
    consumer = ShardedStreamConsumer.__new__(ShardedStreamConsumer)
    consumer.parts = cast("list[StreamConsumer]", [first, second])

    async with dispatcher.running():
        with anyio.CancelScope() as reading:

            async def stop_when_all_wait() -> None:
                await second.handing.wait()
                await anyio.wait_all_tasks_blocked()
                reading.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_when_all_wait)
                await consumer.run(on_delivery, _no_room)

        release.set()

    finished = (
        stats.events_handled
        + stats.handler_errors
        + stats.handler_timeouts
        + stats.handlers_cancelled
        + stats.invalid_events
    )
    assert stats.events_received == 3
    assert finished == 3
    assert sorted(o.value for o in outcomes) == [
        "handled",
        "not_started",
        "not_started",
    ]


async def _no_room() -> int:
    return 0
