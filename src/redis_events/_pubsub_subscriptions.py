"""The channels and patterns a pub/sub reader holds, and Redis's answers.

``PubSubSubscriptions`` is the part of the ``PubSubReader`` that keeps the
books on subscriptions: the names it must hold, the (P)SUBSCRIBE commands
waiting for Redis's confirmation (``redis_events._commands``), a refusal
turned into an error for the command it answers, and each reply turned into
a ``Frame`` or a confirmation. The connection itself, with its read loop,
health check and reconnects, is the reader's in ``redis_events._pubsub``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import ResponseError

from redis_events._commands import PendingCommand, PendingCommands
from redis_events._connection import RETRYABLE_ERRORS, translate_error
from redis_events._pubsub_shared import Frame
from redis_events.exceptions import RedisUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio.client import PubSub

    from redis_events.config import Settings

__all__ = ["PubSubSubscriptions"]

# The pub/sub reader's logger: the records keep the name users filter on.
logger = logging.getLogger("redis_events._pubsub")

_MESSAGE_TYPES = frozenset({"message", "pmessage"})
_SUBSCRIPTION_TYPES = frozenset(
    {"subscribe", "psubscribe", "unsubscribe", "punsubscribe"}
)


class PubSubSubscriptions:
    """Hold a set of channels and patterns, and follow Redis's confirmations.

    ``generation`` changes with every subscription change that Redis has
    confirmed; the reader changes it on every reconnect too.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channels: set[str] = set()
        self._patterns: set[str] = set()
        self._pubsub: PubSub | None = None
        self._live = anyio.Event()
        self._pending = PendingCommands()
        self._early: list[Frame] = []
        self._started = False
        self.generation = 0
        # Set by the consumer while it waits for a handler slot, that is
        # while nothing reads from the connection.
        self.stalled = False

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

    def _not_confirmed(self, why: str) -> RedisUnavailableError:
        return RedisUnavailableError(
            f"subscription not confirmed by Redis at {self._settings.masked_url} "
            f"({why}); it stays registered and is restored when the connection "
            "comes back"
        )
