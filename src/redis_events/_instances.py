"""Write a running subscriber's stats to Redis, where operators can see them.

Each running subscriber keeps one hash, ``redis-events:instances:<group>:
<consumer>``, rewritten every ``instance_stats_interval`` seconds and expiring
``instance_stats_ttl`` seconds after the last write. An instance that dies
without a stop disappears when its hash expires; a clean stop deletes it.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import NoPermissionError

from redis_events._connection import REDIS_ERRORS, create_client, is_retryable
from redis_events._keys import instance_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from redis_events.config import Settings

__all__ = [
    "META_FIELDS",
    "InstanceInfo",
    "InstanceReporter",
    "parse_instance",
    "reporting",
]

logger = logging.getLogger(__name__)

# The hash's descriptive fields; every other field is a counter.
META_FIELDS = frozenset(
    {"group", "consumer", "transport", "topics", "started_at", "last_seen"}
)


@dataclass(frozen=True)
class InstanceInfo:
    """A running subscriber, as its instance hash describes it.

    Attributes:
        ttl: Seconds until the hash expires (the instance is gone when it
            stops writing), ``None`` when Redis reports no expiry.
        stats: The counters of its ``get_stats()`` at ``last_seen``.
    """

    key: str
    group: str
    consumer: str
    transport: str
    topics: tuple[str, ...]
    started_at: str
    last_seen: str
    ttl: int | None
    stats: dict[str, int]


class InstanceReporter:
    """Rewrite one instance hash periodically, beside a subscriber's run loop.

    A failed write is logged and tried again at the next interval; it never
    ends ``run()``. The first failure of a series is a WARNING, unless the
    connection was lost (the subscriber itself reports that); the rest are
    DEBUG.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: str,
        topics: Sequence[str],
        stats: Callable[[], Mapping[str, int]],
    ) -> None:
        # A client of its own: its connection never serves, nor is taken by,
        # the subscriber's reads, acknowledgements or resubscriptions.
        self._client = create_client(settings, role="stats")
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
        self._warned = False

    async def run(self) -> None:
        """Write every ``instance_stats_interval`` seconds until cancelled."""
        while True:
            await anyio.sleep(self._settings.instance_stats_interval)
            await self.write()

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
        except REDIS_ERRORS as exc:
            self._log_failure(exc)
            self._failing = True
            return False

        if self._failing:
            level = logging.INFO if self._warned else logging.DEBUG
            logger.log(level, "Instance stats written to %s again", self.key)

        self._failing = self._warned = False
        return True

    def _log_failure(self, exc: BaseException) -> None:
        # A lost connection is the subscriber's to report (it warns and
        # reconnects); anything else is worth one WARNING per series.
        quiet = self._failing or is_retryable(exc)
        hint = ""
        if isinstance(exc, NoPermissionError):
            hint = (
                "; the user needs +hset +expire +del +multi +exec on "
                "redis-events:instances:* (see the README's ACL users)"
            )

        self._warned = self._warned or not quiet
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "Could not write the instance stats to %s (%s: %s); trying again in %s s%s",
            self.key,
            type(exc).__name__,
            exc,
            self._settings.instance_stats_interval,
            hint,
        )

    async def remove(self) -> None:
        """Delete the hash at a stop (else it expires), then disconnect."""
        try:
            with anyio.fail_after(self._settings.socket_timeout):
                await self._client.delete(self.key)
        except (*REDIS_ERRORS, TimeoutError) as exc:
            logger.debug(
                "Could not delete %s at stop (%s); it expires in %s s",
                self.key,
                type(exc).__name__,
                self._settings.instance_stats_ttl,
            )
        finally:
            await self._client.aclose()


@asynccontextmanager
async def reporting(reporter: InstanceReporter | None) -> AsyncIterator[None]:
    """Write once, run ``reporter`` in a task beside the block, delete after.

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
        # The first write before the block: the instance is visible (and its
        # connection open) once the subscriber has started.
        await reporter.write()
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


def parse_instance(key: str, raw: dict[bytes, bytes], ttl: int) -> InstanceInfo:
    """Return what an instance hash (as ``HGETALL`` gives it) describes."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    stats: dict[str, int] = {}
    for name, value in fields.items():
        if name not in META_FIELDS:
            try:
                stats[name] = int(value)
            except ValueError:
                continue

    topics = fields.get("topics", "")
    return InstanceInfo(
        key=key,
        group=fields.get("group", ""),
        consumer=fields.get("consumer", ""),
        transport=fields.get("transport", ""),
        topics=tuple(t for t in topics.split(",") if t),
        started_at=fields.get("started_at", ""),
        last_seen=fields.get("last_seen", ""),
        ttl=ttl if ttl >= 0 else None,
        stats=stats,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
