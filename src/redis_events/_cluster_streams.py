"""The streams consumer on a Redis Cluster: one read loop per hash slot.

An XREADGROUP names keys of one slot only on a cluster (CROSSSLOT
otherwise), and every key of a topic shares the hash tag ``{topic}``. So the
topics are grouped by slot and each group gets its own ``StreamConsumer``
read loop and settler; all share one dispatcher and one consumer name.
A failed master stops only the loops of its slots; the others read on.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
from redis.crc import key_slot

from redis_events._connection import REDIS_ERRORS, translate_error
from redis_events._keys import stream_key
from redis_events._settle import Settler
from redis_events._streams import StreamConsumer

if TYPE_CHECKING:
    from collections.abc import Mapping

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.typing import KeyT, StreamIdT

    from redis_events._stream_entries import OnDelivery, Room
    from redis_events.codec import EventRegistry
    from redis_events.config import Settings
    from redis_events.dispatcher import Delivery, Outcome, Stats

__all__ = ["ShardSettlers", "ShardedStreamConsumer", "SlotReader", "slot_groups"]


def slot_groups(topics: list[str]) -> list[list[str]]:
    """Group ``topics`` by the cluster slot of their keys, in first-seen order."""
    groups: dict[int, list[str]] = {}
    for topic in topics:
        groups.setdefault(key_slot(stream_key(topic).encode()), []).append(topic)

    return list(groups.values())


class ShardedStreamConsumer(StreamConsumer):
    """A ``StreamConsumer`` whose topics span several slots of a cluster.

    It keeps the base class's interface; the reading, claiming and settling
    are done by one part per slot, each with its own settler.
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
        slot_reader = cast("Redis", SlotReader(cast("RedisCluster", reader)))
        for group in slot_groups(topics):
            part = StreamConsumer(
                reader=slot_reader,
                client=client,
                settings=settings,
                registry=registry,
                stats=stats,
                topics=group,
                consumer=consumer,
            )
            self.parts.append(part)
            self._part_of.update(dict.fromkeys(group, part))

        # One settler per slot: acknowledgements for a shard that is up are
        # written while another shard fails over, instead of waiting with
        # them (and being claimed again as idle meanwhile).
        self.settler = ShardSettlers(
            [part.settler for part in self.parts], client, settings, stats, consumer
        )

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
        # The dispatcher takes one waiting producer at a time (room() and
        # submit() wait on one event that a second waiter would replace), so
        # the parts take turns handing over.
        turn = anyio.Lock()

        async def deliver(delivery: Delivery) -> None:
            try:
                await turn.acquire()
            except BaseException:
                # Stopped before its turn: handed over all the same, in the
                # cancelled scope, so that the dispatcher takes it if it has
                # room or counts it as not started; else the entry, already
                # counted as received, would be counted nowhere else.
                await _hand_over(on_delivery, delivery)
                raise

            try:
                await _hand_over(on_delivery, delivery)
            finally:
                turn.release()

        async def wait_for_room() -> int:
            async with turn:
                return await room()

        await _together(
            [partial(part.run, deliver, wait_for_room) for part in self.parts]
        )

    async def keep_alive(self) -> None:
        """Keep every part's entries in flight from being claimed, forever."""
        await _together([part.keep_alive for part in self.parts])

    def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Hand a finished delivery to the part that read it."""
        self._part_of[delivery.topic].settle(delivery, outcome)

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Hand a delivery that cannot be handled to the part that read it."""
        self._part_of[delivery.topic].reject(delivery, reason)


class SlotReader:
    """XREADGROUP (and XREAD) sent straight to the master of the streams' slot.

    Works around redis-py's cluster client, which asks its default node for
    the keys of a command with movable keys (``COMMAND GETKEYS``) before its
    retry loop: when that node is the master that died, every later
    XREADGROUP fails without the slot map ever being read again. Naming the
    target node skips the question; a failure still marks the map stale, and
    ``initialize()`` reads it again before the next read.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster

    async def xreadgroup(
        self,
        groupname: str,
        consumername: str,
        streams: Mapping[KeyT, StreamIdT],
        count: int | None = None,
        block: int | None = None,
        noack: bool = False,
    ) -> Any:
        """Read like ``Redis.xreadgroup``; every key must share one slot."""
        pieces: list[Any] = ["GROUP", groupname, consumername]
        if count is not None:
            pieces += ["COUNT", count]

        if block is not None:
            pieces += ["BLOCK", block]

        if noack:
            pieces.append("NOACK")

        return await self._send("XREADGROUP", pieces, streams)

    async def xread(
        self,
        streams: Mapping[KeyT, StreamIdT],
        count: int | None = None,
        block: int | None = None,
    ) -> Any:
        """Read like ``Redis.xread``; every key must share one slot."""
        pieces: list[Any] = []
        if count is not None:
            pieces += ["COUNT", count]

        if block is not None:
            pieces += ["BLOCK", block]

        return await self._send("XREAD", pieces, streams)

    async def _send(
        self, command: str, pieces: list[Any], streams: Mapping[KeyT, StreamIdT]
    ) -> Any:
        pieces = [*pieces, "STREAMS", *streams.keys(), *streams.values()]
        await self._cluster.initialize()
        key = next(iter(streams))
        node = self._cluster.get_node_from_key(
            key.decode() if isinstance(key, bytes) else str(key)
        )
        return await self._cluster.execute_command(command, *pieces, target_nodes=node)


class ShardSettlers(Settler):
    """The settlers of every slot, run and stopped as one."""

    def __init__(
        self,
        parts: list[Settler],
        client: Redis,
        settings: Settings,
        stats: Stats,
        consumer: str,
    ) -> None:
        super().__init__(client, settings, stats, consumer)
        self._parts = parts

    @property
    def pending(self) -> int:
        """Acknowledgements and dead letters not written yet, in every slot."""
        return sum(part.pending for part in self._parts)

    async def run(self) -> None:
        """Run every slot's settler until ``stop()``."""
        await _together([partial(self._run_part, part) for part in self._parts])

    async def _run_part(self, part: Settler) -> None:
        await part.run()
        if part.fatal is not None and self.fatal is None:
            self.fatal = part.fatal
            self.failed.set()

    async def stop(self) -> None:
        """Stop every slot's settler."""
        for part in self._parts:
            await part.stop()

    async def flush(self) -> None:
        """Write what every slot's settler has queued; raise the first error.

        Raises:
            Exception: What the first failing settler raised; the others were
                flushed anyway.
        """
        error: Exception | None = None
        for part in self._parts:
            try:
                await part.flush()
            except Exception as exc:  # re-raised below, after the rest
                error = error or exc

        if error is not None:
            raise error


async def _hand_over(on_delivery: OnDelivery, delivery: Delivery) -> None:
    waiting = on_delivery(delivery)
    if waiting is not None:
        await waiting


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
