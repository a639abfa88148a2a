"""What the pub/sub readers share: the frames they pass on, and reconnecting.

Both ``redis_events._pubsub.PubSubReader`` and the cluster's
``redis_events._cluster_pubsub.ShardedPubSubReader`` pass each message on as a
``Frame``, open their connections with the ``unlogged`` push handler, and
reopen a lost connection with ``reopen()``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from redis_events.exceptions import RedisEventsError, RedisUnavailableError

if TYPE_CHECKING:
    from redis_events._connection import Backoff
    from redis_events.dispatcher import Stats

__all__ = ["Frame", "OnFrame", "reopen", "unlogged"]

# The pub/sub reader's logger: the records keep the name users filter on.
logger = logging.getLogger("redis_events._pubsub")


class Frame(NamedTuple):
    """One message as Redis sent it to this connection.

    ``generation`` changes with every reconnect and every change of the
    subscriptions that Redis has confirmed, so frames on either side of such
    a change are never mistaken for copies of one publish. A named tuple:
    one is made per message, and a tuple is the cheapest to make.
    """

    channel: bytes
    pattern: bytes | None
    data: bytes
    generation: int


OnFrame = Callable[[Frame], Awaitable[None]]


async def reopen(
    open_connection: Callable[[], Awaitable[None]], backoff: Backoff, stats: Stats
) -> None:
    """Call ``open_connection`` until it succeeds, backing off between tries."""
    while True:
        stats.reconnect_attempts += 1
        try:
            await open_connection()
        except RedisEventsError as exc:
            delay = backoff.next_delay()
            # An ACL or password problem may be fixed by an operator while we
            # wait, so it is retried too, but said loudly.
            unavailable = isinstance(exc, RedisUnavailableError)
            level = logging.DEBUG if unavailable else logging.ERROR
            logger.log(
                level,
                "Reconnect attempt %d failed (%s); next in %.2f s",
                backoff.failures,
                exc,
                delay,
            )
            await anyio.sleep(delay)
        else:
            return


async def unlogged(response: Any) -> Any:
    """A push handler that hands messages back without redis-py's DEBUG log."""
    return response
