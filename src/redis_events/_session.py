"""What a subscriber's run needs of its transport, whichever it is.

``_pubsub_session.PubSubSession`` and ``_stream_session.StreamSession`` both
fit ``Session``: the subscriber opens, serves and closes either one the same
way, and names its instance with ``default_consumer_name`` on both.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    import anyio
    from anyio.abc import TaskStatus

    from redis_events.dispatcher import Delivery, Dispatcher, Outcome

__all__ = ["Session", "default_consumer_name"]


def default_consumer_name() -> str:
    """Return ``<host>-<pid>-<random>``: unique per running instance."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Session(Protocol):
    """The clients and reader of one ``run()``: connect, serve, close."""

    consumer_name: str

    @property
    def connected(self) -> bool:
        """Tell whether the session reads from Redis without failing."""

    @property
    def on_outcome(self) -> Callable[[Delivery, Outcome], None] | None:
        """What the dispatcher reports each outcome to, if anything."""

    def log_fields(self) -> dict[str, str]:
        """What every handler's log line of this session carries, for ``extra=``."""

    async def connect(self) -> None:
        """Reach Redis and set up what reading needs.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: Redis refused the setup.
        """

    async def serve(
        self,
        dispatcher: Dispatcher,
        read_scope: anyio.CancelScope,
        task_status: TaskStatus[None],
    ) -> None:
        """Read and dispatch until ``read_scope`` is cancelled, then drain."""

    async def aclose(self) -> None:
        """Close the session's clients."""
