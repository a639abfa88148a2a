"""Call one handler for one delivery: timeout, outcome, observer and logs.

``HandlerCalls`` is the half of the ``Dispatcher`` that knows what a handler
call is: how a coroutine or a plain function is called, how its timeout is
enforced, and how each way it can end is counted, logged and reported. The
worker pool in ``redis_events.dispatcher`` decides when a call happens.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, TypeAlias

import anyio

from redis_events._delivery import Delivery, Handler, Outcome, Stats

if TYPE_CHECKING:
    from redis_events.observers import EventObserver

__all__ = ["HandlerCalls", "Job", "Worker", "current_delivery"]

# The dispatcher's logger: the records keep the name users filter on.
logger = logging.getLogger("redis_events.dispatcher")

# How many handlers the dispatcher remembers to be coroutine functions.
_CACHED_HANDLERS = 256

Job: TypeAlias = tuple[Handler, Delivery, Hashable | None]

_current: contextvars.ContextVar[Delivery] = contextvars.ContextVar(
    "redis_events_delivery"
)


def current_delivery() -> Delivery:
    """Return the delivery the calling handler is working on.

    Raises:
        LookupError: Called outside a handler run by a dispatcher.
    """
    return _current.get()


class Worker:
    """One worker task's state, as the dispatcher and the timeout watch see it.

    ``call_scope`` spans many calls: it is replaced only after a timeout has
    cancelled it, so that a call costs no cancel scope of its own.
    """

    __slots__ = ("call_scope", "deadline", "job", "observed", "wake")

    def __init__(self) -> None:
        self.call_scope = anyio.CancelScope()
        self.deadline = math.inf
        self.job: Job | None = None
        self.wake = anyio.Event()
        # The observer told of the call in flight, and its token.
        self.observed: tuple[EventObserver, object] | None = None


class HandlerCalls:
    """Call handlers on workers' behalf, and account for how each call ended.

    Every call ends in exactly one ``Outcome``: it is counted in ``Stats``,
    logged unless it was handled, and reported to ``on_outcome`` and to the
    observer told of its start.
    """

    def __init__(
        self,
        *,
        handler_timeout: float | None,
        stats: Stats,
        on_outcome: Callable[[Delivery, Outcome], None] | None,
        log_fields: Mapping[str, str] | None = None,
    ) -> None:
        self._handler_timeout = handler_timeout or math.inf
        # Logged with every call's own fields: a stream's group and consumer.
        self._log_fields = dict(log_fields or {})
        self._stats = stats
        self._on_outcome = on_outcome
        # The workers whose calls the watch times, and the watch's scope.
        self._workers: set[Worker] = set()
        self._watch_scope = anyio.CancelScope()
        self._async_handlers: dict[Handler, bool] = {}

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

    async def _call(
        self,
        handler: Handler,
        delivery: Delivery,
        worker: Worker,
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
            extra=self._fields(delivery),
        )
        return Outcome.FAILED

    def _timed_out(self, worker: Worker) -> Outcome:
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
            extra=self._fields(delivery),
        )
        return Outcome.TIMED_OUT

    def _overran(self, job: Job) -> None:
        handler, delivery, _ = job
        logger.warning(
            "Handler %s ran past its %.1f s timeout on topic %s (event %s): it "
            "could not be cut short (a plain function, or a coroutine that "
            "caught the cancellation)",
            _name(handler),
            self._handler_timeout,
            delivery.topic,
            delivery.event_id,
            extra=self._fields(delivery),
        )

    def _cancelled(self, job: Job) -> None:
        handler, delivery, _ = job
        self._stats.handlers_cancelled += 1
        logger.warning(
            "Handler %s was cancelled at shutdown on topic %s (event %s)",
            _name(handler),
            delivery.topic,
            delivery.event_id,
            extra=self._fields(delivery),
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
            extra=self._fields(delivery),
        )
        self._report(delivery, Outcome.NOT_STARTED)

    def _fields(self, delivery: Delivery) -> dict[str, str]:
        """Return the log fields of a call: the event's and the session's."""
        return delivery.log_fields() | self._log_fields

    def _report(self, delivery: Delivery, outcome: Outcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(delivery, outcome)

    @staticmethod
    def _tell_observer(worker: Worker, delivery: Delivery, outcome: Outcome) -> None:
        # In the worker task, where started() was called: a tracing observer
        # ends its span in the context it opened it in.
        if worker.observed is not None:
            observer, token = worker.observed
            worker.observed = None
            observer.finished(delivery, outcome, token)


def _is_async(handler: Handler) -> bool:
    target: object = handler
    while isinstance(target, functools.partial):
        target = target.func

    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    )


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
