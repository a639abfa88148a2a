"""Turn the entries a stream read returns into deliveries, or settle them.

``StreamEntries`` is the part of the ``StreamConsumer`` that knows what an
entry is: how redis-py shapes a read's reply, how an entry's fields become a
``Delivery``, and what becomes of an entry that can never be handled (its
event does not decode, it has no data, it was delivered too often, or it was
deleted while pending). The read loop in ``redis_events._streams`` and the
retries and claims in ``redis_events._stream_claims`` decide when entries
are read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis_events._delivery import new_delivery
from redis_events._envelope import TRACEPARENT_FIELD, from_fields
from redis_events._keys import DATA_FIELD, stream_key
from redis_events._settle import Settler
from redis_events.dispatcher import Delivery
from redis_events.exceptions import EventDecodeError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from redis_events.codec import EventRegistry
    from redis_events.config import Settings
    from redis_events.dispatcher import Stats

__all__ = [
    "Entry",
    "Fields",
    "OnDelivery",
    "Room",
    "StreamEntries",
    "as_bytes",
    "as_text",
    "stream_entries",
]

# The streams consumer's logger: the records keep the name users filter on.
logger = logging.getLogger("redis_events._streams")

# Hands a delivery over; returns what to await when it must wait for room.
OnDelivery = Callable[[Delivery], Awaitable[None] | None]
Room = Callable[[], Awaitable[int]]

_MISSING_MEMORY = 10_000

Fields = dict[bytes, bytes]
# An entry as redis-py returns it: its id, and its fields ({} once deleted).
Entry = tuple[bytes | str, Fields | None]


class StreamEntries:
    """Deliver the entries of ``topics`` read for one consumer of one group.

    Every entry of a batch counts as in flight, its fields kept, from the
    moment it is read until its delivery is settled; what cannot be delivered
    is dead-lettered or acknowledged here, through the ``settler``.
    """

    def __init__(
        self,
        *,
        client: Redis,
        settings: Settings,
        registry: EventRegistry,
        stats: Stats,
        topics: list[str],
        consumer: str,
    ) -> None:
        self._client = client
        self._settings = settings
        self._registry = registry
        self._stats = stats
        self._topics = {stream_key(topic): topic for topic in topics}
        self._keys = {topic: key for key, topic in self._topics.items()}
        self.consumer = consumer
        self.group = settings.group
        self.settler = Settler(client, settings, stats, consumer)
        # Per stream, the entries in flight: id -> fields as read, kept for a
        # dead letter. One dict, added to per batch and popped once per
        # entry, is both the keep-alive's list and the dead letters' store.
        self._in_flight: dict[str, dict[str, Fields | None]] = {
            key: {} for key in self._topics
        }
        self._missing_seen: set[tuple[str, str]] = set()
        self._max_deliveries = settings.max_deliveries

    def log_fields(self, **fields: str) -> dict[str, str]:
        """Return ``fields`` with this consumer's group and name, for ``extra=``."""
        return {"group": self.group, "consumer": self.consumer} | fields

    async def _deliver_counted(
        self, key: str, entries: list[Entry], on_delivery: OnDelivery
    ) -> None:
        counts = await self._delivery_counts(key, [as_bytes(e[0]) for e in entries])
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
        ids = [as_text(entry[0]) for entry in entries]
        # The whole batch counts as in flight from now on, so that entries
        # waiting for a slot are kept fresh too and never claimed away.
        in_flight = self._in_flight[key]
        in_flight.update(zip(ids, [entry[1] for entry in entries], strict=True))
        topic = self._topics[key]
        prepare = self._prepare
        delivered = 0
        try:
            for entry_id, (raw_id, fields) in zip(ids, entries, strict=True):
                count = counts.get(as_bytes(raw_id), 1) if counts else 1
                delivery = prepare(key, topic, entry_id, fields, count)
                if delivery is not None:
                    waiting = on_delivery(delivery)
                    if waiting is not None:
                        await waiting

                delivered += 1
        finally:
            for entry_id in ids[delivered:]:
                in_flight.pop(entry_id, None)

    async def _delivery_counts(self, key: str, ids: list[bytes]) -> dict[bytes, int]:
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(key, self.group, entry_id, entry_id, 1)

            replies = await pipe.execute()

        counts = {}
        for rows in replies:
            for row in rows:
                counts[as_bytes(row["message_id"])] = int(row["times_delivered"])

        return counts

    def _prepare(
        self, key: str, topic: str, entry_id: str, fields: Fields | None, count: int
    ) -> Delivery | None:
        """Return the delivery of an entry, or settle what cannot be delivered."""
        # redis-py turns the nil body of a deleted entry into {} (an XADD
        # always has at least one field), so an empty body means "gone".
        if not fields:
            self._in_flight[key].pop(entry_id, None)
            self._missing(key, entry_id)
            return None

        if not isinstance(fields, dict):
            fields = dict(fields)

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
            self._in_flight[key].pop(entry_id, None)
            self.settler.dead_letter(key, topic, entry_id, reason, count, fields)
            return None

        try:
            event = self._registry.decode(topic, data)
        except EventDecodeError as exc:
            self._reject(key, topic, entry_id, exc.reason, count)
            return None

        # Most entries carry no trace context: no call to find none.
        trace = from_fields(fields) if TRACEPARENT_FIELD in fields else None
        return new_delivery(topic, event, None, entry_id, count, trace)

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
        fields = self._in_flight[key].pop(entry_id, None)
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
        self.settler.dead_letter(
            key, topic, entry_id, f"invalid: {reason}", count, fields
        )

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


def stream_entries(reply: Any) -> list[tuple[str, list[Entry]]]:
    """Return the entries of an XREAD or XREADGROUP reply, by stream key."""
    if not reply:
        return []

    if isinstance(reply, dict):  # RESP3
        return [(as_text(key), value[0]) for key, value in reply.items()]

    return [(as_text(key), entries) for key, entries in reply]


def as_text(value: bytes | str) -> str:
    """Return an id or key as redis-py gave it, as text."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """Return an id as redis-py gave it, as bytes."""
    return value.encode() if isinstance(value, str) else value
