"""Run handlers under a concurrency limit, with timeouts and a graceful drain.

The dispatcher is transport-agnostic: a reader hands it ``(handler,
delivery)`` jobs with ``submit``, which waits for a free slot. Backpressure is
the limit itself: while every slot is busy, ``submit`` does not return, so the
reader does not read.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from redis_events.codec import DecodedEvent

__all__ = [
    "Delivery",
    "Dispatcher",
    "Handler",
    "Outcome",
    "Stats",
    "current_delivery",
]

logger = logging.getLogger(__name__)

Handler: TypeAlias = Callable[[str, Any], Awaitable[object] | object]

_current: contextvars.ContextVar[Delivery] = contextvars.ContextVar(
    "redis_events_delivery"
)


@dataclass(slots=True, frozen=True)
class Delivery:
    """One event as it reached one handler.

    Attributes:
        topic: The channel (or stream topic) the event was published to.
        event: The validated event, or a ``dict`` for topics without a model.
        pattern: The glob pattern that matched, or ``None`` for a direct
            channel subscription.
        delivery_id: The transport's id for this delivery, when it has one.
        delivery_count: How many times the transport has delivered it.
    """

    topic: str
    event: DecodedEvent
    pattern: str | None = None
    delivery_id: str | None = None
    delivery_count: int = 1

    @property
    def event_id(self) -> str | None:
        """The event's ``event_id``, if it has one."""
        if isinstance(self.event, dict):
            value = self.event.get("event_id")
            return value if isinstance(value, str) else None

        return getattr(self.event, "event_id", None)


def current_delivery() -> Delivery:
    """Return the delivery the calling handler is working on.

    Raises:
        LookupError: Called outside a handler run by a dispatcher.
    """
    return _current.get()


class Outcome(enum.Enum):
    """How one handler call ended."""

    HANDLED = "handled"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Stats:
    """Counters shared by a subscriber's transport and its dispatcher."""

    events_received: int = 0
    events_handled: int = 0
    handler_errors: int = 0
    handler_timeouts: int = 0
    handlers_cancelled: int = 0
    invalid_events: int = 0
    unrouted_events: int = 0
    reconnects: int = 0
    reconnect_attempts: int = 0
    in_flight: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        counters = {
            name: getattr(self, name) for name in self.__slots__ if name != "extra"
        }
        return counters | self.extra


class Dispatcher:
    """Run handler calls in an anyio task group, at most ``max_concurrency``.

    Note:
        When the block of ``running()`` ends, or the task running it is
        cancelled, calls in flight are not cancelled at once: each gets up to
        ``shutdown_timeout`` seconds to finish, then is cancelled and counted
        in ``handlers_cancelled``. A plain (non-async) handler runs in a worker
        thread and cannot be interrupted by a timeout or a shutdown.
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        handler_timeout: float | None,
        shutdown_timeout: float,
        stats: Stats,
        on_outcome: Callable[[Delivery, Outcome], None] | None = None,
    ) -> None:
        self._slots = anyio.Semaphore(max_concurrency)
        self._handler_timeout = handler_timeout or math.inf
        self._shutdown_timeout = shutdown_timeout
        self._stats = stats
        self._on_outcome = on_outcome
        self._task_group: TaskGroup | None = None
        self._scopes: set[anyio.CancelScope] = set()
        self._drain_deadline: float | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Accept jobs inside the block; drain them when it ends."""
        self._drain_deadline = None
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            try:
                yield
            finally:
                self._task_group = None
                self.drain(self._shutdown_timeout)

    def drain(self, timeout: float) -> None:
        """Give every call in flight at most ``timeout`` more seconds."""
        deadline = anyio.current_time() + timeout
        if self._drain_deadline is None or deadline < self._drain_deadline:
            self._drain_deadline = deadline

        for scope in self._scopes:
            scope.deadline = min(scope.deadline, deadline)

    async def submit(self, handler: Handler, delivery: Delivery) -> None:
        """Start ``handler`` on ``delivery`` as soon as a slot is free.

        Raises:
            RuntimeError: Called outside ``running()``.
        """
        await self._slots.acquire()
        task_group = self._task_group
        if task_group is None:
            self._slots.release()
            msg = "the dispatcher is not running"
            raise RuntimeError(msg)

        self._stats.in_flight += 1
        task_group.start_soon(self._run, handler, delivery)

    async def _run(self, handler: Handler, delivery: Delivery) -> None:
        outcome = Outcome.CANCELLED
        # Shielded so that stopping the reader, or cancelling the task that
        # owns the task group, does not cut a handler short; the deadline set
        # by drain() bounds the wait instead.
        scope = anyio.CancelScope(shield=True)
        if self._drain_deadline is not None:
            scope.deadline = self._drain_deadline

        self._scopes.add(scope)
        try:
            with scope:
                outcome = await self._call(handler, delivery)

            if scope.cancelled_caught:
                self._stats.handlers_cancelled += 1
                logger.warning(
                    "Handler %s was cancelled at shutdown on topic %s (event %s)",
                    _name(handler),
                    delivery.topic,
                    delivery.event_id,
                    extra={"topic": delivery.topic, "event_id": delivery.event_id},
                )
        finally:
            self._scopes.discard(scope)
            self._stats.in_flight -= 1
            self._slots.release()
            if self._on_outcome is not None:
                self._on_outcome(delivery, outcome)

    async def _call(self, handler: Handler, delivery: Delivery) -> Outcome:
        _current.set(delivery)
        extra = {"topic": delivery.topic, "event_id": delivery.event_id}
        with anyio.move_on_after(self._handler_timeout) as timeout_scope:
            try:
                if _is_async(handler):
                    await handler(delivery.topic, delivery.event)  # type: ignore[misc]
                else:
                    await anyio.to_thread.run_sync(
                        handler, delivery.topic, delivery.event
                    )
            except Exception:
                self._stats.handler_errors += 1
                logger.exception(
                    "Handler %s failed on topic %s (event %s)",
                    _name(handler),
                    delivery.topic,
                    delivery.event_id,
                    extra=extra,
                )
                return Outcome.FAILED

        if timeout_scope.cancelled_caught:
            self._stats.handler_timeouts += 1
            logger.error(
                "Handler %s timed out after %.1f s on topic %s (event %s)",
                _name(handler),
                self._handler_timeout,
                delivery.topic,
                delivery.event_id,
                extra=extra,
            )
            return Outcome.TIMED_OUT

        self._stats.events_handled += 1
        return Outcome.HANDLED


def _is_async(handler: Handler) -> bool:
    target: object = handler
    while isinstance(target, functools.partial):
        target = target.func

    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    )


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
