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
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
from redis import RedisError
from redis.exceptions import ResponseError

from redis_events._commands import PendingCommand, PendingCommands
from redis_events._connection import RETRYABLE_ERRORS, Backoff, translate_error
from redis_events.exceptions import RedisEventsError, RedisUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from redis_events.config import Settings
    from redis_events.dispatcher import Stats

__all__ = ["Frame", "PubSubReader", "reopen", "unlogged"]

logger = logging.getLogger(__name__)

_MESSAGE_TYPES = frozenset({"message", "pmessage"})
_SUBSCRIPTION_TYPES = frozenset(
    {"subscribe", "psubscribe", "unsubscribe", "punsubscribe"}
)

OnFrame = Callable[["Frame"], Awaitable[None]]


class HealthCheckFailedError(Exception):
    """An idle PING got no answer in time: the server is frozen or gone."""


class Frame(NamedTuple):
    """One message as Redis sent it to this connection.

    ``generation`` changes with every reconnect and every change of the
    subscriptions that Redis has confirmed, so frames on either side of such
    a change are never mistaken for copies of one publish. A named tuple:
    one is made per message, and a tuple is the cheapest to make.
    """

    channel: bytes
    pattern: bytes | None
    data: bytes
    generation: int


class PubSubReader:
    """Keep one PubSub connection subscribed to a set of channels and patterns.

    ``run()`` passes each message on. When the connection is lost, or an idle
    PING is not answered within ``health_check_interval``, it reconnects with
    capped exponential backoff and jitter, and subscribes again to every
    channel and pattern before it reads on.
    """

    def __init__(self, client: Redis, settings: Settings, stats: Stats) -> None:
        self._client = client
        self._settings = settings
        self._stats = stats
        self._channels: set[str] = set()
        self._patterns: set[str] = set()
        self._pubsub: PubSub | None = None
        self._live = anyio.Event()
        self._pending = PendingCommands()
        self._early: list[Frame] = []
        self._started = False
        self._activity = 0
        self._opened_at = 0.0
        self.generation = 0
        self._was_connected = False
        # Set by the consumer while it waits for a handler slot, that is
        # while nothing reads from the connection.
        self.stalled = False
        self._backoff = Backoff(
            base=settings.reconnect_backoff_base, cap=settings.reconnect_backoff_cap
        )

    @property
    def connected(self) -> bool:
        """Tell whether the reader holds a subscribed connection now."""
        return self._pubsub is not None

    async def subscribe(
        self, channels: Iterable[str] = (), patterns: Iterable[str] = ()
    ) -> None:
        """Add channels and patterns, and wait until Redis confirms them.

        Before ``connect()`` this only registers them. While every handler
        slot is busy (``stalled``) the confirmation cannot be read yet; then
        this returns once the command is sent and ``socket_timeout`` passed.

        Raises:
            RedisUnavailableError: Not confirmed in time, or the connection
                was lost; the subscription stays registered and is restored
                on reconnect.
            PermissionDeniedError: Redis refused the subscription; it is
                dropped.
        """
        new_channels = [ch for ch in channels if ch not in self._channels]
        new_patterns = [p for p in patterns if p not in self._patterns]
        if not new_channels and not new_patterns:
            return

        self._channels.update(new_channels)
        self._patterns.update(new_patterns)
        if not self._started:
            return

        timeout = self._settings.socket_timeout
        pubsub = self._pubsub
        if pubsub is None:
            # Reconnecting: the next connection subscribes to the new names
            # before it goes live.
            with anyio.move_on_after(timeout + self._settings.socket_connect_timeout):
                await self._live.wait()
                return

            raise self._not_confirmed("not connected")

        commands = await self._send_subscribe(pubsub, new_channels, new_patterns)
        with anyio.move_on_after(timeout) as wait_scope:
            for command in commands:
                await command.wait()

        for command in commands:
            if command.error is not None:
                raise command.error

        if wait_scope.cancelled_caught and not self.stalled:
            raise self._not_confirmed("no confirmation in time")

    async def _send_subscribe(
        self, pubsub: PubSub, channels: list[str], patterns: list[str]
    ) -> list[PendingCommand]:
        commands = []
        try:
            with anyio.fail_after(self._settings.socket_timeout):
                if channels:
                    commands.append(self._pending.add("subscribe", channels))
                    await pubsub.subscribe(*channels)

                if patterns:
                    commands.append(self._pending.add("psubscribe", patterns))
                    await pubsub.psubscribe(*patterns)
        except (TimeoutError, *RETRYABLE_ERRORS) as exc:
            raise self._not_confirmed(type(exc).__name__) from exc

        return commands

    async def unsubscribe(
        self, channels: Iterable[str] = (), patterns: Iterable[str] = ()
    ) -> None:
        """Remove channels and patterns; unknown names are ignored."""
        gone_channels = [ch for ch in channels if ch in self._channels]
        gone_patterns = [p for p in patterns if p in self._patterns]
        self._channels.difference_update(gone_channels)
        self._patterns.difference_update(gone_patterns)
        pubsub = self._pubsub
        if pubsub is None:
            return

        try:
            if gone_channels:
                await pubsub.unsubscribe(*gone_channels)

            if gone_patterns:
                await pubsub.punsubscribe(*gone_patterns)
        except RETRYABLE_ERRORS as exc:
            # The reader notices the broken connection too and reconnects
            # with the smaller set, so nothing is left subscribed.
            logger.debug("Unsubscribe not sent (%s)", type(exc).__name__)

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

    async def _next_frame(self, pubsub: PubSub, response: Any) -> Frame | None:
        """Return the message in ``response``, if it is one.

        A published message is taken straight from the reply; anything else
        goes through ``PubSub.handle_message``, which keeps redis-py's own
        account of the subscriptions.
        """
        if type(response) is list:
            kind = response[0]
            if kind == b"message" and len(response) == 3:
                return Frame(response[1], None, response[2], self.generation)

            if kind == b"pmessage" and len(response) == 4:
                return Frame(response[2], response[1], response[3], self.generation)

        message = await pubsub.handle_message(response)  # type: ignore[no-untyped-call]  # untyped upstream
        return self._frame(message) if message is not None else None

    def _frame(self, message: dict[str, Any]) -> Frame | None:
        kind = message["type"]
        if kind in _MESSAGE_TYPES:
            return Frame(
                channel=message["channel"],
                pattern=message["pattern"],
                data=message["data"],
                generation=self.generation,
            )

        if kind in _SUBSCRIPTION_TYPES:
            # Redis writes all copies of one publish before it answers a
            # (un)subscribe, so a confirmation is a clean boundary.
            self.generation += 1
            self._pending.confirm(kind, message["channel"])

        return None

    def _refused(self, exc: ResponseError) -> None:
        command = self._pending.fail_first()
        names = command.names if command else []
        error = translate_error(
            exc,
            operation=command.kind.upper() if command else "SUBSCRIBE",
            settings=self._settings,
            topic=", ".join(names) if names else None,
        )
        if command is not None:
            self._channels.difference_update(names)
            self._patterns.difference_update(names)
            command.fail(error)

        logger.error("Redis refused a subscription: %s", error)

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

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        """Subscribe a new connection to everything, until nothing is missing.

        Names added while this runs are picked up by the next round; messages
        that arrive meanwhile are kept for ``run()``.
        """
        channels: set[str] = set()
        patterns: set[str] = set()
        while True:
            new_channels = self._channels - channels
            new_patterns = self._patterns - patterns
            if not new_channels and not new_patterns:
                break

            expected: set[tuple[str, bytes]] = set()
            if new_channels:
                await pubsub.subscribe(*new_channels)
                channels |= new_channels
                expected |= {("subscribe", ch.encode()) for ch in new_channels}

            if new_patterns:
                await pubsub.psubscribe(*new_patterns)
                patterns |= new_patterns
                expected |= {("psubscribe", p.encode()) for p in new_patterns}

            names = ", ".join(sorted(new_channels | new_patterns))
            await self._await_confirmations(pubsub, expected, names)

        stale_channels = channels - self._channels
        stale_patterns = patterns - self._patterns
        if stale_channels:
            await pubsub.unsubscribe(*stale_channels)

        if stale_patterns:
            await pubsub.punsubscribe(*stale_patterns)

    async def _await_confirmations(
        self, pubsub: PubSub, expected: set[tuple[str, bytes]], names: str
    ) -> None:
        while expected:
            try:
                message = await pubsub.get_message(timeout=None)
            except ResponseError as exc:
                raise translate_error(
                    exc, operation="SUBSCRIBE", settings=self._settings, topic=names
                ) from exc

            if message is None:
                continue

            frame = self._frame(message)
            if frame is not None:
                self._early.append(frame)
            else:
                expected.discard((message["type"], message["channel"]))

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

    def _not_confirmed(self, why: str) -> RedisUnavailableError:
        return RedisUnavailableError(
            f"subscription not confirmed by Redis at {self._settings.masked_url} "
            f"({why}); it stays registered and is restored when the connection "
            "comes back"
        )


async def reopen(
    open_connection: Callable[[], Awaitable[None]], backoff: Backoff, stats: Stats
) -> None:
    """Call ``open_connection`` until it succeeds, backing off between tries."""
    while True:
        stats.reconnect_attempts += 1
        try:
            await open_connection()
        except RedisEventsError as exc:
            delay = backoff.next_delay()
            # An ACL or password problem may be fixed by an operator while we
            # wait, so it is retried too, but said loudly.
            unavailable = isinstance(exc, RedisUnavailableError)
            level = logging.DEBUG if unavailable else logging.ERROR
            logger.log(
                level,
                "Reconnect attempt %d failed (%s); next in %.2f s",
                backoff.failures,
                exc,
                delay,
            )
            await anyio.sleep(delay)
        else:
            return


async def unlogged(response: Any) -> Any:
    """A push handler that hands messages back without redis-py's DEBUG log."""
    return response


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
