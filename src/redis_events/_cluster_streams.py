"""The streams consumer on a Redis Cluster: one read loop per hash slot.

An XREADGROUP names keys of one slot only on a cluster (CROSSSLOT
otherwise), and every key of a topic shares the hash tag ``{topic}``. So the
topics are grouped by slot and each group gets its own ``StreamConsumer``
read loop; all loops share one settler, one dispatcher and one consumer name.
A failed master stops only the loops of its slots; the others read on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import anyio
from redis.crc import key_slot

from redis_events._connection import REDIS_ERRORS, translate_error
from redis_events._keys import stream_key
from redis_events._streams import StreamConsumer

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from redis_events._streams import OnDelivery, Room
    from redis_events.codec import EventRegistry
    from redis_events.config import Settings
    from redis_events.dispatcher import Delivery, Outcome, Stats

__all__ = ["ShardedStreamConsumer", "slot_groups"]


def slot_groups(topics: list[str]) -> list[list[str]]:
    """Group ``topics`` by the cluster slot of their keys, in first-seen order."""
    groups: dict[int, list[str]] = {}
    for topic in topics:
        groups.setdefault(key_slot(stream_key(topic).encode()), []).append(topic)

    return list(groups.values())


class ShardedStreamConsumer(StreamConsumer):
    """A ``StreamConsumer`` whose topics span several slots of a cluster.

    It keeps the base class's settler (shared by every part) and its
    interface; the reading, claiming and settling are done by one part per
    slot.
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
            reader=reader,
            client=client,
            settings=settings,
            registry=registry,
            stats=stats,
            topics=topics,
            consumer=consumer,
        )
        self.parts: list[StreamConsumer] = []
        self._part_of: dict[str, StreamConsumer] = {}
        for group in slot_groups(topics):
            part = StreamConsumer(
                reader=reader,
                client=client,
                settings=settings,
                registry=registry,
                stats=stats,
                topics=group,
                consumer=consumer,
            )
            part.settler = self.settler
            self.parts.append(part)
            self._part_of.update(dict.fromkeys(group, part))

    async def connect(self) -> None:
        """Create every missing group, slot by slot.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: The user may not create the group.
        """
        for part in self.parts:
            await part.connect()

        # The slot map is read once here: read lazily by the first of the
        # parts' concurrent reads, its refresh closed the connections of
        # the reads that had started meanwhile.
        try:
            await cast("RedisCluster", self._reader).initialize()
        except REDIS_ERRORS as exc:
            raise translate_error(
                exc, operation="CLUSTER SLOTS", settings=self._settings
            ) from exc

    async def run(self, on_delivery: OnDelivery, room: Room) -> None:
        """Run every slot's read loop until cancelled.

        Note:
            Each loop retries its own connection errors, so a failover of one
            master pauses only the topics of its slots. An error that ends
            one loop (a refused command) ends them all and is raised as is.
        """
        await _together(
            [lambda p=part: p.run(on_delivery, room) for part in self.parts]
        )

    async def keep_alive(self) -> None:
        """Keep every part's entries in flight from being claimed, forever."""
        await _together([part.keep_alive for part in self.parts])

    def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Hand a finished delivery to the part that read it."""
        self._part_of[delivery.topic].settle(delivery, outcome)


async def _together(calls: list[Any]) -> None:
    try:
        async with anyio.create_task_group() as group:
            for call in calls:
                group.start_soon(call)
    except BaseExceptionGroup as errors:
        # One loop's error is raised as itself, like the single consumer's.
        if len(errors.exceptions) == 1:
            raise errors.exceptions[0] from None

        raise
