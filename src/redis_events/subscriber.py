"""Subscribe handlers to topics and glob patterns, over Redis pub/sub.

This module runs the subscriber: it opens the transport's session
(``_pubsub_session`` or ``_stream_session``), serves it with a dispatcher,
and reports its counters. Registering handlers is ``_subscriptions``'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Self

import anyio
from redis import RedisError

from redis_events._connection import create_client, translate_error
from redis_events._instances import InstanceReporter, reporting
from redis_events._pubsub_session import PubSubSession
from redis_events._stream_session import StreamSession, group_info, replay
from redis_events._subscriptions import Subscriptions
from redis_events.dispatcher import Dispatcher, Handler
from redis_events.exceptions import ConfigurationError
from redis_events.observers import EventObserver, combine

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from anyio.abc import TaskGroup, TaskStatus

__all__ = ["EventSubscriber"]

logger = logging.getLogger(__name__)


class EventSubscriber(Subscriptions):
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
        super()._init_state()
        self._dispatcher: Dispatcher | None = None
        self._read_scope: anyio.CancelScope | None = None
        self._stop_requested = False
        self._finished = anyio.Event()
        self._task_group: TaskGroup | None = None
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
        return self._session is not None and self._session.connected

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
        return self._session is not None

    @property
    def consumer_name(self) -> str | None:
        """This instance's consumer name in its group (streams, while running)."""
        session = self._session
        return session.consumer_name if isinstance(session, StreamSession) else None

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

        session: StreamSession | PubSubSession
        if self.settings.transport == "stream":
            session = StreamSession(self.settings, self._router, self._stats)
        else:
            session = PubSubSession(
                self.settings,
                self._router,
                self._stats,
                reading_stopped=self._end_subscriptions,
            )

        # Set before the first await, so that a second run() is refused and
        # a subscribe() made meanwhile reaches the reader.
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

    async def _serve(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        session = self._session
        assert session is not None, "_open() must succeed first"
        dispatcher = self._dispatcher = Dispatcher(
            max_concurrency=self.settings.max_concurrency,
            handler_timeout=self.settings.handler_timeout,
            shutdown_timeout=self.settings.shutdown_timeout,
            stats=self._stats,
            on_outcome=session.on_outcome,
            log_fields=session.log_fields(),
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

    def _check_stream(self, method: str) -> None:
        if self.settings.transport != "stream":
            msg = f"{method}() works on the stream transport only"
            raise ConfigurationError(msg)
