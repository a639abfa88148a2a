"""Run handlers under a concurrency limit, with timeouts and a graceful drain.

The dispatcher is transport-agnostic: a reader hands it ``(handler,
delivery)`` jobs with ``submit``. At most ``max_concurrency`` jobs are
accepted at a time; ``submit`` waits while that many are, so the reader stops
reading. That wait is the whole of the backpressure: nothing queues up
elsewhere.

Jobs given the same ordering key run one at a time, in submit order; jobs
with different keys, or none, run concurrently.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

if TYPE_CHECKING:
    from redis_events.codec import DecodedEvent
    from redis_events.observers import EventObserver

__all__ = [
    "Delivery",
    "Dispatcher",
    "Handler",
    "Outcome",
    "Stats",
    "current_delivery",
]

logger = logging.getLogger(__name__)

# How many handlers the dispatcher remembers to be coroutine functions.
_CACHED_HANDLERS = 256

Handler: TypeAlias = Callable[[str, Any], Awaitable[object] | object]
_Job: TypeAlias = tuple[Handler, "Delivery", Hashable | None]

_current: contextvars.ContextVar[Delivery] = contextvars.ContextVar(
    "redis_events_delivery"
)
_current_dispatcher: contextvars.ContextVar[Dispatcher] = contextvars.ContextVar(
    "redis_events_dispatcher"
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
        trace_context: The W3C trace context the publisher sent with it
            (``traceparent`` and ``tracestate``), when it sent one.
    """

    topic: str
    event: DecodedEvent
    pattern: str | None = None
    delivery_id: str | None = None
    delivery_count: int = 1
    trace_context: dict[str, str] | None = None

    @property
    def event_id(self) -> str | None:
        """The event's ``event_id``, if it has one."""
        if isinstance(self.event, dict):
            value = self.event.get("event_id")
            return value if isinstance(value, str) else None

        return getattr(self.event, "event_id", None)

    @property
    def event_type(self) -> str | None:
        """The event's ``event_type``, if it has one."""
        if isinstance(self.event, dict):
            value = self.event.get("event_type")
            return value if isinstance(value, str) else None

        value = getattr(self.event, "event_type", None)
        return value if isinstance(value, str) else None

    def log_fields(self) -> dict[str, str]:
        """Return the topic, event id and event type known, for ``extra=``."""
        fields = {"topic": self.topic}
        if self.event_id is not None:
            fields["event_id"] = self.event_id

        if self.event_type is not None:
            fields["event_type"] = self.event_type

        return fields


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
    NOT_STARTED = "not_started"


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
    # Told of every event by the transport and the dispatcher (metrics,
    # tracing); not a counter.
    observer: EventObserver | None = field(default=None, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to an extra counter (created at 0)."""
        self.extra[name] = self.extra.get(name, 0) + n

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        counters = {
            name: getattr(self, name)
            for name in self.__slots__
            if name not in {"extra", "observer"}
        }
        return counters | self.extra


class _Worker:
    """One worker task's state, as the dispatcher and the timeout watch see it.

    ``call_scope`` spans many calls: it is replaced only after a timeout has
    cancelled it, so that a call costs no cancel scope of its own.
    """

    __slots__ = ("call_scope", "deadline", "job", "observed", "wake")

    def __init__(self) -> None:
        self.call_scope = anyio.CancelScope()
        self.deadline = math.inf
        self.job: _Job | None = None
        self.wake = anyio.Event()
        # The observer told of the call in flight, and its token.
        self.observed: tuple[EventObserver, object] | None = None


class Dispatcher:
    """Run handler calls on ``max_concurrency`` worker tasks.

    The workers are started once, when ``running()`` is entered. Accepted
    jobs wait in one queue; a worker takes the next one as soon as it is
    free, so a burst of quick handlers is run by one worker without a task
    switch per event, and an idle worker is woken only when the queue holds
    more than the workers already awake can take.

    Note:
        When the block of ``running()`` ends, or the task running it is
        cancelled, calls in flight are not cancelled at once: each gets up to
        ``shutdown_timeout`` seconds to finish, then is cancelled and counted
        in ``handlers_cancelled``. Jobs waiting behind a busy ordering key
        are then dropped unstarted (``Outcome.NOT_STARTED``), logged and
        counted in ``handlers_cancelled`` too. A plain
        (non-async) handler runs in a worker thread and cannot be interrupted
        by a timeout or a shutdown; one that runs past its timeout is
        logged, and counted as handled when it returns.
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
        self._limit = max_concurrency
        self._handler_timeout = handler_timeout or math.inf
        self._shutdown_timeout = shutdown_timeout
        self._stats = stats
        self._on_outcome = on_outcome
        self._running = False
        self._accepted = 0
        self._ready: deque[_Job] = deque()
        self._idle: list[_Worker] = []
        self._waking = 0
        self._workers: set[_Worker] = set()
        self._live_workers = 0
        self._freed = anyio.Event()
        self._waiting_by_key: dict[Hashable, deque[_Job]] = {}
        self._scopes: set[anyio.CancelScope] = set()
        self._watch_scope = anyio.CancelScope()
        self._drain_deadline = math.inf
        self._async_handlers: dict[Handler, bool] = {}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Accept jobs inside the block; drain them when it ends."""
        self._drain_deadline = math.inf
        self._running = True
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as task_group:
                self._watch_scope = anyio.CancelScope(shield=True)
                self._live_workers = self._limit
                if self._handler_timeout != math.inf:
                    task_group.start_soon(self._watch_timeouts)

                for _ in range(self._limit):
                    task_group.start_soon(self._work)

                try:
                    yield
                except Exception as exc:
                    # Raised after the task group, so that it is not wrapped
                    # in an exception group.
                    error = exc
                finally:
                    self._running = False
                    self._freed.set()
                    while self._idle:
                        self._wake_one()

                    self.drain(self._shutdown_timeout)
        except BaseExceptionGroup as group:
            # A worker ended by what its handler raised and no handler may
            # swallow (SystemExit, KeyboardInterrupt): raised as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None

            raise
        finally:
            self._drop_left()

        if error is not None:
            raise error

    def _drop_left(self) -> None:
        # Left over when workers were cancelled while idle (a drain deadline
        # that passed), or ended by an exception: never started.
        left = list(self._ready)
        self._ready.clear()
        for jobs in self._waiting_by_key.values():
            left.extend(jobs)

        self._waiting_by_key.clear()
        for handler, delivery, _ in left:
            self._accepted -= 1
            self.not_started(handler, delivery)

    def drain(self, timeout: float) -> None:
        """Give every call in flight at most ``timeout`` more seconds."""
        self._drain_deadline = min(self._drain_deadline, anyio.current_time() + timeout)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._drain_deadline)

    async def room(self) -> int:
        """Wait until a job can be accepted; return how many can."""
        while self._accepted >= self._limit:
            await self._wait_freed()

        return self._limit - self._accepted

    def owns_current_task(self) -> bool:
        """Tell whether the calling code runs inside one of this one's handlers."""
        return _current_dispatcher.get(None) is self

    async def submit(
        self, handler: Handler, delivery: Delivery, *, key: Hashable | None = None
    ) -> None:
        """Accept a job once fewer than ``max_concurrency`` are accepted.

        With a ``key``, the job runs after every earlier job with the same
        key has finished. Jobs start in the order they were accepted.

        Note:
            A job refused here (the dispatcher stopped, or the caller was
            cancelled while it waited) counts as ``not_started()``.

        Raises:
            RuntimeError: Called outside ``running()``.
        """
        try:
            while self._accepted >= self._limit:
                await self._wait_freed()

            self._check_running()
        except BaseException:
            self.not_started(handler, delivery)
            raise

        self._accept(handler, delivery, key)

    def submit_nowait(
        self, handler: Handler, delivery: Delivery, *, key: Hashable | None = None
    ) -> bool:
        """Accept a job like ``submit`` if that needs no wait; tell whether it did.

        A reader tries this first and awaits ``submit`` only when it returns
        False, which spares it a coroutine per job while there is room.

        Raises:
            RuntimeError: Called outside ``running()``.
        """
        if self._accepted >= self._limit:
            return False

        self._accept(handler, delivery, key)
        return True

    def _accept(
        self, handler: Handler, delivery: Delivery, key: Hashable | None
    ) -> None:
        if not self._running:
            self._check_running()

        self._accepted += 1
        job = (handler, delivery, key)
        if key is not None:
            waiting = self._waiting_by_key.get(key)
            if waiting is not None:
                waiting.append(job)
                return

            self._waiting_by_key[key] = deque()

        # Fewer jobs are accepted than there are workers, so a queued job
        # always has a worker free for it; one awake worker wakes the next.
        self._ready.append(job)
        if not self._waking and self._idle:
            self._wake_one()

    async def _wait_freed(self) -> None:
        self._check_running()
        # One event for every waiter (the reader may wait in room() and in
        # submit() from two tasks); renewed only once it has fired.
        if self._freed.is_set():
            self._freed = anyio.Event()

        await self._freed.wait()

    def _check_running(self) -> None:
        if not self._running:
            msg = "the dispatcher is not running"
            raise RuntimeError(msg)

    def _wake_one(self) -> None:
        self._waking += 1
        self._idle.pop().wake.set()

    async def _work(self) -> None:
        # Shielded so that stopping the reader, or cancelling the task that
        # owns the task group, does not cut a handler short; the deadline set
        # by drain() bounds the wait instead.
        _current_dispatcher.set(self)
        worker = _Worker()
        self._workers.add(worker)
        scope = anyio.CancelScope(shield=True)
        scope.deadline = self._drain_deadline
        self._scopes.add(scope)
        try:
            with scope:
                while worker.job is not None or self._running or self._ready:
                    with worker.call_scope:
                        await self._serve(worker, scope)

                    if worker.call_scope.cancelled_caught:
                        self._timed_out(worker)

                    worker.call_scope = anyio.CancelScope()
        finally:
            # Also when an exception ends the worker (a handler's SystemExit):
            # the watch task must not outlive the last worker, or the task
            # group, shielded, waits for it forever.
            self._left(worker, scope)

    def _left(self, worker: _Worker, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)
        self._workers.discard(worker)
        self._live_workers -= 1
        if not self._live_workers:
            self._watch_scope.cancel()

        if worker in self._idle:
            # Cancelled while idle: this worker must not be woken now.
            self._idle.remove(worker)

        if worker.job is not None:
            self._tell_observer(worker, worker.job[1], Outcome.CANCELLED)
            self._cancelled(worker.job)

    async def _serve(self, worker: _Worker, worker_scope: anyio.CancelScope) -> None:
        """Run jobs until stopping, or until a timeout cancels ``call_scope``."""
        while True:
            job = worker.job
            if job is None:
                if not self._ready:
                    if not self._running:
                        return

                    await self._sleep(worker)
                    continue

                job = worker.job = self._ready.popleft()
                if self._ready and not self._waking and self._idle:
                    self._wake_one()

            self._stats.in_flight += 1
            observer = self._stats.observer
            if observer is not None:
                worker.observed = (observer, observer.started(job[1]))

            outcome = await self._call(job[0], job[1], worker, worker_scope)
            self._finish(worker, outcome)
            if worker.call_scope.cancel_called:
                # A timeout that came while a plain function ran in its
                # thread: the call was not cut, but the scope is spent.
                self._overran(job)
                return

    async def _sleep(self, worker: _Worker) -> None:
        worker.wake = wake = anyio.Event()
        self._idle.append(worker)
        try:
            await wake.wait()
        finally:
            if wake.is_set():
                self._waking -= 1

    def _finish(self, worker: _Worker, outcome: Outcome) -> None:
        job = worker.job
        assert job is not None, "a job is in flight"
        self._stats.in_flight -= 1
        self._accepted -= 1
        if self._accepted == self._limit - 1:
            # Only a full dispatcher has waiters: wake them at the first slot.
            self._freed.set()

        # The job is done with before anyone is told: should a callback
        # raise, the worker's exit must not count it a second time, and the
        # transport (which acknowledges) hears of it whatever an observer does.
        key = job[2]
        worker.job = None if key is None else self._next_for_key(key)
        try:
            self._report(job[1], outcome)
        finally:
            self._tell_observer(worker, job[1], outcome)

    @staticmethod
    def _tell_observer(worker: _Worker, delivery: Delivery, outcome: Outcome) -> None:
        # In the worker task, where started() was called: a tracing observer
        # ends its span in the context it opened it in.
        if worker.observed is not None:
            observer, token = worker.observed
            worker.observed = None
            observer.finished(delivery, outcome, token)

    def _timed_out(self, worker: _Worker) -> None:
        job = worker.job
        assert job is not None, "only a call is timed"
        handler, delivery, _ = job
        self._stats.handler_timeouts += 1
        logger.error(
            "Handler %s timed out after %.1f s on topic %s (event %s)",
            _name(handler),
            self._handler_timeout,
            delivery.topic,
            delivery.event_id,
            extra=delivery.log_fields(),
        )
        self._finish(worker, Outcome.TIMED_OUT)

    def _overran(self, job: _Job) -> None:
        handler, delivery, _ = job
        logger.warning(
            "Handler %s ran past its %.1f s timeout on topic %s (event %s): it "
            "could not be cut short (a plain function, or a coroutine that "
            "caught the cancellation)",
            _name(handler),
            self._handler_timeout,
            delivery.topic,
            delivery.event_id,
            extra={"topic": delivery.topic, "event_id": delivery.event_id},
        )

    async def _watch_timeouts(self) -> None:
        """Cancel calls that are past their deadline, until the workers end.

        One task for all workers: a call only stores its deadline. Calls
        start in time order and share one timeout, so no call that starts
        while this sleeps can be due before it wakes.
        """
        with self._watch_scope:
            while True:
                now = time.monotonic()
                wake_at = now + self._handler_timeout
                for worker in self._workers:
                    if worker.deadline <= now:
                        worker.deadline = math.inf
                        worker.call_scope.cancel()
                    else:
                        wake_at = min(wake_at, worker.deadline)

                await anyio.sleep(wake_at - now)

    def _next_for_key(self, key: Hashable | None) -> _Job | None:
        if key is None:
            return None

        waiting = self._waiting_by_key[key]
        if waiting:
            return waiting.popleft()

        del self._waiting_by_key[key]
        return None

    def _cancelled(self, job: _Job) -> None:
        handler, delivery, _ = job
        self._stats.in_flight -= 1
        self._accepted -= 1
        self._stats.handlers_cancelled += 1
        logger.warning(
            "Handler %s was cancelled at shutdown on topic %s (event %s)",
            _name(handler),
            delivery.topic,
            delivery.event_id,
            extra=delivery.log_fields(),
        )
        self._report(delivery, Outcome.CANCELLED)

    def not_started(self, handler: Handler, delivery: Delivery) -> None:
        """Count, log and report a call dropped at shutdown before it started.

        It is counted in ``handlers_cancelled``, with the calls cut short: on
        pub/sub the event is lost, and every event received must show up in
        some counter.
        """
        self._stats.handlers_cancelled += 1
        logger.warning(
            "Handler %s was not started before shutdown on topic %s (event %s)",
            _name(handler),
            delivery.topic,
            delivery.event_id,
            extra={"topic": delivery.topic, "event_id": delivery.event_id},
        )
        self._report(delivery, Outcome.NOT_STARTED)

    def _report(self, delivery: Delivery, outcome: Outcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(delivery, outcome)

    async def _call(
        self,
        handler: Handler,
        delivery: Delivery,
        worker: _Worker,
        worker_scope: anyio.CancelScope,
    ) -> Outcome:
        _current.set(delivery)
        if self._handler_timeout != math.inf:
            # The monotonic clock, not the event loop's: it is read once per
            # call, and asking anyio for its backend's clock costs more.
            worker.deadline = time.monotonic() + self._handler_timeout

        try:
            # The coroutine handler is awaited here, not in a helper: one
            # coroutine less per event.
            try:
                is_async = self._async_handlers[handler]
            except (KeyError, TypeError):
                is_async = self._runs_async(handler)

            if is_async:
                await handler(delivery.topic, delivery.event)  # type: ignore[misc]
            else:
                await self._invoke_plain(handler, delivery)
        except anyio.get_cancelled_exc_class() as exc:
            if worker_scope.cancel_called or worker.call_scope.cancel_called:
                raise

            # A handler that awaited something cancelled by someone else:
            # its failure, not a reason to stop the whole subscriber.
            return self._failed(handler, delivery, exc)
        except Exception as exc:
            return self._failed(handler, delivery, exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # Any other BaseException (a library's own control flow, say,
            # or GeneratorExit) is that handler's failure too.
            return self._failed(handler, delivery, exc)
        finally:
            worker.deadline = math.inf

        self._stats.events_handled += 1
        return Outcome.HANDLED

    def _runs_async(self, handler: Handler) -> bool:
        try:
            is_async = self._async_handlers[handler]
        except KeyError:
            if len(self._async_handlers) >= _CACHED_HANDLERS:
                # Handlers come and go (one per subscription() block): a
                # cache that kept them all would keep each one's closure,
                # and the stream it feeds, alive for the whole run.
                self._async_handlers.clear()

            is_async = self._async_handlers[handler] = _is_async(handler)
        except TypeError:  # an unhashable callable object
            is_async = _is_async(handler)

        return is_async

    async def _invoke_plain(self, handler: Handler, delivery: Delivery) -> None:
        result = await anyio.to_thread.run_sync(handler, delivery.topic, delivery.event)
        if inspect.isawaitable(result):
            # An async function behind a plain wrapper (a lambda, a decorator
            # without functools.wraps): await what it returned.
            await result

    def _failed(
        self, handler: Handler, delivery: Delivery, exc: BaseException
    ) -> Outcome:
        self._stats.handler_errors += 1
        logger.error(
            "Handler %s failed on topic %s (event %s)",
            _name(handler),
            delivery.topic,
            delivery.event_id,
            exc_info=exc,
            extra=delivery.log_fields(),
        )
        return Outcome.FAILED


def _is_async(handler: Handler) -> bool:
    target: object = handler
    while isinstance(target, functools.partial):
        target = target.func

    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    )


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
