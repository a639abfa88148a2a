"""Run handlers under a concurrency limit, with timeouts and a graceful drain.

The dispatcher is transport-agnostic: a reader hands it ``(handler,
delivery)`` jobs with ``submit``, which waits for an idle worker. Backpressure
is the limit itself: while every worker is busy, ``submit`` does not return,
so the reader does not read.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import inspect
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

if TYPE_CHECKING:
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
_Job: TypeAlias = tuple[Handler, "Delivery"]

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


class _Mailbox:
    """Where one idle worker waits for its next job (``None`` = stop)."""

    __slots__ = ("_arrived", "_job")

    def __init__(self) -> None:
        self._arrived = anyio.Event()
        self._job: _Job | None = None

    def deliver(self, job: _Job) -> None:
        self._job = job
        self._arrived.set()

    def close(self) -> None:
        self._arrived.set()

    async def receive(self) -> _Job | None:
        await self._arrived.wait()
        return self._job


class Dispatcher:
    """Run handler calls on ``max_concurrency`` worker tasks.

    The workers are started once, when ``running()`` is entered, and take
    jobs from ``submit`` one at a time: no task is created per event, and a
    job is handed over only to an idle worker, so nothing queues up in
    memory.

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
        self._workers = max_concurrency
        self._handler_timeout = handler_timeout or math.inf
        self._shutdown_timeout = shutdown_timeout
        self._stats = stats
        self._on_outcome = on_outcome
        self._running = False
        self._idle: deque[_Mailbox] = deque()
        self._worker_freed = anyio.Event()
        self._scopes: set[anyio.CancelScope] = set()
        self._drain_deadline = math.inf
        self._async_handlers: dict[Handler, bool] = {}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Accept jobs inside the block; drain them when it ends."""
        self._drain_deadline = math.inf
        self._running = True
        async with anyio.create_task_group() as task_group:
            for _ in range(self._workers):
                task_group.start_soon(self._work)

            try:
                yield
            finally:
                self._running = False
                self._worker_freed.set()
                while self._idle:
                    self._idle.popleft().close()

                self.drain(self._shutdown_timeout)

    def drain(self, timeout: float) -> None:
        """Give every call in flight at most ``timeout`` more seconds."""
        self._drain_deadline = min(self._drain_deadline, anyio.current_time() + timeout)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._drain_deadline)

    async def submit(self, handler: Handler, delivery: Delivery) -> None:
        """Hand ``handler`` and ``delivery`` to the next idle worker.

        Waits while every worker is busy: that wait is the backpressure.

        Raises:
            RuntimeError: Called outside ``running()``.
        """
        while not self._idle:
            if not self._running:
                msg = "the dispatcher is not running"
                raise RuntimeError(msg)

            self._worker_freed = anyio.Event()
            await self._worker_freed.wait()

        if not self._running:
            msg = "the dispatcher is not running"
            raise RuntimeError(msg)

        self._idle.popleft().deliver((handler, delivery))

    async def _work(self) -> None:
        # Shielded so that stopping the reader, or cancelling the task that
        # owns the task group, does not cut a handler short; the deadline set
        # by drain() bounds the wait instead.
        job: _Job | None = None
        mailbox = _Mailbox()
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = self._drain_deadline
            self._scopes.add(scope)
            while self._running:
                mailbox = _Mailbox()
                self._idle.append(mailbox)
                self._worker_freed.set()
                job = await mailbox.receive()
                if job is None:
                    break

                self._stats.in_flight += 1
                outcome = await self._call(*job)
                self._stats.in_flight -= 1
                self._report(job[1], outcome)
                job = None

        self._scopes.discard(scope)
        if mailbox in self._idle:
            # Cancelled while idle: no job may be handed to this worker now.
            self._idle.remove(mailbox)

        if job is not None:
            self._stats.in_flight -= 1
            self._stats.handlers_cancelled += 1
            handler, delivery = job
            logger.warning(
                "Handler %s was cancelled at shutdown on topic %s (event %s)",
                _name(handler),
                delivery.topic,
                delivery.event_id,
                extra={"topic": delivery.topic, "event_id": delivery.event_id},
            )
            self._report(delivery, Outcome.CANCELLED)

    def _report(self, delivery: Delivery, outcome: Outcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(delivery, outcome)

    async def _call(self, handler: Handler, delivery: Delivery) -> Outcome:
        _current.set(delivery)
        try:
            is_async = self._async_handlers[handler]
        except KeyError:
            is_async = self._async_handlers[handler] = _is_async(handler)
        except TypeError:  # an unhashable callable object
            is_async = _is_async(handler)

        with anyio.move_on_after(self._handler_timeout) as timeout_scope:
            try:
                if is_async:
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
                    extra={"topic": delivery.topic, "event_id": delivery.event_id},
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
                extra={"topic": delivery.topic, "event_id": delivery.event_id},
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
