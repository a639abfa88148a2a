"""Publish events: one at a time, or many in one pipelined round trip."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio

from redis_events import _constants as c
from redis_events._connection import (
    REDIS_ERRORS,
    Backoff,
    create_client,
    is_retryable,
    translate_error,
)
from redis_events._endpoint import Endpoint
from redis_events._envelope import add_to_json, to_fields
from redis_events._keys import DATA_FIELD, stream_key
from redis_events._packed import publish_packed
from redis_events._topology import is_cluster
from redis_events.codec import build_event, validate_topic
from redis_events.events import (
    KeySubmitted,
    ProfileCreated,
    ProfileDeleted,
    ProfileUpdated,
)
from redis_events.exceptions import (
    EventDecodeError,
    EventEncodeError,
    EventTooLargeError,
    RedisUnavailableError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping
    from types import TracebackType

    from pydantic import BaseModel
    from redis.asyncio import Redis
    from redis.typing import EncodableT, FieldT

    from redis_events.tracing import ProducerTracing

__all__ = ["EventPublisher", "close_shared_publisher", "get_publisher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_BASE = 0.05
_RETRY_CAP = 1.0


class EventPublisher(Endpoint):
    """Publish events: to one pub/sub channel, or one stream, per topic.

    ``transport="stream"`` appends to the topic's stream (``XADD`` with
    approximate ``MAXLEN`` retention) for consumer groups to read; the default
    ``"pubsub"`` publishes to the channel named like the topic.

    Use it as an async context manager, or call ``connect()`` and ``close()``
    yourself; a publish on an unconnected publisher connects lazily.

    Note:
        A publish that meets a lost connection is retried with backoff for up
        to ``publish_retry_timeout`` seconds (5 by default), then raises
        ``RedisUnavailableError``. A success is reported only once Redis has
        answered. A PUBLISH whose connection broke after Redis received it
        but before the reply arrived is sent again, so a subscriber may see
        that event twice; ``event_id`` tells the copies apart.
    """

    def _init_state(self) -> None:
        self._stream = self.settings.transport == "stream"
        self._retention: dict[str, int] = {}
        self._client: Redis | None = None
        # One slot per pooled connection: see _attempt().
        self._slots: anyio.Semaphore | None = None
        self._in_flight = 0
        self._all_done = anyio.Event()
        self._events_published = 0
        self._publish_retries = 0
        self._publish_failures = 0
        self._tracing: ProducerTracing | None = None
        if self.settings.tracing:
            # Imported only when asked for: without tracing, no OpenTelemetry.
            from redis_events.tracing import ProducerTracing

            self._tracing = ProducerTracing(transport=self.settings.transport)

    def __repr__(self) -> str:
        return f"EventPublisher({self.settings.masked_url!r})"

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection pool and check Redis answers a PING.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: Redis refused the credentials.
            ConfigurationError: The server's TLS certificate is not trusted.
        """
        client = self._ensure_client()
        try:
            await self._attempt(_ping, client)
        except REDIS_ERRORS as exc:
            raise translate_error(
                exc, operation="PING", settings=self.settings
            ) from exc

        logger.info("Publisher connected to %s", self.settings.masked_url)

    async def close(self) -> None:
        """Close every pooled connection. The publisher may connect again.

        Publishes in flight end first: they finish, or fail with
        ``RedisUnavailableError`` instead of retrying on a closed pool.
        """
        client, self._client = self._client, None
        if client is None:
            return

        with anyio.move_on_after(
            self.settings.publish_retry_timeout + self.settings.socket_timeout
        ):
            while self._in_flight:
                self._all_done = anyio.Event()
                await self._all_done.wait()

        await client.aclose()

    async def publish(
        self, topic: str, event: BaseModel | Mapping[str, Any]
    ) -> int | str:
        """Publish one event.

        Returns:
            On pub/sub, Redis's count of subscriptions that received it; on
            streams, the id of the new entry.

        Raises:
            ConfigurationError: ``topic`` is not a usable name.
            EventEncodeError: The event cannot be serialized or does not fit
                the topic's model; nothing was sent.
            EventTooLargeError: The event is above ``max_event_bytes``;
                nothing was sent.
            RedisUnavailableError: Redis stayed unreachable for the whole
                retry window.
            PermissionDeniedError: The user may not publish to ``topic``.
        """
        data = self.registry.encode(validate_topic(topic), event)
        if self._tracing is None:
            return await self._publish_one(topic, data, None)

        with self._tracing.publishing(topic, event) as context:
            return await self._publish_one(topic, data, context)

    async def _publish_encoded(self, topic: str, data: bytes) -> int | str:
        """Publish JSON bytes as they are: a faithful copy of a stored event.

        For ``redis-events replay --republish``: encoding the decoded event
        again would redact secrets for a topic without a model and give an
        event without ``event_id`` a new one. The bytes are decoded as an
        event of ``topic`` first, so that the size limit and the topic's
        model (when it has one) hold as for ``publish``.

        Raises:
            The same errors as ``publish``; an event that does not fit the
            topic's model raises ``EventEncodeError`` and nothing is sent.
        """
        try:
            event = self.registry.decode(validate_topic(topic), data)
        except EventTooLargeError:
            raise
        except EventDecodeError as exc:
            raise EventEncodeError(exc.reason, topic=topic) from None

        if self._tracing is None:
            return await self._publish_one(topic, data, None)

        with self._tracing.publishing(topic, event) as context:
            return await self._publish_one(topic, data, context)

    async def _publish_one(
        self, topic: str, data: bytes, context: dict[str, str] | None
    ) -> int | str:
        if self._stream:
            key, maxlen = stream_key(topic), self._maxlen(topic)
            fields: dict[FieldT, EncodableT] = {DATA_FIELD: data}
            if context:
                fields |= to_fields(context)

            entry_id: bytes | str = await self._retrying(
                "XADD",
                topic,
                lambda client: client.xadd(
                    key, fields, maxlen=maxlen, approximate=True
                ),
            )
            result: int | str = (
                entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            )
        else:
            if context:
                data = add_to_json(data, context)

            result = await self._retrying(
                "PUBLISH", topic, lambda client: _publish(client, topic, data)
            )

        self._events_published += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Published %d bytes to %s", len(data), topic, extra={"topic": topic}
            )
        return result

    async def publish_many(
        self, topic: str, events: Iterable[BaseModel | Mapping[str, Any]]
    ) -> list[int] | list[str]:
        """Publish a batch in one pipelined round trip.

        Every event is encoded before anything is sent, so one bad event
        fails the whole batch without sending any of it.

        Returns:
            For each event in order: the receiver count (pub/sub) or the
            entry id (streams).

        Raises:
            The same errors as ``publish``. After a lost connection the whole
            batch is sent again, so part of it may arrive twice.
        """
        validate_topic(topic)
        payloads = [self.registry.encode(topic, event) for event in events]
        if not payloads:
            return []

        if self._tracing is None:
            return await self._publish_batch(topic, payloads, None)

        with self._tracing.publishing(topic, None, len(payloads)) as context:
            return await self._publish_batch(topic, payloads, context)

    async def _publish_batch(
        self, topic: str, payloads: list[bytes], context: dict[str, str] | None
    ) -> list[int] | list[str]:
        extra: dict[FieldT, EncodableT] = {}
        if context and self._stream:
            extra |= to_fields(context)

        if context and not self._stream:
            payloads = [add_to_json(data, context) for data in payloads]

        key = stream_key(topic) if self._stream else ""
        maxlen = self._maxlen(topic)

        async def send(client: Redis) -> list[Any]:
            cluster = is_cluster(client)
            if not self._stream and not cluster:
                return await publish_packed(
                    client, topic, payloads, stall_timeout=self.settings.socket_timeout
                )

            async with client.pipeline(transaction=False) as pipe:
                for data in payloads:
                    if self._stream:
                        pipe.xadd(
                            key,
                            {DATA_FIELD: data, **extra},
                            maxlen=maxlen,
                            approximate=True,
                        )
                    elif cluster:
                        pipe.spublish(topic, data)
                    else:
                        pipe.publish(topic, data)

                result: list[Any] = await pipe.execute()
                return result

        replies = await self._retrying(
            "XADD" if self._stream else "PUBLISH", topic, send
        )
        self._events_published += len(payloads)
        if self._stream:
            return [entry_id.decode() for entry_id in replies]

        return [int(count) for count in replies]

    def set_retention(self, topic: str, maxlen: int) -> None:
        """Keep about ``maxlen`` entries of ``topic``'s stream (``MAXLEN ~``).

        Overrides ``stream_maxlen`` for one topic; 0 keeps everything.
        """
        self._retention[stream_key(topic)] = maxlen

    def _maxlen(self, topic: str) -> int | None:
        maxlen = self._retention.get(stream_key(topic), self.settings.stream_maxlen)
        return maxlen or None

    async def publish_key_submitted(
        self, key_value: str, token_name: str, **fields: Any
    ) -> int | str:
        """Publish a ``key_submitted`` event to ``key_submission``."""
        event = build_event(
            c.KEY_SUBMISSION_TOPIC,
            KeySubmitted,
            key_value=key_value,
            token_name=token_name,
            **fields,
        )
        return await self.publish(c.KEY_SUBMISSION_TOPIC, event)

    async def publish_profile_created(
        self, profile_id: int | str, profile_data: Mapping[str, Any], **fields: Any
    ) -> int | str:
        """Publish a ``profile_created`` event to ``profile_events``."""
        event = build_event(
            c.PROFILE_EVENTS_TOPIC,
            ProfileCreated,
            profile_id=profile_id,
            profile_data=dict(profile_data),
            **fields,
        )
        return await self.publish(c.PROFILE_EVENTS_TOPIC, event)

    async def publish_profile_updated(
        self, profile_id: int | str, profile_data: Mapping[str, Any], **fields: Any
    ) -> int | str:
        """Publish a ``profile_updated`` event to ``profile_events``."""
        event = build_event(
            c.PROFILE_EVENTS_TOPIC,
            ProfileUpdated,
            profile_id=profile_id,
            profile_data=dict(profile_data),
            **fields,
        )
        return await self.publish(c.PROFILE_EVENTS_TOPIC, event)

    async def publish_profile_deleted(
        self, profile_id: int | str, **fields: Any
    ) -> int | str:
        """Publish a ``profile_deleted`` event to ``profile_events``."""
        event = build_event(
            c.PROFILE_EVENTS_TOPIC, ProfileDeleted, profile_id=profile_id, **fields
        )
        return await self.publish(c.PROFILE_EVENTS_TOPIC, event)

    def get_stats(self) -> dict[str, int]:
        """Return the publisher's counters."""
        return {
            "events_published": self._events_published,
            "publish_retries": self._publish_retries,
            "publish_failures": self._publish_failures,
        }

    def _ensure_client(self) -> Redis:
        if self._client is None:
            settings = self.settings
            client = create_client(settings, role="pub", blocking=False)
            self._slots = None
            if settings.scheme != "memory" and not is_cluster(client):
                # redis-py's BlockingConnectionPool would make a command wait
                # for a free connection, at a cost per command (a condition,
                # a lock and a timeout) larger than the rest of a publish in
                # this library. A semaphore with one slot per connection
                # keeps that wait for a fraction of the cost.
                self._slots = anyio.Semaphore(
                    settings.max_connections, fast_acquire=True
                )

            self._client = client

        return self._client

    async def _attempt(self, call: Callable[[Redis], Awaitable[T]], client: Redis) -> T:
        """Run ``call`` once, on a free pooled connection.

        Raises:
            TimeoutError: No connection became free within ``socket_timeout``
                (retried like a lost connection).
        """
        slots = self._slots
        if slots is None:
            return await call(client)

        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._wait_for_slot(slots)

        try:
            return await call(client)
        finally:
            slots.release()

    async def _wait_for_slot(self, slots: anyio.Semaphore) -> None:
        with anyio.move_on_after(self.settings.socket_timeout):
            await slots.acquire()
            return

        msg = "no pooled connection became free within socket_timeout"
        raise TimeoutError(msg)

    async def _retrying(
        self, operation: str, topic: str, call: Callable[[Redis], Awaitable[T]]
    ) -> T:
        client = self._ensure_client()
        # The event loop's clock (what anyio.current_time() reads on asyncio),
        # read directly: this runs for every publish.
        started = time.monotonic()
        self._in_flight += 1
        try:
            try:
                return await self._attempt(call, client)
            except REDIS_ERRORS as exc:
                first_error = exc

            deadline = started + self.settings.publish_retry_timeout
            return await self._retry(
                operation, topic, call, client, first_error, deadline
            )
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._all_done.set()

    async def _retry(
        self,
        operation: str,
        topic: str,
        call: Callable[[Redis], Awaitable[T]],
        client: Redis,
        error: BaseException,
        deadline: float,
    ) -> T:
        backoff = Backoff(base=_RETRY_BASE, cap=_RETRY_CAP)
        while True:
            left = deadline - time.monotonic()
            if not is_retryable(error) or left <= 0:
                self._publish_failures += 1
                raise translate_error(
                    error, operation=operation, settings=self.settings, topic=topic
                ) from error

            self._publish_retries += 1
            log = logger.warning if backoff.failures == 0 else logger.debug
            log(
                "%s to %s failed (%s); retrying for up to %.1f s",
                operation,
                topic,
                type(error).__name__,
                left,
                extra={"topic": topic},
            )
            await anyio.sleep(min(backoff.next_delay(), left))
            if client is not self._client:
                self._publish_failures += 1
                msg = f"{operation} to {topic!r} abandoned: the publisher was closed"
                raise RedisUnavailableError(msg) from error

            try:
                return await self._attempt(call, client)
            except REDIS_ERRORS as exc:
                error = exc


def _ping(client: Redis) -> Awaitable[bool]:
    return client.ping()


def _publish(client: Redis, channel: str, data: bytes) -> Awaitable[int]:
    # On a cluster, SPUBLISH keeps a topic's traffic on the shard that owns
    # its slot; a PUBLISH would be copied to every node of the cluster.
    if is_cluster(client):
        return client.spublish(channel, data)

    return client.publish(channel, data)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventPublisher] = (
    weakref.WeakKeyDictionary()
)


def get_publisher() -> EventPublisher:
    """Return the publisher shared by all callers on the running event loop.

    It is configured from the environment (``REDIS_URL`` and
    ``REDIS_EVENTS_*``) and connects on first use.

    Raises:
        RuntimeError: No event loop is running.
    """
    loop = asyncio.get_running_loop()
    publisher = _shared.get(loop)
    if publisher is None:
        publisher = _shared[loop] = EventPublisher()

    return publisher


async def close_shared_publisher() -> None:
    """Close the shared publisher of the running event loop, if there is one."""
    publisher = _shared.pop(asyncio.get_running_loop(), None)
    if publisher is not None:
        await publisher.close()
