"""Subscribe handlers to topics and glob patterns, over Redis pub/sub."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Self

import anyio

from redis_events._connection import create_client
from redis_events._endpoint import Endpoint
from redis_events._pubsub import Frame, PubSubReader
from redis_events.codec import DecodedEvent, validate_topic
from redis_events.dispatcher import (
    Delivery,
    Dispatcher,
    Handler,
    Stats,
    current_delivery,
)
from redis_events.exceptions import EventDecodeError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup, TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from redis.asyncio import Redis

__all__ = ["EventSubscriber"]

logger = logging.getLogger(__name__)


class _Group:
    """The frames Redis sent for one PUBLISH.

    Redis writes a published message to a client once per matching
    subscription (the channel first, then each pattern), one right after the
    other. Frames with the same channel and payload belong to the same
    PUBLISH until a subscription repeats, which starts the next one.
    """

    __slots__ = (
        "called",
        "channel",
        "data",
        "decoded",
        "generation",
        "subscriptions",
    )

    def __init__(self, frame: Frame | None = None) -> None:
        self.channel = frame.channel if frame else None
        self.data = frame.data if frame else None
        self.generation = frame.generation if frame else -1
        self.subscriptions: set[tuple[bool, str]] = set()
        # Handlers themselves, not their ids: ``obj.method`` makes a new bound
        # method object on every access, but equal ones compare equal.
        self.called: list[Handler] = []
        self.decoded: DecodedEvent | EventDecodeError | None = None

    def takes(self, frame: Frame, subscription: tuple[bool, str]) -> bool:
        return (
            frame.channel == self.channel
            and frame.generation == self.generation
            and subscription not in self.subscriptions
            and frame.data == self.data
        )


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

    Note:
        Delivery is at most once: events published while the subscriber is
        disconnected are lost, and an event whose handler fails is not
        retried. With ``max_concurrency`` above 1, handlers start in the
        order events arrived but may finish in any order.
    """

    def _init_state(self) -> None:
        self._stats = Stats()
        self._channel_handlers: dict[str, list[Handler]] = {}
        self._pattern_handlers: dict[str, list[Handler]] = {}
        self._reader: PubSubReader | None = None
        self._read_scope: anyio.CancelScope | None = None
        self._stop_requested = False
        self._finished = anyio.Event()
        self._streams: set[MemoryObjectSendStream[Delivery]] = set()
        self._task_group: TaskGroup | None = None
        self._dispatcher: Dispatcher | None = None
        self._client: Redis | None = None

    def __repr__(self) -> str:
        return (
            f"EventSubscriber({self.settings.masked_url!r}, "
            f"channels={sorted(self._channel_handlers)}, "
            f"patterns={sorted(self._pattern_handlers)})"
        )

    @property
    def connected(self) -> bool:
        """Tell whether the subscriber holds a live, subscribed connection."""
        return self._reader is not None and self._reader.connected

    def on(self, *topics: str) -> Callable[[Handler], Handler]:
        """Register the decorated handler for each of ``topics``.

        Raises:
            ConfigurationError: A topic name is not usable.
            RuntimeError: The subscriber is running; use ``subscribe()``.
        """
        self._check_not_running("on")

        def register(handler: Handler) -> Handler:
            for topic in topics:
                self._add(self._channel_handlers, validate_topic(topic), handler)

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

        def register(handler: Handler) -> Handler:
            for pattern in patterns:
                self._add(self._pattern_handlers, validate_topic(pattern), handler)

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

    async def subscribe(self, topic: str, handler: Handler) -> None:
        """Add ``handler`` for ``topic``, at any time, and wait until live.

        Raises:
            ConfigurationError: The topic name is not usable.
            RedisUnavailableError: Running, but Redis did not confirm in time;
                the subscription stays and is restored on reconnect.
        """
        self._add(self._channel_handlers, validate_topic(topic), handler)
        if self._reader is not None:
            await self._reader.subscribe(channels=[topic])

    async def psubscribe(self, pattern: str, handler: Handler) -> None:
        """Add ``handler`` for a glob ``pattern``, at any time.

        Raises:
            ConfigurationError: The pattern is not a usable name.
            RedisUnavailableError: As for ``subscribe``.
        """
        self._add(self._pattern_handlers, validate_topic(pattern), handler)
        if self._reader is not None:
            await self._reader.subscribe(patterns=[pattern])

    async def unsubscribe(self, topic: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` (or every handler) from ``topic``."""
        if self._remove(self._channel_handlers, topic, handler) and self._reader:
            await self._reader.unsubscribe(channels=[topic])

    async def punsubscribe(self, pattern: str, handler: Handler | None = None) -> None:
        """Remove ``handler`` (or every handler) from a glob ``pattern``."""
        if self._remove(self._pattern_handlers, pattern, handler) and self._reader:
            await self._reader.unsubscribe(patterns=[pattern])

    @asynccontextmanager
    async def subscription(
        self, *topics: str, patterns: Sequence[str] = (), max_buffer: int = 0
    ) -> AsyncIterator[MemoryObjectReceiveStream[Delivery]]:
        """Iterate over the deliveries of ``topics`` and ``patterns``.

        Use it while the subscriber runs::

            async with subscriber.subscription("profile_events") as events:
                async for delivery in events:
                    ...

        The iteration ends when the subscriber stops. Leaving the block
        unsubscribes, also when the block is cancelled.

        Note:
            A slow loop holds one dispatcher slot per waiting delivery, so
            it slows reading down rather than filling memory.
        """
        send, receive = anyio.create_memory_object_stream[Delivery](max_buffer)

        async def forward(topic: str, event: object) -> None:
            try:
                await send.send(current_delivery())
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                logger.debug("Dropped a delivery for a closed subscription")

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

    async def _open(self) -> None:
        if self._reader is not None:
            msg = "this subscriber is already running"
            raise RuntimeError(msg)

        client = create_client(self.settings, role="sub")
        reader = PubSubReader(client, self.settings, self._stats)
        try:
            await reader.subscribe(
                channels=list(self._channel_handlers),
                patterns=list(self._pattern_handlers),
            )
            await reader.connect()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await reader.aclose()
                await client.aclose()

            raise

        self._client = client
        self._reader = reader
        self._finished = anyio.Event()

    async def _serve(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        reader, client = self._reader, self._client
        assert reader is not None, "_open() must succeed first"
        assert client is not None, "_open() must succeed first"
        dispatcher = self._dispatcher = Dispatcher(
            max_concurrency=self.settings.max_concurrency,
            handler_timeout=self.settings.handler_timeout,
            shutdown_timeout=self.settings.shutdown_timeout,
            stats=self._stats,
        )
        try:
            async with dispatcher.running():
                with anyio.CancelScope() as self._read_scope:
                    if self._stop_requested:
                        self._read_scope.cancel()

                    task_status.started()
                    await self._read(reader, dispatcher)
        finally:
            self._read_scope = None
            self._reader = None
            self._client = None
            self._dispatcher = None
            self._stop_requested = False
            for stream in list(self._streams):
                stream.close()

            with anyio.CancelScope(shield=True):
                await reader.aclose()
                await client.aclose()

            self._finished.set()
            logger.info("Subscriber stopped: %s", self._stats.as_dict())

    async def stop(self) -> None:
        """Stop reading, let handlers in flight finish, then disconnect.

        Returns once ``run()`` has finished, except when called from one of
        this subscriber's own handlers, where it only asks for the stop.
        """
        self._stop_requested = True
        if self._read_scope is not None:
            self._read_scope.cancel()

        if self._reader is None:
            return

        try:
            current_delivery()
        except LookupError:
            await self._finished.wait()

    def abort(self) -> None:
        """Stop at once: cancel handlers in flight instead of waiting."""
        self._stop_requested = True
        if self._read_scope is not None:
            self._read_scope.cancel()

        if self._dispatcher is not None:
            self._dispatcher.drain(0)

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
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        self._stop_requested = True
        if self._read_scope is not None:
            self._read_scope.cancel()

        if task_group is None:
            return None

        return await task_group.__aexit__(exc_type, exc, tb)

    async def _serve_in_background(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._serve(task_status=task_status)

    def get_stats(self) -> dict[str, int]:
        """Return the subscriber's counters."""
        return self._stats.as_dict()

    async def _read(self, reader: PubSubReader, dispatcher: Dispatcher) -> None:
        group = _Group()

        async def on_frame(frame: Frame) -> None:
            nonlocal group
            subscription = (
                (True, frame.pattern) if frame.pattern else (False, frame.channel)
            )
            if not group.takes(frame, subscription):
                group = _Group(frame)
                self._stats.events_received += 1

            group.subscriptions.add(subscription)
            await self._dispatch(frame, group, reader, dispatcher)

        await reader.run(on_frame)

    async def _dispatch(
        self,
        frame: Frame,
        group: _Group,
        reader: PubSubReader,
        dispatcher: Dispatcher,
    ) -> None:
        if frame.pattern is None:
            handlers = self._channel_handlers.get(frame.channel, ())
        else:
            handlers = self._pattern_handlers.get(frame.pattern, ())

        todo = [h for h in handlers if h not in group.called]
        if not todo:
            return

        if group.decoded is None:
            try:
                group.decoded = self.registry.decode(frame.channel, frame.data)
            except EventDecodeError as exc:
                group.decoded = exc
                self._stats.invalid_events += 1
                logger.warning(
                    "Rejected an event on %s: %s",
                    frame.channel,
                    exc.reason,
                    extra={"topic": frame.channel},
                )

        if isinstance(group.decoded, EventDecodeError):
            return

        delivery = Delivery(
            topic=frame.channel, event=group.decoded, pattern=frame.pattern
        )
        for handler in todo:
            group.called.append(handler)
            reader.stalled = True
            try:
                await dispatcher.submit(handler, delivery)
            finally:
                reader.stalled = False

    def _check_not_running(self, method: str) -> None:
        if self._reader is not None:
            msg = (
                f"{method}() registers handlers before the subscriber runs; "
                "while it runs, use 'await subscriber.subscribe(...)' or "
                "'psubscribe(...)'"
            )
            raise RuntimeError(msg)

    @staticmethod
    def _add(table: dict[str, list[Handler]], name: str, handler: Handler) -> None:
        handlers = table.setdefault(name, [])
        if handler not in handlers:
            handlers.append(handler)

    @staticmethod
    def _remove(
        table: dict[str, list[Handler]], name: str, handler: Handler | None
    ) -> bool:
        """Remove a handler; return True when ``name`` has none left."""
        handlers = table.get(name)
        if handlers is None:
            return False

        if handler is None:
            handlers.clear()
        elif handler in handlers:
            handlers.remove(handler)

        if handlers:
            return False

        del table[name]
        return True
