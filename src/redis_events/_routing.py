"""Route pub/sub frames to handlers: tables, per-handler dedupe, decode once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container, Hashable
from typing import TYPE_CHECKING, Any

from redis_events._delivery import new_delivery
from redis_events._envelope import split_json
from redis_events.codec import DecodedEvent, EventRegistry, validate_topic
from redis_events.exceptions import ConfigurationError, EventDecodeError

if TYPE_CHECKING:
    from redis_events._pubsub import PubSubReader
    from redis_events._pubsub_shared import Frame
    from redis_events.dispatcher import Delivery, Dispatcher, Handler, Stats

__all__ = ["OrderingKey", "Router"]

logger = logging.getLogger("redis_events.subscriber")

OrderingKey = str | Callable[[Any], Hashable]

_MAX_LOGGED_NAME = 200


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
        "key",
        "subscriptions",
        "trace",
    )

    def __init__(self, frame: Frame | None = None) -> None:
        self.channel = frame.channel if frame else None
        self.data = frame.data if frame else None
        self.generation = frame.generation if frame else -1
        self.subscriptions: set[bytes | None] = set()
        # Handlers themselves, not their ids: ``obj.method`` makes a new bound
        # method object on every access, but equal ones compare equal.
        self.called: list[Handler] = []
        self.decoded: DecodedEvent | EventDecodeError | None = None
        self.trace: dict[str, str] | None = None
        self.key: Hashable | None = None

    def takes(self, frame: Frame) -> bool:
        return (
            frame.channel == self.channel
            and frame.generation == self.generation
            and frame.pattern not in self.subscriptions
            and frame.data == self.data
        )


class Router:
    """Handler tables and what happens to each frame on its way to them."""

    def __init__(self, registry: EventRegistry, stats: Stats) -> None:
        self.registry = registry
        self.channels: dict[str, list[Handler]] = {}
        self.patterns: dict[str, list[Handler]] = {}
        self._ordering: dict[str, Callable[[Any], Hashable]] = {}
        self._stats = stats
        self._group = _Group()

    @property
    def ordered(self) -> Container[str]:
        """The topics that have an ordering key, as ``order_by()`` changes them."""
        return self._ordering

    def order_by(self, topic: str, key: OrderingKey) -> None:
        """Handle events of ``topic`` with equal ``key`` one at a time, in order.

        ``key`` is a field name of the event, or a function of the event.
        """
        validate_topic(topic)
        # TODO(ordering-check): a field name is not checked against the
        # topic's model, so a misspelt one puts every event under one key
        # (all handled one at a time) instead of failing at set-up.
        if isinstance(key, str):
            name = key
            self._ordering[topic] = lambda event: _field(event, name)
        elif callable(key):
            self._ordering[topic] = key
        else:
            msg = "an ordering key is a field name or a function of the event"
            raise ConfigurationError(msg)

    def key_of(self, topic: str, event: DecodedEvent) -> Hashable | None:
        """Return the ordering key of ``event``, or None if ``topic`` has none.

        Raises:
            EventDecodeError: The key function failed on ``event``, or
                returned something unhashable: the event cannot be ordered.
        """
        order = self._ordering.get(topic)
        if order is None:
            return None

        try:
            key = order(event)
            hash(key)
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
            raise
        except BaseException as exc:
            # Any other BaseException rejects the event, as it fails a
            # handler. Only the exception's type: its text may quote the event.
            reason = f"its ordering key cannot be computed ({type(exc).__name__})"
            raise EventDecodeError(reason, topic=topic) from exc

        return key

    @staticmethod
    def add(table: dict[str, list[Handler]], name: str, handler: Handler) -> bool:
        """Add a handler; return True when ``name`` had none before."""
        handlers = table.setdefault(name, [])
        if handler not in handlers:
            handlers.append(handler)

        return len(handlers) == 1

    @staticmethod
    def remove(
        table: dict[str, list[Handler]], name: str, handler: Handler | None
    ) -> bool:
        """Remove a handler (or all); return True when ``name`` has none left."""
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

    async def route(
        self, frame: Frame, reader: PubSubReader, dispatcher: Dispatcher
    ) -> None:
        """Submit ``frame`` to every handler that has not seen its publish."""
        if frame.pattern is None and not self.patterns:
            # Without patterns, a publish reaches this connection once: no
            # frames to group, and the channel's name was checked when it
            # was subscribed to.
            self._stats.events_received += 1
            routed = self._route_direct(frame)
            if routed is not None:
                await self._submit(*routed, reader, dispatcher)

            return

        group = self._group
        new = not group.takes(frame)
        if new:
            group = self._group = _Group(frame)
            self._stats.events_received += 1

        group.subscriptions.add(frame.pattern)
        topic = self._topic(frame, group)
        if topic is None:
            return

        if new and self._stats.observer is not None:
            self._stats.observer.received(topic)

        if frame.pattern is None:
            handlers = self.channels.get(topic, ())
        else:
            handlers = self.patterns.get(frame.pattern.decode(), ())

        todo = [h for h in handlers if h not in group.called]
        if not todo:
            if not group.called and len(group.subscriptions) == 1:
                self._stats.unrouted_events += 1

            return

        event = self._decode(topic, frame, group)
        if event is None:
            return

        pattern = frame.pattern.decode() if frame.pattern is not None else None
        delivery = new_delivery(topic, event, pattern, None, 1, group.trace)
        group.called.extend(todo)
        await self._submit(todo, delivery, group.key, reader, dispatcher)

    def _route_direct(
        self, frame: Frame
    ) -> tuple[list[Handler], Delivery, Hashable | None] | None:
        topic = frame.channel.decode(errors="replace")
        if self._stats.observer is not None:
            self._stats.observer.received(topic)

        handlers = self.channels.get(topic)
        if not handlers:
            self._stats.unrouted_events += 1
            return None

        event, trace, key = self._decode_data(topic, frame.data)
        if isinstance(event, EventDecodeError):
            return None

        return list(handlers), new_delivery(topic, event, None, None, 1, trace), key

    async def _submit(
        self,
        handlers: list[Handler],
        delivery: Delivery,
        order_key: Hashable | None,
        reader: PubSubReader,
        dispatcher: Dispatcher,
    ) -> None:
        ordered = delivery.topic in self._ordering
        for at, handler in enumerate(handlers):
            key = (handler, order_key) if ordered else None
            try:
                if dispatcher.submit_nowait(handler, delivery, key=key):
                    continue

                reader.stalled = True
                await dispatcher.submit(handler, delivery, key=key)
            except BaseException:
                # Stopped while waiting for a handler slot: submit() counted
                # its own call; the calls after it are never made either.
                for later in handlers[at + 1 :]:
                    dispatcher.not_started(later, delivery)

                raise
            finally:
                reader.stalled = False

    def _rejected(self, topic: str, exc: EventDecodeError) -> None:
        self._stats.invalid_events += 1
        if self._stats.observer is not None:
            self._stats.observer.rejected(topic)

        logger.warning(
            "Rejected an event on %s: %s",
            topic,
            exc.reason,
            extra={"topic": topic, "reason": exc.reason},
        )

    def _topic(self, frame: Frame, group: _Group) -> str | None:
        try:
            topic = frame.channel.decode()
            if frame.pattern is not None:
                # A pattern matches any channel name, including ones no topic
                # may have: they must not reach handlers or logs unchecked.
                validate_topic(topic)
        except (UnicodeDecodeError, ConfigurationError):
            if group.decoded is None:
                group.decoded = EventDecodeError("channel name is not a valid topic")
                self._stats.invalid_events += 1
                if self._stats.observer is not None:
                    self._stats.observer.rejected(None)

                logger.warning(
                    "Rejected an event on channel %r: not a valid topic name",
                    frame.channel[:_MAX_LOGGED_NAME],
                    extra={"reason": "channel name is not a valid topic"},
                )

            return None

        return topic

    def _decode(self, topic: str, frame: Frame, group: _Group) -> DecodedEvent | None:
        if group.decoded is None:
            group.decoded, group.trace, group.key = self._decode_data(topic, frame.data)

        if isinstance(group.decoded, EventDecodeError):
            return None

        return group.decoded

    def _decode_data(
        self, topic: str, data: bytes
    ) -> tuple[DecodedEvent | EventDecodeError, dict[str, str] | None, Hashable]:
        """Decode one message and take its ordering key.

        Return the event (or the error, once counted and logged), its trace
        context and its ordering key. Both routes, with patterns and
        without, decode here, so that neither can skip a step: a trace
        context appended by a publisher is not part of the event, and is
        taken off before the model sees the JSON.
        """
        data, trace = split_json(data)
        try:
            event = self.registry.decode(topic, data)
            return event, trace, self.key_of(topic, event)
        except EventDecodeError as exc:
            self._rejected(topic, exc)
            return exc, None, None


def _field(event: object, name: str) -> Hashable:
    value = event.get(name) if isinstance(event, dict) else getattr(event, name, None)
    return value if isinstance(value, Hashable) else repr(value)
