"""Run handlers under a concurrency limit, with timeouts and a graceful drain.

The dispatcher is transport-agnostic: a reader hands it ``(handler,
delivery)`` jobs with ``submit``. At most ``max_concurrency`` jobs are
accepted at a time; ``submit`` waits while that many are, so the reader stops
reading. That wait is the whole of the backpressure: nothing queues up
elsewhere.

Jobs given the same ordering key run one at a time, in submit order; jobs
with different keys, or none, run concurrently.

This module is the worker pool: slots, the queue, ordering keys, waking and
draining. What one call is (timeout, outcome, observer, logs) is
``_handler_calls``; the values exchanged with a transport are ``_delivery``.
"""

from __future__ import annotations

import contextvars
import math
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from redis_events._delivery import Delivery, Handler, Outcome, Stats
from redis_events._handler_calls import HandlerCalls, Job, Worker, current_delivery

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Hashable, Mapping

__all__ = [
    "Delivery",
    "Dispatcher",
    "Handler",
    "Outcome",
    "Stats",
    "current_delivery",
]

_current_dispatcher: contextvars.ContextVar[Dispatcher] = contextvars.ContextVar(
    "redis_events_dispatcher"
)


class Dispatcher(HandlerCalls):
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
        log_fields: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            handler_timeout=handler_timeout,
            stats=stats,
            on_outcome=on_outcome,
            log_fields=log_fields,
        )
        self._limit = max_concurrency
        self._shutdown_timeout = shutdown_timeout
        self._running = False
        self._accepted = 0
        self._ready: deque[Job] = deque()
        self._idle: list[Worker] = []
        self._waking = 0
        self._live_workers = 0
        self._freed = anyio.Event()
        self._waiting_by_key: dict[Hashable, deque[Job]] = {}
        self._scopes: set[anyio.CancelScope] = set()
        self._drain_deadline = math.inf

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
        worker = Worker()
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
                        self._finish(worker, self._timed_out(worker))

                    worker.call_scope = anyio.CancelScope()
        finally:
            # Also when an exception ends the worker (a handler's SystemExit):
            # the watch task must not outlive the last worker, or the task
            # group, shielded, waits for it forever.
            self._left(worker, scope)

    def _left(self, worker: Worker, scope: anyio.CancelScope) -> None:
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
            self._stats.in_flight -= 1
            self._accepted -= 1
            self._cancelled(worker.job)

    async def _serve(self, worker: Worker, worker_scope: anyio.CancelScope) -> None:
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

    async def _sleep(self, worker: Worker) -> None:
        worker.wake = wake = anyio.Event()
        self._idle.append(worker)
        try:
            await wake.wait()
        finally:
            if wake.is_set():
                self._waking -= 1

    def _finish(self, worker: Worker, outcome: Outcome) -> None:
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
        on_outcome = self._on_outcome
        try:
            if on_outcome is not None:
                on_outcome(job[1], outcome)
        finally:
            if worker.observed is not None:
                self._tell_observer(worker, job[1], outcome)

    def _next_for_key(self, key: Hashable | None) -> Job | None:
        if key is None:
            return None

        waiting = self._waiting_by_key[key]
        if waiting:
            return waiting.popleft()

        del self._waiting_by_key[key]
        return None
