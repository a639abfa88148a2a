"""What a subscriber is subscribed to, before and while it runs.

``Subscriptions`` is the part of ``EventSubscriber`` that fills the router's
handler tables (``on``, ``subscribe``, ``subscription`` and their
counterparts) and, while a pub/sub run is live, passes each change on to its
reader. Running is ``redis_events.subscriber``'s.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from redis_events._cluster_pubsub import PATTERNS_REFUSED
from redis_events._endpoint import Endpoint
from redis_events._keys import GLOB_CHARACTERS, stream_key
from redis_events._pubsub_session import PubSubSession
from redis_events._routing import OrderingKey, Router
from redis_events._stream_session import StreamSession
from redis_events.codec import validate_topic
from redis_events.dispatcher import Delivery, Handler, Stats
from redis_events.dispatcher import current_delivery as _current_delivery
from redis_events.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from redis_events._pubsub import PubSubReader
    from redis_events._session import Session

__all__ = ["Subscriptions"]

# The subscriber's logger: the records keep the name users filter on.
logger = logging.getLogger("redis_events.subscriber")


class Subscriptions(Endpoint):
    """The handler tables of a subscriber, and every way to change them.

    Before a run, handlers are registered in the tables only; during a
    pub/sub run, a topic or pattern gaining its first handler (or losing its
    last) is also subscribed (or unsubscribed) on the live reader.
    """

    def _init_state(self) -> None:
        # The counters are made here because routing is the first to count.
        self._stats = Stats()
        self._router = Router(self.registry, self._stats)
        # The session of the run in progress; the subscriber sets it.
        self._session: Session | None = None
        self._forwards: set[anyio.CancelScope] = set()
        self._streams: set[MemoryObjectSendStream[Delivery]] = set()

    @property
    def topics(self) -> list[str]:
        """The topics (not patterns) handlers are registered for, sorted."""
        return sorted(self._router.channels)

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
        if isinstance(self._session, StreamSession):
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
        forward = self._forwarder(send)
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

    def _forwarder(self, send: MemoryObjectSendStream[Delivery]) -> Handler:
        """Return a handler that sends each delivery it is called for to ``send``."""

        async def forward(topic: str, event: object) -> None:
            with anyio.CancelScope() as scope:
                self._forwards.add(scope)
                try:
                    await send.send(_current_delivery())
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    logger.debug("Dropped a delivery for a closed subscription")
                finally:
                    self._forwards.discard(scope)

        return forward

    def _end_subscriptions(self) -> None:
        # Reading has stopped: iterator subscriptions end, and deliveries
        # still waiting for a loop that no longer reads are dropped rather
        # than holding up the drain.
        for scope in list(self._forwards):
            scope.cancel()

        for stream in list(self._streams):
            stream.close()

    @property
    def _reader(self) -> PubSubReader | None:
        """The live reader, while running on pub/sub."""
        session = self._session
        return session.reader if isinstance(session, PubSubSession) else None

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

    def _check_pubsub(self, method: str) -> None:
        if self.settings.transport == "stream":
            msg = f"{method}() works on the pub/sub transport only, not on streams"
            raise ConfigurationError(msg)

    def _check_not_cluster(self) -> None:
        if self.settings.deployment.kind == "cluster":
            raise ConfigurationError(PATTERNS_REFUSED)

    def _check_not_running(self, method: str) -> None:
        if self._session is not None:
            msg = (
                f"{method}() registers handlers before the subscriber runs; "
                "while it runs, use 'await subscriber.subscribe(...)' or "
                "'psubscribe(...)'"
            )
            raise RuntimeError(msg)
