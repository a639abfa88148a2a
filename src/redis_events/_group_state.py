"""Read a consumer group's state for metrics: lag, pending, oldest pending age."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis_events._connection import REDIS_ERRORS
from redis_events._keys import dead_letter_key, stream_key
from redis_events._topology import is_cluster

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["GroupState", "read_group_state", "redis_answers"]

logger = logging.getLogger("redis_events.metrics")


@dataclass(slots=True, frozen=True)
class GroupState:
    """One consumer group on one topic's stream, as Redis saw it."""

    topic: str
    group: str
    lag: int | None
    pending: int
    oldest_pending_age: float
    consumers: int
    dead_letters: int


async def redis_answers(client: Redis) -> bool:
    """Tell whether Redis answers a PING (the caller bounds the wait)."""
    try:
        await client.ping()
    except REDIS_ERRORS as exc:
        logger.debug("Redis did not answer a PING (%s)", type(exc).__name__)
        return False

    return True


async def read_group_state(
    client: Redis, group: str, topics: list[str]
) -> list[GroupState] | None:
    """Return ``group``'s state on each topic, or ``None`` if Redis failed.

    One pipelined round trip: TIME, then XINFO GROUPS, XPENDING (summary)
    and the dead letters' XLEN per topic. A topic whose stream or group is
    missing is left out. The caller bounds the wait.

    On a Redis Cluster the pipeline is split by node (redis-py does that),
    and TIME is asked first on its own: redis-py refuses a command without
    a key in a cluster pipeline. The age of the oldest pending entry is then
    measured with that one node's clock.
    """
    cluster = is_cluster(client)
    try:
        replies: list[Any] = [await client.time()] if cluster else []
        async with client.pipeline(transaction=False) as pipe:
            if not cluster:
                pipe.time()

            for topic in topics:
                pipe.xinfo_groups(stream_key(topic))
                pipe.xpending(stream_key(topic), group)
                pipe.xlen(dead_letter_key(topic))

            replies += await pipe.execute(raise_on_error=False)
    except REDIS_ERRORS as exc:
        logger.debug("Group state unavailable (%s)", type(exc).__name__)
        return None

    if isinstance(replies[0], Exception):
        return None

    seconds, microseconds = replies[0]
    now_ms = int(seconds) * 1000 + int(microseconds) // 1000
    states = []
    for index, topic in enumerate(topics):
        groups, pending, dead = replies[1 + 3 * index : 4 + 3 * index]
        state = _state(topic, group, groups, pending, dead, now_ms)
        if state is not None:
            states.append(state)

    return states


def _state(
    topic: str, group: str, groups: Any, pending: Any, dead: Any, now_ms: int
) -> GroupState | None:
    if isinstance(groups, Exception) or isinstance(pending, Exception):
        return None

    info = next((g for g in groups if _text(g["name"]) == group), None)
    if info is None:
        return None

    oldest = pending.get("min")
    age = 0.0
    if pending.get("pending") and oldest is not None:
        # Entry ids start with the server's time in milliseconds when added.
        age = max(0, now_ms - int(_text(oldest).partition("-")[0])) / 1000

    lag = info.get("lag")
    return GroupState(
        topic=topic,
        group=group,
        lag=int(lag) if lag is not None else None,
        pending=int(info["pending"]),
        oldest_pending_age=age,
        consumers=int(info["consumers"]),
        dead_letters=0 if isinstance(dead, Exception) else int(dead),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
