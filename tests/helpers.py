"""Polling helpers and a plain redis-py subscriber shared by the tests."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Self

import anyio
import redis

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 10.0,  # noqa: ASYNC109  # a polling limit, not a cancel scope
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds.

    Raises:
        AssertionError: The condition did not hold within ``timeout``.
    """
    deadline = anyio.current_time() + timeout
    while not predicate():
        if anyio.current_time() >= deadline:
            msg = f"condition not met within {timeout} s"
            raise AssertionError(msg)

        await anyio.sleep(interval)


def poll_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Blocking form of ``wait_until`` for synchronous tests.

    Raises:
        AssertionError: The condition did not hold within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            msg = f"condition not met within {timeout} s"
            raise AssertionError(msg)

        time.sleep(interval)


class RawSubscriber:
    """A plain redis-py subscriber (``R``) that records messages in a thread.

    Entering the block subscribes and waits for Redis to confirm, so every
    message published afterwards is recorded. ``flush()`` sends a PING on the
    same connection and waits for its reply: Redis answers it only after
    every message it queued for this connection before, so the recorded
    count is then complete up to that moment.
    """

    def __init__(self, client: redis.Redis, *channels: str) -> None:
        # redis-py turns the reply to a subscribed PING into a "pong" message
        # only when replies are bytes, so this connection does not decode.
        pool = client.connection_pool
        options = pool.connection_kwargs | {"decode_responses": False}
        self._client = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=pool.connection_class, **options
            )
        )
        self._pubsub = self._client.pubsub()
        self._channels = channels
        self._lock = threading.Lock()
        self._messages: list[tuple[str, str]] = []
        self._ping_requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pongs: set[str] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Self:
        self._pubsub.subscribe(*self._channels)
        confirmed = 0
        deadline = time.monotonic() + 10
        while confirmed < len(self._channels):
            assert time.monotonic() < deadline, "SUBSCRIBE not confirmed in 10 s"
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "subscribe":
                confirmed += 1

        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self._pubsub.close()
        self._client.close()

    @property
    def messages(self) -> list[tuple[str, str]]:
        """The ``(channel, data)`` pairs recorded so far, in arrival order."""
        self._raise_error()
        with self._lock:
            return list(self._messages)

    def count(self, channel: str | None = None) -> int:
        """Return how many messages were recorded (on ``channel``, if given)."""
        return sum(1 for ch, _ in self.messages if channel in (None, ch))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every message Redis sent before now is recorded."""
        token = self._request_ping()
        poll_until(lambda: self._has_pong(token), timeout=timeout, interval=0.01)

    async def aflush(self) -> None:
        """``flush()`` for async tests: the event loop keeps running."""
        token = self._request_ping()
        await wait_until(lambda: self._has_pong(token), interval=0.01)

    def _request_ping(self) -> str:
        token = uuid.uuid4().hex
        self._ping_requests.put(token)
        return token

    def _has_pong(self, token: str) -> bool:
        self._raise_error()
        with self._lock:
            return token in self._pongs

    def _raise_error(self) -> None:
        if self._error is not None:
            msg = f"the raw subscriber failed: {self._error!r}"
            raise AssertionError(msg) from self._error

    def _read(self) -> None:
        # Only this thread touches the connection once it runs, so the PINGs
        # asked for by flush() are sent from here.
        try:
            while not self._stopping.is_set():
                while not self._ping_requests.empty():
                    self._pubsub.ping(self._ping_requests.get())

                message: dict[str, Any] | None = self._pubsub.get_message(timeout=0.05)
                if message is None:
                    continue

                kind = message["type"]
                channel = _text(message["channel"])
                data = _text(message["data"])
                with self._lock:
                    if kind == "message":
                        self._messages.append((channel, data))
                    elif kind == "pong":
                        self._pongs.add(data)
        except BaseException as exc:  # reported by the next call
            self._error = exc


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")

    return str(value)


def client_names(client: redis.Redis, prefix: str) -> list[str]:
    """Return the names of the server's connections that start with ``prefix``."""
    entries: list[dict[str, str]] = client.client_list()
    return [e["name"] for e in entries if e.get("name", "").startswith(prefix)]


def pubsub_channels(client: redis.Redis, pattern: str) -> list[str]:
    """Return the channels with at least one subscriber matching ``pattern``."""
    channels: list[str] = client.pubsub_channels(pattern)  # type: ignore[assignment]  # sync client
    return channels


def command_calls(client: redis.Redis, command: str) -> int:
    """Return how often the server ran ``command`` (INFO commandstats)."""
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return stats.get(f"cmdstat_{command.lower()}", {}).get("calls", 0)
