"""Write a running subscriber's stats to Redis, where operators can see them.

Each running subscriber keeps one hash, ``redis-events:instances:<group>:
<consumer>``, rewritten every ``instance_stats_interval`` seconds and expiring
``instance_stats_ttl`` seconds after the last write. An instance that dies
without a stop disappears when its hash expires; a clean stop deletes it.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from redis import RedisError
from redis.exceptions import NoPermissionError

from redis_events._keys import instance_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from redis.asyncio import Redis

    from redis_events.config import Settings

__all__ = ["META_FIELDS", "InstanceReporter", "reporting"]

logger = logging.getLogger("redis_events.subscriber")

# The hash's descriptive fields; every other field is a counter.
META_FIELDS = frozenset(
    {"group", "consumer", "transport", "topics", "started_at", "last_seen"}
)


class InstanceReporter:
    """Rewrite one instance hash periodically, beside a subscriber's run loop.

    A failed write is logged (WARNING for the first of a series, DEBUG for
    the rest) and tried again at the next interval; it never ends ``run()``.
    """

    def __init__(
        self,
        client: Redis,
        settings: Settings,
        *,
        consumer: str,
        topics: Sequence[str],
        stats: Callable[[], Mapping[str, int]],
    ) -> None:
        self._client = client
        self._settings = settings
        self._stats = stats
        self.key = instance_key(settings.group, consumer)
        self._meta = {
            "group": settings.group,
            "consumer": consumer,
            "transport": settings.transport,
            "topics": ",".join(sorted(topics)),
            "started_at": _now(),
        }
        self._failing = False

    async def run(self) -> None:
        """Write now, then every ``instance_stats_interval`` s, until cancelled."""
        while True:
            await self.write()
            await anyio.sleep(self._settings.instance_stats_interval)

    async def write(self) -> bool:
        """Write the hash and its TTL once; tell whether it worked."""
        # Any: redis-py types the mapping with an invariant key type.
        mapping: dict[Any, str | int] = {**self._meta, "last_seen": _now()}
        mapping |= {name: int(value) for name, value in self._stats().items()}
        try:
            # MULTI/EXEC: a hash never exists without its TTL, so an instance
            # that dies between the two commands cannot linger for ever.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, mapping=mapping)
                pipe.expire(self.key, self._settings.instance_stats_ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            hint = ""
            if isinstance(exc, NoPermissionError):
                hint = (
                    "; the user needs +hset +expire +del +multi +exec on "
                    "redis-events:instances:* (see the README's ACL users)"
                )

            logger.log(
                level,
                "Could not write the instance stats to %s (%s: %s); trying again "
                "in %s s%s",
                self.key,
                type(exc).__name__,
                exc,
                self._settings.instance_stats_interval,
                hint,
            )
            self._failing = True
            return False

        if self._failing:
            logger.info("Instance stats written to %s again", self.key)

        self._failing = False
        return True

    async def remove(self) -> None:
        """Delete the hash at a clean stop; leave it to its TTL if that fails."""
        try:
            with anyio.fail_after(self._settings.socket_timeout):
                await self._client.delete(self.key)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug(
                "Could not delete %s at stop (%s); it expires in %s s",
                self.key,
                type(exc).__name__,
                self._settings.instance_stats_ttl,
            )


@asynccontextmanager
async def reporting(reporter: InstanceReporter | None) -> AsyncIterator[None]:
    """Run ``reporter`` in a task beside the block; delete its hash after.

    Note:
        The block's own exception propagates as itself, not wrapped in an
        exception group. Deleting the hash is shielded from cancellation and
        bounded by ``socket_timeout``.
    """
    if reporter is None:
        yield
        return

    error: Exception | None = None
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(reporter.run)
            try:
                yield
            except Exception as exc:
                # Raised after the task group, so that it is not wrapped in
                # an exception group.
                error = exc
            finally:
                task_group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await reporter.remove()

    if error is not None:
        raise error


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
