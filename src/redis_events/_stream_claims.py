"""Retries, claims and keep-alive: the entries a stream consumer reads again.

``StreamClaims`` is the part of the ``StreamConsumer`` that keeps the books
on entries already read: a failed delivery is claimed back by this consumer
(XCLAIM) once ``retry_backoff`` passed, entries that a dead consumer left
pending are claimed (XAUTOCLAIM) once idle for ``claim_min_idle``, and the
entries still in their handlers are kept from looking idle. The read loop in
``redis_events._streams`` decides when each of these runs.
"""

from __future__ import annotations

import heapq
import logging
from typing import TYPE_CHECKING, cast

import anyio
from redis.exceptions import ResponseError

from redis_events._connection import RETRYABLE_ERRORS
from redis_events._stream_entries import StreamEntries, as_bytes, as_text
from redis_events.dispatcher import Outcome

if TYPE_CHECKING:
    from redis_events._stream_entries import Entry, OnDelivery, Room
    from redis_events.dispatcher import Delivery

__all__ = ["StreamClaims"]

# The streams consumer's logger: the records keep the name users filter on.
logger = logging.getLogger("redis_events._streams")


class StreamClaims(StreamEntries):
    """Settle finished deliveries, and claim again what must be retried."""

    # Set by the consumer. The retries: due time, stream key, entry id and
    # next delivery count, soonest first; and the wait for free handler slots.
    _retries: list[tuple[float, str, str, int]]
    _room: Room

    def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Act on a finished delivery: ack, retry later, dead-letter or keep."""
        key = self._keys[delivery.topic]
        entry_id = delivery.delivery_id or ""
        in_flight = self._in_flight[key]
        retry = (
            outcome in (Outcome.FAILED, Outcome.TIMED_OUT)
            and delivery.delivery_count < self._settings.max_deliveries
        )
        if retry:
            # It stays in flight until its retry: kept fresh by the
            # keep-alive and skipped by our own XAUTOCLAIM, so no second copy
            # of it runs here when retry_backoff is above claim_min_idle.
            self._stats.add("retries")
            due = anyio.current_time() + self._settings.retry_backoff
            heapq.heappush(
                self._retries, (due, key, entry_id, delivery.delivery_count + 1)
            )
            return

        fields = in_flight.pop(entry_id, None)
        if outcome is Outcome.HANDLED:
            self.settler.ack(key, entry_id)
        elif outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
            reason = f"handler {outcome.value} {delivery.delivery_count} times"
            self.settler.dead_letter(
                key,
                delivery.topic,
                entry_id,
                reason,
                delivery.delivery_count,
                fields,
                event=delivery.log_fields(),
            )
        # Otherwise (cancelled or never started) it is left pending, for this
        # consumer's next start or for another consumer's claim.

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
                self._in_flight[key].pop(entry_id, None)
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
                key, [entry], {as_bytes(entry[0]): count}, on_delivery
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
                cursor = as_text(reply[0])
                mine = self._in_flight[key]
                entries = [entry for entry in reply[1] if as_text(entry[0]) not in mine]
                # Redis 7 also lists ids whose entry was deleted; 6.2 does not.
                for deleted in reply[2] if len(reply) > 2 else ():
                    self._missing(key, as_text(deleted))

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
