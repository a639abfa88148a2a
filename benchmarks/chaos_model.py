"""The chaos run's plan, names, tally and shared helpers (see chaos.py)."""

from __future__ import annotations

import re
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

BATCH = 100
GROUP = "chaos"
BOOK_CLIENT = "chaos-book"
CONSUMERS = ("chaos-c1", "chaos-c2")
# Short claim settings, so that what a killed consumer held comes back fast.
CONSUMER_SETTINGS = {
    "REDIS_EVENTS_TRANSPORT": "stream",
    "REDIS_EVENTS_GROUP": GROUP,
    "REDIS_EVENTS_START_FROM": "all",
    "REDIS_EVENTS_CLAIM_MIN_IDLE": "2",
    "REDIS_EVENTS_CLAIM_INTERVAL": "0.5",
    "REDIS_EVENTS_RETRY_BACKOFF": "0.2",
    "REDIS_EVENTS_RECONNECT_BACKOFF_CAP": "1",
    "REDIS_EVENTS_STREAM_MAXLEN": "0",
}
RECORD_PATIENCE = 30.0
STOP_TIMEOUT = 30.0
SCRIPT = Path(__file__).with_name("chaos.py").resolve()
# Connections cut right after an XAUTOCLAIM, per consumer kill.
CLAIM_CUTS = 8
# +<time> [<db> <addr>] "<command>" ...: a line of MONITOR's output.
_MONITOR_LINE = re.compile(rb'\+[\d.]+ \[\d+ (?P<addr>[^\]]+)\] "(?P<command>[^"]+)"')
# How Redis is stopped for each restart, in turn.
RESTARTS = ("SIGTERM", "SHUTDOWN", "SIGKILL")


@dataclass(frozen=True)
class Plan:
    """How much work and how many faults, and the time limits."""

    events: int
    seed: int
    restarts: int
    min_kills: int
    gap: tuple[float, float]
    rate: float
    window: int
    fail_every: int
    time_limit: float
    drain_limit: float


@dataclass(frozen=True)
class Names:
    """This run's topic, keys and client-name prefix."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def topic(self) -> str:
        return f"chaos-{self.run}"

    @property
    def handled(self) -> str:
        return f"chaos:{self.run}:handled"

    @property
    def client_name(self) -> str:
        return f"redis-events-chaos-{self.run}"


@dataclass
class Tally:
    """What happened: published events and injected faults."""

    published: set[str] = field(default_factory=set)
    entry_ids: set[str] = field(default_factory=set)
    batch_retries: int = 0
    publisher: dict[str, int] = field(default_factory=dict)
    publisher_done: bool = False
    kills: int = 0
    client_kills: int = 0
    connections_killed: int = 0
    claim_cuts: int = 0
    restarts: int = 0
    restarted_by: list[str] = field(default_factory=list)


async def answers(client: Redis) -> bool:
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False


async def poll(check: Callable[[], Awaitable[bool]], interval: float) -> None:
    """Wait until ``check()`` is true, asking every ``interval`` seconds."""
    # Server state, not a local change: there is no event to wait on.
    while not await check():  # noqa: ASYNC110  # polls Redis, see above
        await anyio.sleep(interval)


async def may_publish(book: Redis, names: Names, tally: Tally, window: int) -> bool:
    # Unknown during a restart: then the publish goes ahead into the outage.
    handled = await count_handled(book, names)
    return handled is None or len(tally.published) - handled <= window


async def count_handled(book: Redis, names: Names) -> int | None:
    try:
        return int(await book.hlen(names.handled))
    except (RedisError, OSError):
        return None


def fails(event_id: str, every: int) -> bool:
    """Tell whether the handler fails ``event_id`` at its first delivery."""
    return every > 0 and zlib.crc32(event_id.encode()) % every == 0
