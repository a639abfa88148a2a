"""Subscribe commands sent on a PubSub connection and not yet confirmed.

Redis answers each channel of a SUBSCRIBE with one confirmation, in the order
the commands were sent, or refuses the whole command with one error reply.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis_events.exceptions import RedisEventsError

__all__ = ["PendingCommand", "PendingCommands"]


class PendingCommand:
    """One SUBSCRIBE or PSUBSCRIBE waiting for its confirmations."""

    __slots__ = ("_done", "_missing", "error", "kind", "names")

    def __init__(self, kind: str, names: Iterable[str]) -> None:
        self.kind = kind
        self.names = list(names)
        self._missing = {name.encode() for name in self.names}
        self._done = anyio.Event()
        self.error: RedisEventsError | None = None

    async def wait(self) -> None:
        """Wait until every name is confirmed or the command failed."""
        await self._done.wait()

    def confirm(self, name: bytes) -> bool:
        """Count one confirmation; return True once all names are confirmed."""
        self._missing.discard(name)
        if self._missing:
            return False

        self._done.set()
        return True

    def fail(self, error: RedisEventsError) -> None:
        """End the wait with ``error``."""
        self.error = error
        self._done.set()


class PendingCommands:
    """The unconfirmed commands of one connection, oldest first."""

    def __init__(self) -> None:
        self._commands: deque[PendingCommand] = deque()

    def add(self, kind: str, names: Iterable[str]) -> PendingCommand:
        """Record a command about to be sent."""
        command = PendingCommand(kind, names)
        self._commands.append(command)
        return command

    def confirm(self, kind: str, name: bytes) -> None:
        """Apply a confirmation to the oldest command of ``kind`` naming it."""
        for command in self._commands:
            if command.kind == kind and name in command._missing:
                if command.confirm(name):
                    self._commands.remove(command)

                return

    def fail_first(self) -> PendingCommand | None:
        """Remove and return the oldest command: an error reply is its answer."""
        return self._commands.popleft() if self._commands else None

    def fail_all(self, error: RedisEventsError) -> None:
        """Fail every command, for a connection that is gone."""
        while self._commands:
            self._commands.popleft().fail(error)
