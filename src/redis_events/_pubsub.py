"""The pub/sub transport's reader: one self-healing PubSub connection.

Pub/sub is at-most-once: Redis drops a message for which no client is
subscribed at that moment, and cuts a subscriber that falls behind by more
than its output-buffer limit. The reader restores every channel and pattern
after a lost connection, but it cannot bring back what was published while it
was away. Publishing is one command and lives in ``publisher``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

import anyio
from redis import RedisError
from redis.exceptions import ResponseError

from redis_events._connection import RETRYABLE_ERRORS, Backoff, translate_error
from redis_events._pubsub_shared import Frame, reopen, unlogged
from redis_events._pubsub_subscriptions import PubSubSubscriptions
from redis_events.exceptions import RedisEventsError, RedisUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from redis_events._pubsub_shared import OnFrame
    from redis_events.config import Settings
    from redis_events.dispatcher import Stats

__all__ = ["PubSubReader"]

logger = logging.getLogger(__name__)


class HealthCheckFailedError(Exception):
    """An idle PING got no answer in time: the server is frozen or gone."""


class PubSubReader(PubSubSubscriptions):
    """Keep one PubSub connection subscribed to a set of channels and patterns.

    ``run()`` passes each message on. When the connection is lost, or an idle
    PING is not answered within ``health_check_interval``, it reconnects with
    capped exponential backoff and jitter, and subscribes again to every
    channel and pattern before it reads on. Which channels and patterns those
    are is ``PubSubSubscriptions``'s part.
    """

    def __init__(self, client: Redis, settings: Settings, stats: Stats) -> None:
        super().__init__(settings)
        self._client = client
        self._stats = stats
        self._activity = 0
        self._opened_at = 0.0
        self._was_connected = False
        self._backoff = Backoff(
            base=settings.reconnect_backoff_base, cap=settings.reconnect_backoff_cap
        )

    @property
    def connected(self) -> bool:
        """Tell whether the reader holds a subscribed connection now."""
        return self._pubsub is not None

    async def connect(self) -> None:
        """Open the connection once and subscribe, without retrying.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: The user may not subscribe.
        """
        self._started = True
        if self._pubsub is None:
            await self._open()

    async def run(self, on_frame: OnFrame) -> None:
        """Read messages forever and pass each to ``on_frame``.

        Reconnects as often as needed. ``on_frame`` may wait (for a handler
        slot, say); set ``stalled`` while it does, so that the silence it
        causes is not taken for a dead server.

        Note:
            Cancelling the caller is safe at any point; the connection is
            kept until ``aclose()``.
        """
        self._started = True
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                await self._reconnect()
                continue

            try:
                await self._read(pubsub, on_frame)
            except (HealthCheckFailedError, *RETRYABLE_ERRORS) as exc:
                await self._lose(exc)

    async def aclose(self) -> None:
        """Unsubscribe everything and give the connection back."""
        self._channels.clear()
        self._patterns.clear()
        await self._drop(RedisUnavailableError("the subscriber was closed"))

    async def _read(self, pubsub: PubSub, on_frame: OnFrame) -> None:
        early, self._early = self._early, []
        for frame in early:
            await on_frame(frame)

        # Reads block without a timeout (math.inf, redis-py's documented
        # opt-in): a timeout per read costs more than the read itself. A
        # watchdog task notices silence instead. The connection is read
        # directly, as PubSub.parse_response would read it, without its
        # retry wrapper: this client never retries, and reconnecting is
        # this reader's job.
        connection = pubsub.connection
        assert connection is not None, "a subscribed PubSub has a connection"
        read = connection.read_response
        error: BaseException | None = None
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._watch, pubsub, task_group.cancel_scope)
            try:
                while True:
                    try:
                        response = await read(
                            timeout=math.inf,
                            disconnect_on_error=False,
                            push_request=True,
                        )
                    except ResponseError as exc:
                        self._refused(exc)
                        continue

                    self._activity += 1
                    if (
                        type(response) is list
                        and len(response) == 3
                        and response[0] == b"message"
                    ):
                        # A published message (nearly every reply), taken
                        # here without a coroutine of its own.
                        await on_frame(
                            Frame(response[1], None, response[2], self.generation)
                        )
                        continue

                    received = await self._next_frame(pubsub, response)
                    if received is not None:
                        await on_frame(received)
            except RETRYABLE_ERRORS as exc:
                error = exc
                task_group.cancel_scope.cancel()

        if error is not None:
            raise error

        msg = "no reply to PING within the health-check interval"
        raise HealthCheckFailedError(msg)

    async def _watch(self, pubsub: PubSub, session: anyio.CancelScope) -> None:
        # Half the interval per look: one silent half sends a PING, a second
        # silent half proves the server is gone, within one interval.
        seen = self._activity
        pinged = False
        while True:
            await anyio.sleep(self._settings.health_check_interval / 2)
            if self._activity != seen or self.stalled:
                seen = self._activity
                pinged = False
            elif pinged:
                session.cancel()
                return
            else:
                pinged = True
                try:
                    await pubsub.ping()
                except RETRYABLE_ERRORS:
                    session.cancel()
                    return

    async def _open(self) -> None:
        # With RESP3, redis-py logs every push message (payloads included) at
        # DEBUG unless a handler is given; this one hands them back unlogged.
        pubsub = self._client.pubsub(push_handler_func=unlogged)
        try:
            with anyio.fail_after(
                self._settings.socket_connect_timeout + self._settings.socket_timeout
            ):
                await pubsub.connect()  # type: ignore[no-untyped-call]  # untyped upstream
                await self._subscribe_all(pubsub)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await _close(pubsub)

            # The built-in TimeoutError from fail_after is an OSError too.
            if isinstance(exc, RedisError | OSError):
                raise translate_error(
                    exc, operation="SUBSCRIBE", settings=self._settings
                ) from exc

            raise

        self._pubsub = pubsub
        self._live.set()
        self._opened_at = anyio.current_time()
        self.generation += 1
        if self._was_connected:
            self._stats.reconnects += 1
            logger.info(
                "Reconnected to Redis at %s; restored %d channels and %d patterns",
                self._settings.masked_url,
                len(self._channels),
                len(self._patterns),
            )
        else:
            logger.info(
                "Subscribed at %s to %d channels and %d patterns",
                self._settings.masked_url,
                len(self._channels),
                len(self._patterns),
            )

        self._was_connected = True

    async def _reconnect(self) -> None:
        await reopen(self._open, self._backoff, self._stats)

    async def _lose(self, exc: BaseException) -> None:
        logger.warning(
            "Lost the subscriber connection to Redis at %s (%s: %s); reconnecting",
            self._settings.masked_url,
            type(exc).__name__,
            exc,
        )
        lived = anyio.current_time() - self._opened_at
        await self._drop(self._not_confirmed("connection lost"))
        if lived >= self._settings.health_check_interval:
            self._backoff.reset()
            return

        # A connection that dies soon after it opened (a flapping proxy, an
        # output-buffer limit hit again and again) must not be reopened in a
        # tight loop.
        await anyio.sleep(self._backoff.next_delay())

    async def _drop(self, reason: RedisEventsError) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._live = anyio.Event()
        self._pending.fail_all(reason)
        if pubsub is not None:
            with anyio.CancelScope(shield=True):
                await _close(pubsub)


async def _close(pubsub: PubSub) -> None:
    """Close ``pubsub``'s connection and wait until it is closed.

    ``PubSub.aclose()`` closes without waiting; on a TLS connection the
    closing handshake then outlives the call, and an event loop that ends
    right after a stop finds the socket still open.
    """
    connection = pubsub.connection
    if connection is not None:
        with contextlib.suppress(RedisError, OSError):
            await connection.disconnect()

    await pubsub.aclose()
