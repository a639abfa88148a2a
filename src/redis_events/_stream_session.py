"""One run of a subscriber on the streams transport, and replay of history.

The pub/sub counterpart is ``_pubsub_session``; both fit ``_session.Session``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from redis_events._cluster_streams import ShardedStreamConsumer
from redis_events._connection import REDIS_ERRORS, create_client, translate_error
from redis_events._keys import DATA_FIELD, stream_key
from redis_events._positions import position_to_id
from redis_events._session import default_consumer_name
from redis_events._streams import StreamConsumer
from redis_events._topology import is_cluster
from redis_events.exceptions import ConfigurationError, EventDecodeError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus
    from redis.asyncio import Redis

    from redis_events._routing import Router
    from redis_events.codec import DecodedEvent, EventRegistry
    from redis_events.config import Settings
    from redis_events.dispatcher import Delivery, Dispatcher, Handler, Outcome, Stats

__all__ = [
    "ReplayedEntry",
    "StreamSession",
    "group_info",
    "replay",
    "replay_entries",
]

logger = logging.getLogger("redis_events.subscriber")

# Seconds given to a TLS connection's closing handshake at a stop.
_TLS_CLOSE_GRACE = 0.05


class StreamSession:
    """Clients, consumer and settler of one ``run()`` on streams."""

    def __init__(self, settings: Settings, router: Router, stats: Stats) -> None:
        if router.patterns:
            msg = "patterns work on the pub/sub transport only, not on streams"
            raise ConfigurationError(msg)

        crowded = [topic for topic, hs in router.channels.items() if len(hs) > 1]
        if crowded:
            msg = (
                f"one handler per topic on the streams transport ({crowded[0]!r} "
                "has more): an entry is acknowledged when its handler succeeded"
            )
            raise ConfigurationError(msg)

        self._settings = settings
        self._router = router
        self.consumer_name = settings.consumer or default_consumer_name()
        # The reading client waits up to block_seconds for entries, on top of
        # the usual reply timeout, so an idle XREADGROUP is never cut short.
        self.reader = create_client(
            settings.model_copy(
                update={
                    "socket_timeout": settings.socket_timeout + settings.block_seconds
                }
            ),
            role="sub",
        )
        self.client = create_client(settings, role="sub")
        # On a cluster, each slot's topics get their own read loop.
        consumer_class = (
            ShardedStreamConsumer if is_cluster(self.client) else StreamConsumer
        )
        self.consumer = consumer_class(
            reader=self.reader,
            client=self.client,
            settings=settings,
            registry=router.registry,
            stats=stats,
            topics=list(router.channels),
            consumer=self.consumer_name,
        )

    @property
    def connected(self) -> bool:
        """Tell whether the consumer's last read from Redis succeeded."""
        return not self.consumer.failing

    @property
    def on_outcome(self) -> Callable[[Delivery, Outcome], None]:
        """The consumer's ``settle``: it acknowledges, retries or dead-letters."""
        return self.consumer.settle

    def log_fields(self) -> dict[str, str]:
        """The group and this consumer's name."""
        return self.consumer.log_fields()

    async def connect(self) -> None:
        """Create the consumer groups.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: The user may not create a group.
        """
        await self.consumer.connect()
        logger.info(
            "Consuming %s as %r in group %r at %s",
            ", ".join(self._router.channels),
            self.consumer_name,
            self._settings.group,
            self._settings.masked_url,
            extra=self.consumer.log_fields(),
        )

    async def serve(
        self,
        dispatcher: Dispatcher,
        read_scope: anyio.CancelScope,
        task_status: TaskStatus[None],
    ) -> None:
        """Read and dispatch until ``read_scope`` is cancelled, then settle."""

        # Looked up per entry: order_by() may change a topic's key at any time.
        channels, key_of = self._router.channels, self._router.key_of
        ordered = self._router.ordered
        submit, submit_nowait = dispatcher.submit, dispatcher.submit_nowait

        def deliver(delivery: Delivery) -> Awaitable[None] | None:
            topic = delivery.topic
            handler = channels[topic][0]
            try:
                key = key_of(topic, delivery.event) if topic in ordered else None
            except EventDecodeError as exc:
                self.consumer.reject(delivery, exc.reason)
                return None

            if submit_nowait(handler, delivery, key=key):
                return None

            return submit(handler, delivery, key=key)

        error: Exception | None = None
        async with anyio.create_task_group() as settling:
            settling.start_soon(self.consumer.settler.run)
            settling.start_soon(self.consumer.keep_alive)
            settling.start_soon(
                _cancel_when_set, self.consumer.settler.failed, read_scope
            )
            try:
                async with dispatcher.running():
                    with read_scope:
                        task_status.started()
                        await self.consumer.run(deliver, dispatcher.room)
            except Exception as exc:
                # Raised after the task group, so that it is not wrapped in
                # an exception group.
                error = exc
            finally:
                # Handlers have finished (or were cancelled): let the settler
                # finish what it is writing, then write what is left, before
                # the connection goes.
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self._settings.socket_timeout),
                ):
                    await self.consumer.settler.stop()
                    await self._flush()

                settling.cancel_scope.cancel()

        if error is not None:
            raise error

        if self.consumer.settler.fatal is not None:
            raise self.consumer.settler.fatal

    async def aclose(self) -> None:
        """Close both clients."""
        await self.reader.aclose()
        await self.client.aclose()
        if self._settings.scheme == "rediss":
            # TODO(tls-close): redis-py closes a connection whose read was
            # cancelled (the blocking XREADGROUP at a stop) without waiting,
            # and TLS's closing handshake needs one more round trip. A short
            # pause lets it finish before an event loop that ends right after
            # the stop; nothing waits for it to have finished.
            await anyio.sleep(_TLS_CLOSE_GRACE)

    async def _flush(self) -> None:
        try:
            await self.consumer.settler.flush()
        except Exception as exc:
            # A WARNING in the settler's own words: Redis down or refusing
            # (a script on a server without Lua) is no bug of ours, and its
            # traceback only at DEBUG.
            logger.warning(
                "Could not acknowledge %d entries at stop (%s: %s); they stay pending",
                self.consumer.settler.pending,
                type(exc).__name__,
                exc,
                extra=self.consumer.log_fields(),
            )
            logger.debug("Acknowledgement at stop failed", exc_info=True)


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


@dataclass(frozen=True, slots=True)
class ReplayedEntry:
    """One stream entry of a replay: where it is, its stored bytes, its event.

    ``data`` is the entry's ``data`` field exactly as it was stored, so that
    a copy of it is faithful: secrets in clear and the original ``event_id``.
    """

    topic: str
    entry_id: str
    data: bytes
    event: DecodedEvent


async def replay(
    settings: Settings,
    registry: EventRegistry,
    topic: str,
    handler: Handler,
    *,
    start: str = "all",
    end: str | None = None,
    batch: int = 500,
) -> int:
    """Feed ``topic``'s stream history to ``handler``, oldest first.

    Reads with XRANGE: no consumer group is read from or changed. Entries that
    cannot be decoded are logged and skipped.

    Returns:
        How many events the handler was given.

    Raises:
        RedisUnavailableError: Redis cannot be reached.
        ConfigurationError: ``start`` or ``end`` is not usable.
    """

    async def give(entry: ReplayedEntry) -> None:
        result: Any = handler(entry.topic, entry.event)
        if hasattr(result, "__await__"):
            await result

    return await replay_entries(
        settings, registry, topic, give, start=start, end=end, batch=batch
    )


async def replay_entries(
    settings: Settings,
    registry: EventRegistry,
    topic: str,
    handler: Callable[[ReplayedEntry], Awaitable[None]],
    *,
    start: str = "all",
    end: str | None = None,
    batch: int = 500,
) -> int:
    """Feed ``topic``'s stream entries to ``handler``, oldest first.

    Like ``replay``, but each decoded event comes with its entry id and its
    stored bytes (what ``redis-events replay`` prints and republishes).

    Returns:
        How many entries the handler was given.

    Raises:
        RedisUnavailableError: Redis cannot be reached.
        ConfigurationError: ``start`` or ``end`` is not usable.
    """
    key = stream_key(topic)
    if start == "new":
        msg = "replay starts at all, an entry id or a time, not at new"
        raise ConfigurationError(msg)

    first = "-" if start == "all" else position_to_id(start, edge="first", name="start")
    last = "+" if end is None else position_to_id(end, edge="last", name="end")
    client = create_client(settings, role="replay")
    given = 0
    try:
        while True:
            entries: list[Any] = (
                await client.xrange(key, first, last, count=batch) or []
            )
            for entry_id, fields in entries:
                entry = _decode_entry(registry, topic, _text(entry_id), fields)
                if entry is not None:
                    await handler(entry)
                    given += 1

            if len(entries) < batch:
                return given

            first = "(" + _text(entries[-1][0])
    except REDIS_ERRORS as exc:
        raise translate_error(
            exc, operation="XRANGE", settings=settings, topic=topic
        ) from exc
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def _decode_entry(
    registry: EventRegistry,
    topic: str,
    entry_id: str,
    fields: dict[bytes, bytes] | None,
) -> ReplayedEntry | None:
    data = fields.get(DATA_FIELD) if fields else None
    try:
        if data is None:
            raise EventDecodeError("no 'data' field", topic=topic)

        event = registry.decode(topic, data)
    except EventDecodeError as exc:
        logger.warning(
            "Replay skipped entry %s: %s",
            entry_id,
            exc.reason,
            extra={"topic": topic, "entry_id": entry_id, "reason": exc.reason},
        )
        return None

    stored = data.encode() if isinstance(data, str) else data
    return ReplayedEntry(topic=topic, entry_id=entry_id, data=stored, event=event)


async def group_info(
    client: Redis, settings: Settings, topics: list[str]
) -> dict[str, dict[str, Any]]:
    """Return lag, pending count and consumers of the group, per topic."""
    info: dict[str, dict[str, Any]] = {}
    for topic in topics:
        key = stream_key(topic)
        for group in await client.xinfo_groups(key):
            if _text(group["name"]) == settings.group:
                info[topic] = {
                    "pending": int(group["pending"]),
                    "lag": group.get("lag"),
                    "consumers": int(group["consumers"]),
                    "last_delivered_id": _text(group["last-delivered-id"]),
                }

    return info


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
