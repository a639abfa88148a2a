"""Regressions of the break-it review of the hot-path merge (perf2).

One test per defect found by attacking the publisher's slot-bounded pool,
the acknowledgements that ride with a stream read, and the dispatcher's
``submit_nowait``; each failed on the merged code (029310c) and passes since.
The defect is in the docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from redis_events._connection import create_client
from redis_events._keys import stream_key
from redis_events._settle import Settler
from redis_events.config import Settings
from redis_events.dispatcher import Stats

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

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
