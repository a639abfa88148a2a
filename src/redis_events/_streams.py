"""The streams transport's consumer: one consumer of one group, many topics.

At-least-once: an entry is acknowledged only after its handlers succeeded.
A failed entry stays pending and is claimed again by this consumer after
``retry_backoff``; entries left pending by a consumer that died are claimed
with XAUTOCLAIM once idle for ``claim_min_idle``. After ``max_deliveries``
(Redis's own delivery counter), or at once for input that can never succeed,
an entry moves to its topic's dead-letter stream and is acknowledged in the
same MULTI/EXEC.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from redis_events._connection import (
    REDIS_ERRORS,
    RETRYABLE_ERRORS,
    Backoff,
    translate_error,
)
from redis_events._positions import position_to_id
from redis_events._stream_claims import StreamClaims
from redis_events._stream_entries import as_text, stream_entries

if TYPE_CHECKING:
    from redis.typing import KeyT, StreamIdT

    from redis_events._stream_entries import OnDelivery, Room
    from redis_events.codec import EventRegistry
    from redis_events.config import Settings
    from redis_events.dispatcher import Stats

__all__ = ["StreamConsumer"]

logger = logging.getLogger(__name__)

# Counters this transport adds to a subscriber's stats.
STREAM_COUNTERS = (
    "acked",
    "retries",
    "dead_lettered",
    "reclaimed",
    "missing_entries",
    "groups_recreated",
)


class StreamConsumer(StreamClaims):
    """Read, claim and settle the entries of ``topics`` for one consumer.

    The read loop and the consumer group live here; what an entry becomes is
    ``StreamEntries``'s part, and retries and claims are ``StreamClaims``'s.
    """

    def __init__(
        self,
        *,
        reader: Redis,
        client: Redis,
        settings: Settings,
        registry: EventRegistry,
        stats: Stats,
        topics: list[str],
        consumer: str,
    ) -> None:
        super().__init__(
            client=client,
            settings=settings,
            registry=registry,
            stats=stats,
            topics=topics,
            consumer=consumer,
        )
        self._reader = reader
        self._retries = []
        self._room = _one_slot
        self._new_entries: dict[KeyT, StreamIdT] = dict.fromkeys(self._topics, ">")
        self._history: dict[KeyT, StreamIdT] = dict.fromkeys(self._topics, "0")
        self._last_read: dict[str, str] = {}
        self._next_claim = 0.0
        self._backoff = Backoff(
            base=settings.reconnect_backoff_base, cap=settings.reconnect_backoff_cap
        )
        self._failing = False
        # Whether the last read of new entries was full, and whether the
        # reader can take acknowledgements along (a plain client: a cluster's
        # slot reader only reads).
        self._busy = False
        self._acks_with_reads = isinstance(reader, Redis)
        for name in STREAM_COUNTERS:
            stats.extra.setdefault(name, 0)

    @property
    def failing(self) -> bool:
        """Tell whether Redis failed the last read and reads are being retried."""
        return self._failing

    async def connect(self) -> None:
        """Create every group that is missing (MKSTREAM), at ``start_from``.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: The user may not create the group.
        """
        start = position_to_id(self._settings.start_from, edge="group")
        for key in self._topics:
            await self._create_group(key, start)

    async def run(self, on_delivery: OnDelivery, room: Room) -> None:
        """Consume until cancelled: own pending entries first, then new ones.

        ``room`` waits until a handler slot is free and returns how many
        are: no more entries than that are read at once, so entries do not
        wait in memory, idle and claimable, for a slot.

        Note:
            Connection errors are retried without limit, with capped backoff;
            a group that vanished is created again. Cancelling the caller is
            safe at any point: what was read but not handled stays pending.
        """
        self._room = room
        history = True
        regroup = False
        while True:
            # Every step, the groups' re-creation included, runs under the
            # same retry: Redis may go away again while it comes back.
            try:
                if regroup:
                    await self._recreate_groups()
                    regroup = False
                elif history:
                    history = await self._read_history(on_delivery)
                else:
                    await self._cycle(on_delivery)
            except RETRYABLE_ERRORS as exc:
                await self._trouble(exc)
            except ResponseError as exc:
                # NOGROUP: the group is gone; UNBLOCKED: the stream was
                # deleted under a blocked read (DEL, FLUSHALL).
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise translate_error(
                        exc,
                        operation="consuming",
                        settings=self._settings,
                        topic=", ".join(self._topics.values()),
                    ) from exc

                if not regroup:
                    regroup = True
                    self._forget_group()
            else:
                self._recovered()

    async def _cycle(self, on_delivery: OnDelivery) -> None:
        now = anyio.current_time()
        if self._retries and self._retries[0][0] <= now:
            await self._retry_due(on_delivery)
            return

        if now >= self._next_claim:
            self._next_claim = now + self._settings.claim_interval
            await self._claim_idle(on_delivery)
            return

        wake = self._next_claim
        if self._retries:
            wake = min(wake, self._retries[0][0])

        block = min(self._settings.block_seconds, wake - now)
        if any(self._in_flight.values()):
            # A handler in flight may fail and need its retry on time: wake
            # up often enough for retry_backoff to hold.
            block = min(block, max(self._settings.retry_backoff, 0.05))

        block = max(0.001, block)
        count = min(self._settings.read_count, await self._room())
        if self._busy and self._acks_with_reads and self.settler.has_acks:
            # The last read was full, so more is waiting: this read need not
            # block, and the acknowledgements of the last batch ride with it.
            reply = await self.settler.ack_with_read(
                self._reader,
                lambda pipe: pipe.xreadgroup(
                    self.group, self.consumer, self._new_entries, count=count
                ),
            )
        else:
            reply = await self._reader.xreadgroup(
                self.group,
                self.consumer,
                self._new_entries,
                count=count,
                block=int(block * 1000),
            )

        read = 0
        for key, entries in stream_entries(reply):
            if entries:
                read += len(entries)
                self._last_read[key] = as_text(entries[-1][0])

            await self._deliver_held(key, entries, None, on_delivery)

        self._busy = read >= count
        if read and not self._busy:
            # Caught up: let the handlers just given entries start before
            # this loop prepares and sends its next read, which would
            # otherwise add its own time to theirs.
            await anyio.lowlevel.checkpoint()

    async def _read_history(self, on_delivery: OnDelivery) -> bool:
        """Take back this consumer's own pending entries after a restart.

        Returns whether there may be more.
        """
        free = await self._room()
        reply = await self._reader.xreadgroup(
            self.group,
            self.consumer,
            self._history,
            count=min(self._settings.read_count, free),
        )
        more = False
        for key, entries in stream_entries(reply):
            if not entries:
                continue

            # Pending entries stay pending while they are handled, so the
            # next read starts after the last one seen, not at 0 again.
            self._history[key] = as_text(entries[-1][0])
            more = True
            await self._deliver_counted(key, entries, on_delivery)

        return more

    async def _create_group(self, key: str, start: str) -> None:
        try:
            await self._create_group_raw(key, start)
        except REDIS_ERRORS as exc:
            raise translate_error(
                exc,
                operation="XGROUP CREATE",
                settings=self._settings,
                topic=self._topics[key],
            ) from exc

    async def _create_group_raw(self, key: str, start: str) -> None:
        """Create the group of ``key`` unless it exists; redis-py errors pass."""
        try:
            await self._client.xgroup_create(key, self.group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _forget_group(self) -> None:
        logger.warning(
            "Consumer group %r is gone (Redis restarted empty?); creating it again",
            self.group,
            extra=self.log_fields(),
        )
        self._stats.add("groups_recreated")
        # Entries in flight or waiting for a retry belonged to the old group.
        self._retries.clear()
        for ids in self._in_flight.values():
            ids.clear()

    async def _recreate_groups(self) -> None:
        # From the last entry read: a stream that came back empty only holds
        # newer ids, and one that survived is not read again from its start.
        for key in self._topics:
            await self._create_group_raw(key, self._last_read.get(key, "0"))

        # The groups exist again. Waiting out the backoff of a long outage
        # here only delays the first read; the base delay is enough to keep
        # a group deleted over and over from becoming a tight loop.
        self._backoff.reset()
        await anyio.sleep(self._backoff.next_delay())

    async def _trouble(self, exc: BaseException) -> None:
        delay = self._backoff.next_delay()
        self._stats.reconnect_attempts += 1
        if not self._failing:
            self._failing = True
            logger.warning(
                "Stream consumer lost Redis at %s (%s: %s); retrying",
                self._settings.masked_url,
                type(exc).__name__,
                exc,
                extra=self.log_fields(),
            )
        else:
            logger.debug(
                "Stream consumer attempt %d failed (%s: %s); next in %.2f s",
                self._backoff.failures,
                type(exc).__name__,
                exc,
                delay,
                extra=self.log_fields(),
            )

        await anyio.sleep(delay)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self._stats.reconnects += 1
            logger.info("Stream consumer reached Redis again", extra=self.log_fields())

        self._backoff.reset()


async def _one_slot() -> int:
    return 1
