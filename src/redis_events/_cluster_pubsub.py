"""The pub/sub reader on a Redis Cluster: sharded channels, one connection per node.

A topic is a shard channel (SSUBSCRIBE/SPUBLISH): its messages stay on the
master that owns its slot, instead of being copied to every node as a
classic PUBLISH is. The reader holds one connection per master that owns a
subscribed topic. When a connection is lost, or Redis says a slot moved
(it then ends the subscription with an ``sunsubscribe`` of its own), every
connection is dropped, the slot map is read again and the topics are
subscribed on their current masters.

Pattern subscriptions are refused: Redis has no sharded PSUBSCRIBE.

Like the standalone reader, this is at-most-once: what is published while
the reader re-subscribes (during a failover, for instance) is not received.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import anyio
from redis.crc import key_slot
from redis.exceptions import SlotNotCoveredError

from redis_events._connection import (
    REDIS_ERRORS,
    RETRYABLE_ERRORS,
    Backoff,
    create_client,
    translate_error,
)
from redis_events._pubsub import PubSubReader
from redis_events._pubsub_shared import Frame, OnFrame, reopen, unlogged
from redis_events.exceptions import (
    ConfigurationError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.asyncio.cluster import RedisCluster

    from redis_events.config import Settings
    from redis_events.dispatcher import Stats

__all__ = ["PATTERNS_REFUSED", "ShardedPubSubReader"]

logger = logging.getLogger("redis_events._pubsub")

PATTERNS_REFUSED = (
    "pattern subscriptions do not work on a Redis Cluster: Redis has no sharded "
    "PSUBSCRIBE, so a pattern would miss every shard but one; subscribe to "
    "each topic instead"
)


class SlotMovedError(Exception):
    """Redis ended a shard subscription: its slot now lives elsewhere."""


class _NodeSession:
    """One connection to one master and the channels subscribed on it."""

    def __init__(self, client: Redis, channels: list[str]) -> None:
        self.client = client
        self.channels = channels
        self.pubsub: PubSub = client.pubsub(push_handler_func=unlogged)

    async def open(self, reader: ShardedPubSubReader) -> None:
        # One SSUBSCRIBE per slot: a command naming channels of two slots is
        # refused with CROSSSLOT even when one node owns both.
        by_slot: dict[int, list[str]] = {}
        for channel in self.channels:
            by_slot.setdefault(key_slot(channel.encode()), []).append(channel)

        expected = {channel.encode() for channel in self.channels}
        for names in by_slot.values():
            await self.pubsub.ssubscribe(*names)

        while expected:
            message = await self.pubsub.get_message(timeout=None)
            if message is None:
                continue

            frame = reader.frame(message)
            if frame is not None:
                reader.early.append(frame)
            elif message["type"] == "ssubscribe":
                expected.discard(message["channel"])

    async def close(self) -> None:
        connection = self.pubsub.connection
        if connection is not None:
            try:
                await connection.disconnect()
            except REDIS_ERRORS:
                pass

        await self.pubsub.aclose()
        await self.client.aclose()


class ShardedPubSubReader(PubSubReader):
    """Keep a cluster's shard channels subscribed on their current masters.

    The same interface as ``PubSubReader`` (``subscribe``, ``unsubscribe``,
    ``connect``, ``run``, ``aclose``, ``stalled``, ``generation``), so the
    subscriber and the router use either; none of the base class's
    connection handling is used.
    """

    def __init__(self, client: Redis, settings: Settings, stats: Stats) -> None:
        super().__init__(client, settings, stats)
        self._cluster = cast("RedisCluster", client)
        self._settings = settings
        self._stats = stats
        self._channels: set[str] = set()
        self._sessions: dict[str, _NodeSession] = {}
        self._replan = anyio.Event()
        self._failure: BaseException | None = None
        self._started = False
        self._was_connected = False
        self.early: list[Frame] = []
        self.generation = 0
        self.stalled = False
        self._backoff = Backoff(
            base=settings.reconnect_backoff_base, cap=settings.reconnect_backoff_cap
        )

    @property
    def connected(self) -> bool:
        """Tell whether every subscribed topic has a live connection."""
        return bool(self._sessions) or not self._channels

    async def subscribe(
        self, channels: Iterable[str] = (), patterns: Iterable[str] = ()
    ) -> None:
        """Add topics; while running, they are subscribed on their masters.

        Raises:
            ConfigurationError: A pattern was given (see ``PATTERNS_REFUSED``).
        """
        if list(patterns):
            raise ConfigurationError(PATTERNS_REFUSED)

        new = [channel for channel in channels if channel not in self._channels]
        if not new:
            return

        self._channels.update(new)
        if self._started:
            # TODO(cluster-pubsub): a topic added while running reconnects
            # every shard connection; messages of other topics published in
            # that moment are missed.
            self._replan.set()

    async def unsubscribe(
        self, channels: Iterable[str] = (), patterns: Iterable[str] = ()
    ) -> None:
        """Remove topics; unknown names (and any patterns) are ignored."""
        del patterns
        gone = [channel for channel in channels if channel in self._channels]
        self._channels.difference_update(gone)
        for session in self._sessions.values():
            names = [name for name in gone if name in session.channels]
            if names:
                try:
                    await session.pubsub.sunsubscribe(*names)
                except RETRYABLE_ERRORS as exc:
                    logger.debug("Unsubscribe not sent (%s)", type(exc).__name__)

    async def connect(self) -> None:
        """Subscribe every topic on its master once, without retrying.

        Raises:
            RedisUnavailableError: The cluster cannot be reached.
            PermissionDeniedError: The user may not subscribe.
        """
        self._started = True
        if not self._sessions:
            await self._open_sessions()

    async def run(self, on_frame: OnFrame) -> None:
        """Read every shard connection forever and pass each message on.

        Note:
            Reconnects as often as needed; cancelling the caller is safe at
            any point.
        """
        self._started = True
        while True:
            if self._channels and not self._sessions:
                await self._reconnect_sessions()

            try:
                await self._read_sessions(on_frame)
            except (SlotMovedError, *RETRYABLE_ERRORS) as exc:
                await self._lose_sessions(exc)

    async def aclose(self) -> None:
        """Unsubscribe everything and close every connection."""
        self._channels.clear()
        await self._drop_sessions()

    def frame(self, message: dict[str, Any]) -> Frame | None:
        """Turn a message into a ``Frame``; None for a confirmation."""
        kind = message["type"]
        if kind == "smessage":
            return Frame(
                channel=message["channel"],
                pattern=None,
                data=message["data"],
                generation=self.generation,
            )

        self.generation += 1
        return None

    async def _read_sessions(self, on_frame: OnFrame) -> None:
        early, self.early = self.early, []
        for frame in early:
            await on_frame(frame)

        self._replan = anyio.Event()
        self._failure = None
        # The dispatcher takes one waiting producer at a time, so the
        # sessions take turns handing frames over.
        turn = anyio.Lock()

        async def hand_over(frame: Frame) -> None:
            async with turn:
                await on_frame(frame)

        async with anyio.create_task_group() as group:
            for session in self._sessions.values():
                group.start_soon(self._read_session, session, hand_over)

            await self._replan.wait()
            group.cancel_scope.cancel()

        if self._failure is not None:
            raise self._failure

        # A topic was added: subscribe everything again on a fresh plan.
        await self._drop_sessions()

    async def _read_session(self, session: _NodeSession, on_frame: OnFrame) -> None:
        # TODO(cluster-pubsub): no idle PING watchdog as in PubSubReader, so
        # a frozen (not dead) master is noticed only when its connection
        # breaks; a killed one is noticed at once.
        try:
            while True:
                message = await session.pubsub.get_message(timeout=None)
                if message is None:
                    continue

                if message["type"] == "sunsubscribe":
                    name = message["channel"].decode()
                    if name in self._channels:
                        msg = f"the slot of {name!r} moved to another node"
                        raise SlotMovedError(msg)

                frame = self.frame(message)
                if frame is not None:
                    await on_frame(frame)
        except (SlotMovedError, *RETRYABLE_ERRORS) as exc:
            # Ends every session's read: the plan is made again from the
            # cluster's current slot map.
            self._failure = exc
            self._replan.set()

    async def _open_sessions(self) -> None:
        try:
            with anyio.fail_after(
                self._settings.socket_connect_timeout + self._settings.socket_timeout
            ):
                # The first call reads the slot map; later ones read it again,
                # since a lost connection may mean a master failed over.
                await self._cluster.initialize()
                if self._was_connected:
                    await self._cluster.nodes_manager.initialize()

                plan: dict[tuple[str, int], list[str]] = {}
                for channel in sorted(self._channels):
                    node = self._cluster.get_node_from_key(channel)
                    if node is None:
                        msg = f"no master serves the slot of {channel!r} now"
                        raise SlotNotCoveredError(msg)

                    plan.setdefault((node.host, int(node.port)), []).append(channel)

                for (host, port), channels in plan.items():
                    session = _NodeSession(self._node_client(host, port), channels)
                    self._sessions[f"{host}:{port}"] = session
                    await session.open(self)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._drop_sessions()

            if isinstance(exc, REDIS_ERRORS):
                raise translate_error(
                    exc, operation="SSUBSCRIBE", settings=self._settings
                ) from exc

            raise

        self.generation += 1
        if self._was_connected:
            self._stats.reconnects += 1
            logger.info(
                "Reconnected to the Redis Cluster at %s; restored %d shard "
                "channels on %d nodes",
                self._settings.masked_url,
                len(self._channels),
                len(self._sessions),
            )
        else:
            logger.info(
                "Subscribed at %s to %d shard channels on %d nodes",
                self._settings.masked_url,
                len(self._channels),
                len(self._sessions),
            )

        self._was_connected = True

    def _node_client(self, host: str, port: int) -> Redis:
        deployment = self._settings.deployment
        auth = ""
        if deployment.username or deployment.password:
            auth = (
                f"{quote(deployment.username or '', safe='')}:"
                f"{quote(deployment.password or '', safe='')}@"
            )

        scheme = "rediss" if deployment.tls else "redis"
        node_settings = self._settings.model_copy(
            update={
                "redis_url": f"{scheme}://{auth}{host}:{port}/0",
                "topology": "standalone",
            }
        )
        return create_client(node_settings, role="sub")

    async def _reconnect_sessions(self) -> None:
        await reopen(self._open_sessions, self._backoff, self._stats)

    async def _lose_sessions(self, exc: BaseException) -> None:
        logger.warning(
            "Lost a shard subscription at %s (%s: %s); subscribing again",
            self._settings.masked_url,
            type(exc).__name__,
            exc,
        )
        await self._drop_sessions()
        await anyio.sleep(self._backoff.next_delay())

    async def _drop_sessions(self) -> None:
        sessions, self._sessions = self._sessions, {}
        with anyio.CancelScope(shield=True):
            for session in sessions.values():
                await session.close()
