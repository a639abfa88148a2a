"""The pub/sub transport: PUBLISH on one side, a self-healing PubSub reader on
the other.

Pub/sub is at-most-once: Redis drops a message for which no client is
subscribed at that moment, and cuts a subscriber that falls behind by more
than its output-buffer limit. The reader here restores every channel and
pattern after a lost connection, but it cannot bring back what was published
while it was away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from redis import RedisError

from redis_events._connection import RETRYABLE_ERRORS, Backoff, translate_error
from redis_events.exceptions import RedisEventsError, RedisUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from redis_events.config import Settings
    from redis_events.dispatcher import Stats

__all__ = ["Frame", "PubSubReader"]

logger = logging.getLogger(__name__)

_MESSAGE_TYPES = frozenset({"message", "pmessage"})
_CONFIRM_TYPES = frozenset({"subscribe", "psubscribe"})


class HealthCheckFailedError(Exception):
    """An idle PING got no answer in time: the server is frozen or gone."""


@dataclass(slots=True, frozen=True)
class Frame:
    """One message as Redis sent it to this connection.

    ``generation`` counts the connections the reader has opened, so frames
    read before and after a reconnect are never mistaken for one publish.
    """

    channel: str
    pattern: str | None
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
        self._confirmations: dict[tuple[str, str], anyio.Event] = {}
        self._activity = 0
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

    @property
    def channels(self) -> frozenset[str]:
        """The channels this reader keeps subscribed."""
        return frozenset(self._channels)

    @property
    def patterns(self) -> frozenset[str]:
        """The patterns this reader keeps subscribed."""
        return frozenset(self._patterns)

    async def subscribe(
        self, channels: Iterable[str] = (), patterns: Iterable[str] = ()
    ) -> None:
        """Add channels and patterns, and wait until Redis confirms them.

        While every handler slot is busy (``stalled``), the confirmation can
        only be read once a slot frees up, and this waits that long.

        Raises:
            RedisUnavailableError: Redis did not confirm in time; the
                subscription stays registered and is restored on reconnect.
        """
        new_channels = [ch for ch in channels if ch not in self._channels]
        new_patterns = [p for p in patterns if p not in self._patterns]
        if not new_channels and not new_patterns:
            return

        self._channels.update(new_channels)
        self._patterns.update(new_patterns)
        pubsub = self._pubsub
        if pubsub is None:
            return

        waits = [self._expect("subscribe", ch) for ch in new_channels]
        waits += [self._expect("psubscribe", p) for p in new_patterns]
        try:
            with anyio.fail_after(self._settings.socket_timeout):
                if new_channels:
                    await pubsub.subscribe(*new_channels)

                if new_patterns:
                    await pubsub.psubscribe(*new_patterns)

            with anyio.move_on_after(self._settings.socket_timeout) as wait_scope:
                for event in waits:
                    await event.wait()
        except (TimeoutError, *RETRYABLE_ERRORS) as exc:
            raise self._not_confirmed(type(exc).__name__) from exc

        if not wait_scope.cancelled_caught:
            return

        if not self.stalled:
            raise self._not_confirmed("no confirmation in time")

        # Confirmations arrive behind the messages that wait for a handler
        # slot, so they cannot be read before a slot frees up: wait that
        # long, since Redis itself is fine. A lost connection ends the wait
        # too (the subscription is then restored on reconnect).
        for event in waits:
            await event.wait()

    def _not_confirmed(self, why: str) -> RedisUnavailableError:
        return RedisUnavailableError(
            f"subscription not confirmed by Redis at {self._settings.masked_url} "
            f"({why}); it stays registered and is restored when the connection "
            "comes back"
        )

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
        if self._pubsub is None:
            await self._open()

    async def run(self, on_frame: Callable[[Frame], Awaitable[None]]) -> None:
        """Read messages forever and pass each to ``on_frame``.

        Reconnects as often as needed. ``on_frame`` may wait (for a handler
        slot, say); set ``stalled`` while it does, so that the silence it
        causes is not taken for a dead server.

        Note:
            Cancelling the caller is safe at any point; the connection is
            kept until ``aclose()``.
        """
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
        await self._drop()

    async def _read(
        self, pubsub: PubSub, on_frame: Callable[[Frame], Awaitable[None]]
    ) -> None:
        # Reads block without a timeout: a timeout per read costs more than
        # the read itself. A watchdog task notices silence instead.
        error: BaseException | None = None
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._watch, pubsub, task_group.cancel_scope)
            try:
                while True:
                    message = await pubsub.get_message(timeout=None)
                    self._activity += 1
                    if message is not None:
                        await self._handle(message, on_frame)
            except RETRYABLE_ERRORS as exc:
                error = exc
                task_group.cancel_scope.cancel()

        if error is not None:
            raise error

        msg = "no reply to PING within the health-check interval"
        raise HealthCheckFailedError(msg)

    async def _handle(
        self, message: dict[str, Any], on_frame: Callable[[Frame], Awaitable[None]]
    ) -> None:
        kind = message["type"]
        if kind in _MESSAGE_TYPES:
            pattern = message["pattern"]
            await on_frame(
                Frame(
                    channel=_text(message["channel"]),
                    pattern=_text(pattern) if pattern is not None else None,
                    data=message["data"],
                    generation=self.generation,
                )
            )
        elif kind in _CONFIRM_TYPES:
            event = self._confirmations.pop((kind, _text(message["channel"])), None)
            if event is not None:
                event.set()

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
        pubsub = self._client.pubsub()
        try:
            with anyio.fail_after(
                self._settings.socket_connect_timeout + self._settings.socket_timeout
            ):
                await pubsub.connect()  # type: ignore[no-untyped-call]  # untyped upstream
                if self._channels:
                    await pubsub.subscribe(*self._channels)

                if self._patterns:
                    await pubsub.psubscribe(*self._patterns)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped upstream

            # The built-in TimeoutError from fail_after is an OSError too.
            if isinstance(exc, RedisError | OSError):
                raise translate_error(
                    exc, operation="SUBSCRIBE", settings=self._settings
                ) from exc

            raise

        self._pubsub = pubsub
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
        self._backoff.reset()

    async def _reconnect(self) -> None:
        while True:
            self._stats.reconnect_attempts += 1
            try:
                await self._open()
            except RedisEventsError as exc:
                delay = self._backoff.next_delay()
                # An ACL or password problem may be fixed by an operator
                # while we wait, so it is retried too, but said loudly.
                level = (
                    logging.DEBUG
                    if isinstance(exc, RedisUnavailableError)
                    else logging.ERROR
                )
                logger.log(
                    level,
                    "Reconnect attempt %d failed (%s); next in %.2f s",
                    self._backoff.failures,
                    exc,
                    delay,
                )
                await anyio.sleep(delay)
            else:
                return

    async def _lose(self, exc: BaseException) -> None:
        logger.warning(
            "Lost the subscriber connection to Redis at %s (%s: %s); reconnecting",
            self._settings.masked_url,
            type(exc).__name__,
            exc,
        )
        await self._drop()

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        for event in self._confirmations.values():
            event.set()

        self._confirmations.clear()
        if pubsub is not None:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped upstream

    def _expect(self, kind: str, name: str) -> anyio.Event:
        event = anyio.Event()
        self._confirmations[(kind, name)] = event
        return event


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")

    return value
