"""Subscribe handlers to topics and glob patterns, over Redis pub/sub."""

from __future__ import annotations

import functools
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Self

import anyio
from redis import RedisError

from redis_events._cluster_pubsub import PATTERNS_REFUSED, ShardedPubSubReader
from redis_events._connection import create_client, translate_error
from redis_events._endpoint import Endpoint
from redis_events._instances import InstanceReporter, reporting
from redis_events._keys import GLOB_CHARACTERS, stream_key
from redis_events._pubsub import PubSubReader
from redis_events._routing import OrderingKey, Router
from redis_events._stream_session import (
    StreamSession,
    default_consumer_name,
    group_info,
    replay,
)
from redis_events._topology import is_cluster
from redis_events.codec import validate_topic
from redis_events.dispatcher import Delivery, Dispatcher, Handler, Stats
from redis_events.dispatcher import current_delivery as _current_delivery
from redis_events.exceptions import ConfigurationError
from redis_events.observers import EventObserver, combine

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup, TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from redis.asyncio import Redis

__all__ = ["EventSubscriber"]

logger = logging.getLogger(__name__)


class EventSubscriber(Endpoint):
    """Run coroutine handlers for events on channels and glob patterns.

    A handler is called as ``await handler(topic, event)``, where ``event`` is
    the validated model of the topic (a ``dict`` for topics without one).
    Plain functions run in a worker thread. ``current_delivery()`` inside a
    handler tells which pattern matched.

    Each handler is called at most once per published event, even when
    several of its subscriptions match it (say ``profile_events`` and
    ``profile_*``); it then sees the first match Redis reported, which is the
    channel subscription when there is one. Different handlers each get
    their own call.

    While it runs it writes its counters to the hash
    ``redis-events:instances:<group>:<consumer>`` every
    ``instance_stats_interval`` seconds, from a task of its own, for
    ``redis-events top`` and ``groups``; a clean stop deletes the hash.

    Note:
        Delivery is at most once: events published while the subscriber is
        disconnected are lost, and an event whose handler fails is not
        retried. With ``max_concurrency`` above 1, handlers start in the
        order events arrived but may finish in any order, except for events
        of a topic with an ordering key (``order_by``).
    """

    def _init_state(self) -> None:
        self._stats = Stats()
        self._router = Router(self.registry, self._stats)
        self._reader: PubSubReader | None = None
        self._client: Redis | None = None
        self._session: StreamSession | None = None
        self._dispatcher: Dispatcher | None = None
        self._read_scope: anyio.CancelScope | None = None
        self._forwards: set[anyio.CancelScope] = set()
        self._stop_requested = False
        self._finished = anyio.Event()
        self._task_group: TaskGroup | None = None
        self._streams: set[MemoryObjectSendStream[Delivery]] = set()
        self._stats_source: Callable[[], Mapping[str, int]] = self.get_stats
        if self.settings.tracing:
            # Imported only when asked for: without tracing, no OpenTelemetry.
            from redis_events.tracing import ConsumerTracing

            stream = self.settings.transport == "stream"
            group = self.settings.group if stream else None
            self.add_observer(ConsumerTracing(group=group))

    def __repr__(self) -> str:
        return (
            f"EventSubscriber({self.settings.masked_url!r}, "
            f"channels={sorted(self._router.channels)}, "
            f"patterns={sorted(self._router.patterns)})"
        )

    @property
    def connected(self) -> bool:
        """Tell whether the subscriber holds a live, subscribed connection.

        On streams: whether it runs and its last read from Redis succeeded.
        """
        if self._session is not None:
            return not self._session.consumer.failing

        return self._reader is not None and self._reader.connected

    @property
    def topics(self) -> list[str]:
        """The topics (not patterns) handlers are registered for, sorted."""
        return sorted(self._router.channels)

    def add_observer(self, observer: EventObserver) -> None:
        """Tell ``observer`` of every event this subscriber receives and handles.

        See ``redis_events.observers`` for when each method is called.
        ``redis_events.metrics.Metrics.attach`` uses this. Add observers
        before ``run()``: one added later misses what happened before.
        """
        self._stats.observer = combine(self._stats.observer, observer)

    @property
    def running(self) -> bool:
        """Tell whether ``run()`` is starting or running."""
        return self._reader is not None or self._session is not None

    @property
    def consumer_name(self) -> str | None:
        """This instance's consumer name in its group (streams, while running)."""
        return self._session.consumer_name if self._session is not None else None

    def on(self, *topics: str) -> Callable[[Handler], Handler]:
        """Register the decorated handler for each of ``topics``.

        A topic is a name, never a pattern: on pub/sub, ``on("profile_*")``
        subscribes to the channel named exactly so (and logs a warning);
        ``on_pattern()`` takes patterns. On streams such a name is refused.

        Raises:
            ConfigurationError: A topic name is not usable, or has glob
                characters (``*?[]``) on the stream transport.
            RuntimeError: The subscriber is running; use ``subscribe()``.
        """
        self._check_not_running("on")
        names = [self._topic_name(topic) for topic in topics]

        def register(handler: Handler) -> Handler:
            for name in names:
                self._router.add(self._router.channels, name, handler)

            return handler

        return register

    def on_pattern(self, *patterns: str) -> Callable[[Handler], Handler]:
        """Register the decorated handler for each glob pattern.

        Patterns follow Redis PSUBSCRIBE syntax (``*``, ``?``, ``[abc]``).

        Raises:
            ConfigurationError: A pattern is not a usable name.
            RuntimeError: The subscriber is running; use ``psubscribe()``.
        """
        self._check_not_running("on_pattern")
        self._check_pubsub("on_pattern")
        self._check_not_cluster()
        names = [validate_topic(pattern) for pattern in patterns]

        def register(handler: Handler) -> Handler:
            for name in names:
                self._router.add(self._router.patterns, name, handler)

            return handler

        return register

    def subscribe_to_topics(self, topic_handlers: Mapping[str, Handler]) -> None:
        """Register one handler per topic, as in the original design.

        Raises:
            ConfigurationError: A topic name is not usable.
            RuntimeError: The subscriber is running; use ``subscribe()``.
        """
        for topic, handler in topic_handlers.items():
            self.on(topic)(handler)

    def order_by(self, topic: str, key: OrderingKey) -> None:
        """Handle events of ``topic`` with equal ``key`` one at a time, in order.

        ``key`` is a field name of the event (``"profile_id"``) or a function
        of the event. Events with different keys still run concurrently. An
        event on which the function raises, or returns something unhashable,
        is rejected like an undecodable one (``invalid_events``; the dead
        letters on streams).

        Raises:
            ConfigurationError: The topic or the key is not usable.
        """
        self._router.order_by(topic, key)

    async def subscribe(self, topic: str, handler: Handler) -> None:
        """Add ``handler`` for ``topic``, at any time, and wait until live.

        Raises:
            ConfigurationError: The topic name is not usable, or has glob
                characters on the stream transport (as for ``on()``).
            RedisUnavailableError: Running, but Redis did not confirm in time;
                the subscription stays and is restored on reconnect.
            PermissionDeniedError: Redis refused the subscription.
        """
        if self._session is not None:
            msg = "stream topics are fixed while running; add them before run()"
            raise RuntimeError(msg)

        first = self._router.add(
            self._router.channels, self._topic_name(topic), handler
        )
        if first and self._reader is not None:
            await self._reader.subscribe(channels=[topic])

    async def psubscribe(self, pattern: str, handler: Handler) -> None:
        """Add ``handler`` for a glob ``pattern``, at any time.

        Raises:
            ConfigurationError: The pattern is not a usable name.
            RedisUnavailableError: As for ``subscribe``.
            PermissionDeniedError: Redis refused the subscription.
        """
        self._check_pubsub("psubscribe")
        self._check_not_cluster()
        table = self._router.patterns
        first = self._router.add(table, validate_topic(pattern), handler)
        if first and self._reader is not None:
            await self._reader.subscribe(patterns=[pattern])

    async def unsubscribe(self, topic: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` (or every handler) from ``topic``."""
        last = self._router.remove(self._router.channels, topic, handler)
        if last and self._reader is not None:
            await self._reader.unsubscribe(channels=[topic])

    async def punsubscribe(self, pattern: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` (or every handler) from a glob ``pattern``."""
        last = self._router.remove(self._router.patterns, pattern, handler)
        if last and self._reader is not None:
            await self._reader.unsubscribe(patterns=[pattern])

    @asynccontextmanager
    async def subscription(
        self, *topics: str, patterns: Sequence[str] = (), max_buffer: int = 0
    ) -> AsyncIterator[MemoryObjectReceiveStream[Delivery]]:
        """Iterate over the deliveries of ``topics`` and ``patterns``.

        Use it while the subscriber runs (``async with subscriber:`` or a
        task running ``run()``); before that nothing is delivered::

            async with subscriber.subscription("profile_events") as events:
                async for delivery in events:
                    ...

        The iteration ends when the subscriber stops. Leaving the block
        unsubscribes, also when the block is cancelled.

        Note:
            A slow loop holds one dispatcher slot per waiting delivery, so
            it slows reading down rather than filling memory. When the
            subscriber stops, deliveries still waiting for the loop are
            dropped.
        """
        self._check_pubsub("subscription")
        send, receive = anyio.create_memory_object_stream[Delivery](max_buffer)

        async def forward(topic: str, event: object) -> None:
            with anyio.CancelScope() as scope:
                self._forwards.add(scope)
                try:
                    await send.send(_current_delivery())
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    logger.debug("Dropped a delivery for a closed subscription")
                finally:
                    self._forwards.discard(scope)

        self._streams.add(send)
        try:
            for topic in topics:
                await self.subscribe(topic, forward)

            for pattern in patterns:
                await self.psubscribe(pattern, forward)

            async with receive:
                yield receive
        finally:
            send.close()
            self._streams.discard(send)
            with anyio.CancelScope(shield=True):
                for topic in topics:
                    await self.unsubscribe(topic, forward)

                for pattern in patterns:
                    await self.punsubscribe(pattern, forward)

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, subscribe and dispatch events until ``stop()``.

        Note:
            Cancelling the task that runs this has the same effect as
            ``stop()``: reading stops at once, handlers in flight get up to
            ``shutdown_timeout`` seconds to finish, and the connection is
            closed. Connection losses after the first connect are retried
            without limit.

        Raises:
            RedisUnavailableError: Redis could not be reached at start.
            PermissionDeniedError: The user may not subscribe.
            RuntimeError: The subscriber is already running.
        """
        await self._open()
        await self._serve(task_status=task_status)

    async def stop(self) -> None:
        """Stop reading, let handlers in flight finish, then disconnect.

        Returns once ``run()`` has finished, except when called from one of
        this subscriber's own handlers, where it only asks for the stop. Does
        nothing when the subscriber is not running.
        """
        if not self.running:
            return

        self._request_stop()
        dispatcher = self._dispatcher
        if dispatcher is None or not dispatcher.owns_current_task():
            await self._finished.wait()

    def abort(self) -> None:
        """Stop at once: cancel handlers in flight instead of waiting."""
        if not self.running:
            return

        self._request_stop()
        if self._dispatcher is not None:
            self._dispatcher.drain(0)

    async def replay(
        self,
        topic: str,
        handler: Handler,
        *,
        start: str = "all",
        end: str | None = None,
    ) -> int:
        """Feed ``topic``'s stream history to ``handler``, oldest first.

        ``start`` and ``end`` are ``all``, an entry id or an ISO 8601 time.
        No consumer group is read from or moved, so running consumers are
        unaffected: use it to rebuild state after a bug fix. Entries that
        cannot be decoded are logged and skipped.

        Returns:
            How many events ``handler`` was given.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            ConfigurationError: This subscriber is not on the stream transport.
        """
        self._check_stream("replay")
        return await replay(
            self.settings, self.registry, topic, handler, start=start, end=end
        )

    async def group_info(self) -> dict[str, dict[str, Any]]:
        """Return the group's lag, pending count and consumers, per topic.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            ConfigurationError: This subscriber is not on the stream transport.
        """
        self._check_stream("group_info")
        client = create_client(self.settings, role="sub")
        try:
            return await group_info(client, self.settings, list(self._router.channels))
        except (RedisError, OSError) as exc:
            raise translate_error(
                exc, operation="XINFO GROUPS", settings=self.settings
            ) from exc
        finally:
            await client.aclose()

    def report_stats_with(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Write ``source()`` instead of ``get_stats()`` to the instance hash.

        The processor uses it to publish its business counters too.
        """
        self._stats_source = source

    def get_stats(self) -> dict[str, int]:
        """Return the subscriber's counters.

        ``events_received`` counts published events, ``events_handled``
        completed handler calls (one event with two handlers counts twice).
        """
        return self._stats.as_dict()

    async def __aenter__(self) -> Self:
        """Run the subscriber in the background until the block ends."""
        # Connect first, outside the task group, so that a failure raises
        # the library's own error rather than an exception group.
        await self._open()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        await task_group.start(self._serve_in_background)
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        self._request_stop()
        if task_group is None:
            return

        try:
            # The block's own exception is not handed to the task group,
            # which would wrap it in an exception group; it propagates as is.
            await task_group.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            # The background run failed: raise its error as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None

            raise

    async def _serve_in_background(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._serve(task_status=task_status)

    def _request_stop(self) -> None:
        self._stop_requested = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def _open(self) -> None:
        if self.running:
            msg = "this subscriber is already running"
            raise RuntimeError(msg)

        if self.settings.transport == "stream":
            await self._open_stream()
            return

        client = create_client(self.settings, role="sub")
        # On a cluster, topics are shard channels (SSUBSCRIBE).
        reader_class = ShardedPubSubReader if is_cluster(client) else PubSubReader
        reader = reader_class(client, self.settings, self._stats)
        # Set before the first await, so that a second run() is refused and
        # a subscribe() made meanwhile reaches the reader.
        self._reader, self._client = reader, client
        self._stop_requested = False
        self._finished = anyio.Event()
        try:
            await reader.subscribe(
                channels=list(self._router.channels),
                patterns=list(self._router.patterns),
            )
            await reader.connect()
        except BaseException:
            self._reader = self._client = None
            self._finished.set()
            with anyio.CancelScope(shield=True):
                await reader.aclose()
                await client.aclose()

            raise

    async def _open_stream(self) -> None:
        session = StreamSession(self.settings, self._router, self._stats)
        self._session = session
        self._stop_requested = False
        self._finished = anyio.Event()
        try:
            await session.connect()
        except BaseException:
            self._session = None
            self._finished.set()
            with anyio.CancelScope(shield=True):
                await session.aclose()

            raise

    async def _serve_stream(self, task_status: TaskStatus[None]) -> None:
        session = self._session
        assert session is not None, "_open() must succeed first"
        dispatcher = self._dispatcher = Dispatcher(
            max_concurrency=self.settings.max_concurrency,
            handler_timeout=self.settings.handler_timeout,
            shutdown_timeout=self.settings.shutdown_timeout,
            stats=self._stats,
            on_outcome=session.consumer.settle,
        )
        read_scope = self._read_scope = anyio.CancelScope()
        if self._stop_requested:
            read_scope.cancel()

        try:
            async with reporting(self._reporter(session.consumer_name)):
                await session.serve(dispatcher, read_scope, task_status)
        finally:
            self._read_scope = None
            self._session = self._dispatcher = None
            with anyio.CancelScope(shield=True):
                await session.aclose()

            self._finished.set()
            logger.info("Subscriber stopped: %s", self._stats.as_dict())

    async def _serve(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self._session is not None:
            await self._serve_stream(task_status)
            return

        reader, client = self._reader, self._client
        assert reader is not None, "_open() must succeed first"
        assert client is not None, "_open() must succeed first"
        dispatcher = self._dispatcher = Dispatcher(
            max_concurrency=self.settings.max_concurrency,
            handler_timeout=self.settings.handler_timeout,
            shutdown_timeout=self.settings.shutdown_timeout,
            stats=self._stats,
        )
        consumer = self.settings.consumer or default_consumer_name()
        try:
            async with (
                reporting(self._reporter(consumer)),
                dispatcher.running(),
            ):
                try:
                    with anyio.CancelScope() as self._read_scope:
                        if self._stop_requested:
                            self._read_scope.cancel()

                        task_status.started()
                        await reader.run(
                            functools.partial(
                                self._router.route, reader=reader, dispatcher=dispatcher
                            )
                        )
                finally:
                    self._read_scope = None
                    self._end_subscriptions()
        finally:
            self._reader = self._client = self._dispatcher = None
            with anyio.CancelScope(shield=True):
                await reader.aclose()
                await client.aclose()

            self._finished.set()
            logger.info("Subscriber stopped: %s", self._stats.as_dict())

    def _end_subscriptions(self) -> None:
        # Reading has stopped: iterator subscriptions end, and deliveries
        # still waiting for a loop that no longer reads are dropped rather
        # than holding up the drain.
        for scope in list(self._forwards):
            scope.cancel()

        for stream in list(self._streams):
            stream.close()

    def _reporter(self, consumer: str) -> InstanceReporter | None:
        if not self.settings.instance_stats_interval:
            return None

        topics = [*self._router.channels, *self._router.patterns]
        return InstanceReporter(
            self.settings,
            consumer=consumer,
            topics=topics,
            stats=self._stats_source,
        )

    def _topic_name(self, topic: str) -> str:
        """Return ``topic`` if it is usable as a topic on this transport."""
        if self.settings.transport == "stream":
            # The stream key refuses what cannot name one stream: braces,
            # and glob characters, since patterns exist on pub/sub only.
            stream_key(topic)
            return topic

        if GLOB_CHARACTERS.intersection(validate_topic(topic)):
            logger.warning(
                "Topic %r has glob characters but is subscribed as a channel "
                "name, literally; use on_pattern() or psubscribe() for a pattern",
                topic,
                extra={"topic": topic},
            )

        return topic

    def _check_stream(self, method: str) -> None:
        if self.settings.transport != "stream":
            msg = f"{method}() works on the stream transport only"
            raise ConfigurationError(msg)

    def _check_pubsub(self, method: str) -> None:
        if self.settings.transport == "stream":
            msg = f"{method}() works on the pub/sub transport only, not on streams"
            raise ConfigurationError(msg)

    def _check_not_cluster(self) -> None:
        if self.settings.deployment.kind == "cluster":
            raise ConfigurationError(PATTERNS_REFUSED)

    def _check_not_running(self, method: str) -> None:
        if self.running:
            msg = (
                f"{method}() registers handlers before the subscriber runs; "
                "while it runs, use 'await subscriber.subscribe(...)' or "
                "'psubscribe(...)'"
            )
            raise RuntimeError(msg)
