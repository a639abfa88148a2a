"""One run of a subscriber on the pub/sub transport.

The streams counterpart is ``_stream_session``; both fit ``_session.Session``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from redis_events._cluster_pubsub import ShardedPubSubReader
from redis_events._connection import create_client
from redis_events._pubsub import PubSubReader
from redis_events._session import default_consumer_name
from redis_events._topology import is_cluster

if TYPE_CHECKING:
    from collections.abc import Callable

    import anyio
    from anyio.abc import TaskStatus

    from redis_events._routing import Router
    from redis_events.config import Settings
    from redis_events.dispatcher import Dispatcher, Stats

__all__ = ["PubSubSession"]


class PubSubSession:
    """Client and reader of one ``run()`` on pub/sub."""

    def __init__(
        self,
        settings: Settings,
        router: Router,
        stats: Stats,
        *,
        reading_stopped: Callable[[], None],
    ) -> None:
        self._router = router
        self._reading_stopped = reading_stopped
        self.consumer_name = settings.consumer or default_consumer_name()
        self.client = create_client(settings, role="sub")
        # On a cluster, topics are shard channels (SSUBSCRIBE).
        reader_class = ShardedPubSubReader if is_cluster(self.client) else PubSubReader
        self.reader: PubSubReader = reader_class(self.client, settings, stats)

    @property
    def connected(self) -> bool:
        """Tell whether the reader holds a live, subscribed connection."""
        return self.reader.connected

    @property
    def on_outcome(self) -> None:
        """Nothing: pub/sub has no delivery to acknowledge."""
        return None

    def log_fields(self) -> dict[str, str]:
        """Nothing: pub/sub has no group, and the topic is the event's own."""
        return {}

    async def connect(self) -> None:
        """Subscribe to the router's channels and patterns, and connect.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: The user may not subscribe.
        """
        await self.reader.subscribe(
            channels=list(self._router.channels),
            patterns=list(self._router.patterns),
        )
        await self.reader.connect()

    async def serve(
        self,
        dispatcher: Dispatcher,
        read_scope: anyio.CancelScope,
        task_status: TaskStatus[None],
    ) -> None:
        """Read and dispatch until ``read_scope`` is cancelled, then drain.

        ``reading_stopped`` is called once reading has stopped, before the
        dispatcher drains.
        """
        reader = self.reader
        async with dispatcher.running():
            try:
                with read_scope:
                    task_status.started()
                    await reader.run(
                        functools.partial(
                            self._router.route, reader=reader, dispatcher=dispatcher
                        )
                    )
            finally:
                self._reading_stopped()

    async def aclose(self) -> None:
        """Close the reader, then the client."""
        await self.reader.aclose()
        await self.client.aclose()
