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

import heapq
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

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
from redis_events._envelope import from_fields
from redis_events._keys import DATA_FIELD, stream_key
from redis_events._positions import position_to_id
from redis_events._settle import Settler
from redis_events.dispatcher import Delivery, Outcome
from redis_events.exceptions import EventDecodeError

if TYPE_CHECKING:
    from redis.typing import KeyT, StreamIdT

    from redis_events.codec import EventRegistry
    from redis_events.config import Settings
    from redis_events.dispatcher import Stats

__all__ = ["StreamConsumer"]

logger = logging.getLogger(__name__)

# Hands a delivery over; returns what to await when it must wait for room.
OnDelivery = Callable[[Delivery], Awaitable[None] | None]
Room = Callable[[], Awaitable[int]]

_MISSING_MEMORY = 10_000

# Counters this transport adds to a subscriber's stats.
STREAM_COUNTERS = (
    "acked",
    "retries",
    "dead_lettered",
    "reclaimed",
    "missing_entries",
    "groups_recreated",
)
Fields = dict[bytes, bytes]
# An entry as redis-py returns it: its id, and its fields ({} once deleted).
Entry = tuple[bytes | str, Fields | None]


class StreamConsumer:
    """Read, claim and settle the entries of ``topics`` for one consumer."""

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
        self._reader = reader
        self._client = client
        self._settings = settings
        self._registry = registry
        self._stats = stats
        self._topics = {stream_key(topic): topic for topic in topics}
        self._keys = {topic: key for key, topic in self._topics.items()}
        self._new_entries: dict[KeyT, StreamIdT] = dict.fromkeys(self._topics, ">")
        self.consumer = consumer
        self.group = settings.group
        self.settler = Settler(client, settings, stats, consumer)
        self._retries: list[tuple[float, str, str, int]] = []
        self._history: dict[KeyT, StreamIdT] = dict.fromkeys(self._topics, "0")
        self._in_flight: dict[str, set[str]] = {key: set() for key in self._topics}
        self._missing_seen: set[tuple[str, str]] = set()
        self._last_read: dict[str, str] = {}
        self._room: Room = _one_slot
        self._next_claim = 0.0
        self._backoff = Backoff(
            base=settings.reconnect_backoff_base, cap=settings.reconnect_backoff_cap
        )
        self._failing = False
        self._max_deliveries = settings.max_deliveries
        # Whether the last read of new entries was full, and whether the
        # reader can take acknowledgements along (a plain client: a cluster's
        # slot reader only reads).
        self._busy = False
        self._acks_with_reads = isinstance(reader, Redis)
        for name in STREAM_COUNTERS:
            stats.extra.setdefault(name, 0)

    def log_fields(self, **fields: str) -> dict[str, str]:
        """Return ``fields`` with this consumer's group and name, for ``extra=``."""
        return {"group": self.group, "consumer": self.consumer} | fields

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

    def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Act on a finished delivery: ack, retry later, dead-letter or keep."""
        key = self._keys[delivery.topic]
        entry_id = delivery.delivery_id or ""
        self._in_flight[key].discard(entry_id)
        if outcome is Outcome.HANDLED:
            self.settler.ack(key, entry_id)
        elif outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
            if delivery.delivery_count >= self._settings.max_deliveries:
                reason = f"handler {outcome.value} {delivery.delivery_count} times"
                self.settler.dead_letter(
                    key,
                    delivery.topic,
                    entry_id,
                    reason,
                    delivery.delivery_count,
                    event=delivery.log_fields(),
                )
            else:
                self._stats.add("retries")
                due = anyio.current_time() + self._settings.retry_backoff
                heapq.heappush(
                    self._retries,
                    (due, key, entry_id, delivery.delivery_count + 1),
                )
        else:
            # Cancelled or never started: left pending for this consumer's
            # next start, or for another consumer's claim.
            self.settler.forget(key, entry_id)

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
        for key, entries in _streams(reply):
            if entries:
                read += len(entries)
                self._last_read[key] = _text(entries[-1][0])

            await self._deliver_held(key, entries, None, on_delivery)

        self._busy = read >= count
        if read and not self._busy:
            # Caught up: let the handlers just given entries start before
            # this loop prepares and sends its next read, which would
            # otherwise add its own time to theirs.
            await anyio.lowlevel.checkpoint()

    async def keep_alive(self) -> None:
        """Keep this consumer's entries in flight from being claimed, forever.

        Runs beside ``run()``: every ``claim_min_idle / 3`` (at most every
        ``claim_interval``) it resets their idle time, whether or not the
        read loop is waiting for a handler slot.
        """
        every = min(self._settings.claim_interval, self._settings.claim_min_idle / 3)
        while True:
            await anyio.sleep(every)
            try:
                await self._refresh_in_flight()
            except (*RETRYABLE_ERRORS, ResponseError) as exc:
                logger.debug(
                    "Could not refresh entries in flight (%s)",
                    exc,
                    extra=self.log_fields(),
                )

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
        for key, entries in _streams(reply):
            if not entries:
                continue

            # Pending entries stay pending while they are handled, so the
            # next read starts after the last one seen, not at 0 again.
            self._history[key] = _text(entries[-1][0])
            more = True
            await self._deliver_counted(key, entries, on_delivery)

        return more

    async def _retry_due(self, on_delivery: OnDelivery) -> None:
        now = anyio.current_time()
        while self._retries and self._retries[0][0] <= now:
            item = heapq.heappop(self._retries)
            _, key, entry_id, count = item
            try:
                # XCLAIM to ourselves increments Redis's delivery counter.
                claimed = await self._client.xclaim(
                    key, self.group, self.consumer, 0, [entry_id]
                )
            except BaseException:
                heapq.heappush(self._retries, item)
                raise

            if not claimed:
                # Already claimed and settled elsewhere, or deleted (Redis
                # then drops it from the pending list itself): nothing to do.
                logger.debug(
                    "Retry of %s on %s found nothing to claim",
                    entry_id,
                    key,
                    extra=self.log_fields(topic=self._topics[key], entry_id=entry_id),
                )
                continue

            # redis-py types the reply loosely: it is a list of entries.
            entry = cast("Entry", claimed[0])
            await self._deliver_held(
                key, [entry], {_bytes(entry[0]): count}, on_delivery
            )

    async def _claim_idle(self, on_delivery: OnDelivery) -> None:
        min_idle = int(self._settings.claim_min_idle * 1000)
        for key in self._topics:
            cursor = "0-0"
            while True:
                reply = await self._client.xautoclaim(
                    key,
                    self.group,
                    self.consumer,
                    min_idle,
                    start_id=cursor,
                    count=min(self._settings.read_count, await self._room()),
                )
                cursor = _text(reply[0])
                mine = self._in_flight[key]
                entries = [entry for entry in reply[1] if _text(entry[0]) not in mine]
                # Redis 7 also lists ids whose entry was deleted; 6.2 does not.
                for deleted in reply[2] if len(reply) > 2 else ():
                    self._missing(key, _text(deleted))

                if entries:
                    self._stats.add("reclaimed", len(entries))
                    logger.info(
                        "Claimed %d entries of %s idle for %.1f s or more",
                        len(entries),
                        key,
                        self._settings.claim_min_idle,
                        extra=self.log_fields(topic=self._topics[key]),
                    )
                    await self._deliver_counted(key, entries, on_delivery)

                if cursor == "0-0":
                    break

    async def _refresh_in_flight(self) -> None:
        """Reset the idle time of entries still in their handlers.

        XCLAIM ... JUSTID to ourselves leaves the delivery counter alone, so
        neither this consumer nor another one claims work that is running.
        """
        busy = {key: ids for key, ids in self._in_flight.items() if ids}
        if not busy:
            return

        async with self._client.pipeline(transaction=False) as pipe:
            for key, ids in busy.items():
                pipe.xclaim(key, self.group, self.consumer, 0, list(ids), justid=True)

            await pipe.execute()

    async def _deliver_counted(
        self, key: str, entries: list[Entry], on_delivery: OnDelivery
    ) -> None:
        counts = await self._delivery_counts(key, [_bytes(e[0]) for e in entries])
        await self._deliver_held(key, entries, counts, on_delivery)

    async def _deliver_held(
        self,
        key: str,
        entries: list[Entry],
        counts: dict[bytes, int] | None,
        on_delivery: OnDelivery,
    ) -> None:
        """Deliver a batch that counts as in flight until each is handed over.

        ``entries`` are as redis-py returns them. ``counts`` holds delivery
        counts by entry id; without it every entry is on its first delivery.
        If delivering stops half way (a lost connection, a stop), the entries
        not handed over are released, so that they can be claimed again
        instead of being kept fresh forever by the keep-alive.
        """
        ids = [_text(entry[0]) for entry in entries]
        # The whole batch counts as in flight from now on, so that entries
        # waiting for a slot are kept fresh too and never claimed away.
        in_flight = self._in_flight[key]
        in_flight.update(ids)
        topic = self._topics[key]
        prepare = self._prepare
        delivered = 0
        try:
            for entry_id, (raw_id, fields) in zip(ids, entries, strict=True):
                count = counts.get(_bytes(raw_id), 1) if counts else 1
                delivery = prepare(key, topic, entry_id, fields, count)
                if delivery is not None:
                    waiting = on_delivery(delivery)
                    if waiting is not None:
                        await waiting

                delivered += 1
        finally:
            if delivered < len(ids):
                in_flight.difference_update(ids[delivered:])

    async def _delivery_counts(self, key: str, ids: list[bytes]) -> dict[bytes, int]:
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(key, self.group, entry_id, entry_id, 1)

            replies = await pipe.execute()

        counts = {}
        for rows in replies:
            for row in rows:
                counts[_bytes(row["message_id"])] = int(row["times_delivered"])

        return counts

    def _prepare(
        self, key: str, topic: str, entry_id: str, fields: Fields | None, count: int
    ) -> Delivery | None:
        """Return the delivery of an entry, or settle what cannot be delivered."""
        # redis-py turns the nil body of a deleted entry into {} (an XADD
        # always has at least one field), so an empty body means "gone".
        if not fields:
            self._in_flight[key].discard(entry_id)
            self._missing(key, entry_id)
            return None

        if not isinstance(fields, dict):
            fields = dict(fields)

        self.settler.remember(key, entry_id, fields)
        # TODO(stream-stats): this counts deliveries, so a retried entry is
        # received twice; a per-event count needs the delivery counter.
        stats = self._stats
        stats.events_received += 1
        if stats.observer is not None:
            stats.observer.received(topic)

        data = fields.get(DATA_FIELD)
        if data is None:
            self._reject(key, topic, entry_id, "no 'data' field", count)
            return None

        if count > self._max_deliveries:
            reason = f"delivered {count} times, more than max_deliveries"
            self._in_flight[key].discard(entry_id)
            self.settler.dead_letter(key, topic, entry_id, reason, count)
            return None

        try:
            event = self._registry.decode(topic, data)
        except EventDecodeError as exc:
            self._reject(key, topic, entry_id, exc.reason, count)
            return None

        return Delivery(topic, event, None, entry_id, count, from_fields(fields))

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Count, log and dead-letter a delivery that cannot be handled."""
        self._reject(
            self._keys[delivery.topic],
            delivery.topic,
            delivery.delivery_id or "",
            reason,
            delivery.delivery_count,
        )

    def _reject(
        self, key: str, topic: str, entry_id: str, reason: str, count: int
    ) -> None:
        self._in_flight[key].discard(entry_id)
        self._stats.invalid_events += 1
        if self._stats.observer is not None:
            self._stats.observer.rejected(topic)

        logger.warning(
            "Rejected entry %s on %s: %s",
            entry_id,
            topic,
            reason,
            extra=self.log_fields(topic=topic, entry_id=entry_id, reason=reason),
        )
        self.settler.dead_letter(key, topic, entry_id, f"invalid: {reason}", count)

    def _missing(self, key: str, entry_id: str) -> None:
        # The entry was deleted (XDEL, trimming) while pending: nothing can
        # be handled, so the id is acknowledged and counted, once.
        if (key, entry_id) in self._missing_seen:
            return

        if len(self._missing_seen) > _MISSING_MEMORY:
            self._missing_seen.clear()

        self._missing_seen.add((key, entry_id))
        self._stats.add("missing_entries")
        logger.warning(
            "Pending entry %s of %s no longer exists",
            entry_id,
            key,
            extra=self.log_fields(topic=self._topics[key], entry_id=entry_id),
        )
        self.settler.ack(key, entry_id)

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


def _streams(reply: Any) -> list[tuple[str, list[Entry]]]:
    if not reply:
        return []

    if isinstance(reply, dict):  # RESP3
        return [(_text(key), value[0]) for key, value in reply.items()]

    return [(_text(key), entries) for key, entries in reply]


async def _one_slot() -> int:
    return 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
