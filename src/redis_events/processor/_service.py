"""Run an ``EventProcessor`` as a service: signals, stats lines, exit codes.

The library configures no logging; the command line does, before it calls
``serve``. Exit codes: 0 after a graceful stop, 1 after a forced stop (a
second signal), 2 when Redis cannot be reached at start.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio

from redis_events._log_format import UNREACHABLE_HINT, error_prefix
from redis_events.exceptions import RedisEventsError, RedisUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from redis_events.processor._core import EventProcessor

__all__ = [
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "print_error",
    "run_service",
    "serve",
]

logger = logging.getLogger("redis_events.processor")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_UNAVAILABLE = 2
# How ``serve`` names the program in its error line.
SERVICE_NAME = "redis-events processor"


async def serve(processor: EventProcessor, *, stats_interval: float = 60.0) -> int:
    """Run ``processor`` until SIGINT or SIGTERM and return an exit code.

    The first signal stops reading and lets events in flight finish (up to
    ``shutdown_timeout``); a second one cancels them. A stats line is logged
    every ``stats_interval`` seconds (0 = never) and once at the end. When
    Redis cannot be reached at start, one ``redis-events processor: error:``
    line naming the address goes to stderr and the exit code is 2.
    """
    return await run_service(
        processor, stats_interval=stats_interval, report=print_error
    )


def print_error(message: str, *, command: str = SERVICE_NAME) -> None:
    """Write ``message`` to stderr as one ``<command>: error:`` line.

    The processor's text errors all end here, in the form of every other
    command's errors.
    """
    print(f"{error_prefix(command)}{message}", file=sys.stderr)  # noqa: T201


async def run_service(
    processor: EventProcessor,
    *,
    stats_interval: float,
    report: Callable[[str], None],
) -> int:
    """Do what ``serve`` does, reporting an unreachable Redis with ``report``.

    The command line passes a ``report`` that writes in its log format.
    """
    stopping = anyio.Event()
    forced = False

    async def watch_signals() -> None:
        nonlocal forced
        async for signum in signals:
            name = signal.Signals(signum).name
            if stopping.is_set():
                forced = True
                logger.warning("Second %s: stopping now", name)
                processor.subscriber.abort()
                return

            stopping.set()
            logger.info(
                "%s received: finishing events in flight (up to %.0f s)",
                name,
                processor.settings.shutdown_timeout,
            )
            task_group.start_soon(processor.stop)

    async def report_stats() -> None:
        while True:
            await anyio.sleep(stats_interval)
            logger.info("Stats: %s", _format_stats(processor.get_stats()))
            if processor.settings.transport == "stream":
                await _report_group(processor)

    # Signals are taken over first, so that one arriving while we connect
    # stops the start-up cleanly instead of killing the process.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch_signals)
            code = await _run(processor, stopping, stats_interval, report_stats, report)
            task_group.cancel_scope.cancel()

    if code == EXIT_OK:
        logger.info("Stopped. Final stats: %s", _format_stats(processor.get_stats()))

    return EXIT_FORCED if forced else code


async def _run(
    processor: EventProcessor,
    stopping: anyio.Event,
    stats_interval: float,
    report_stats: Callable[[], Coroutine[Any, Any, None]],
    report: Callable[[str], None],
) -> int:
    error: RedisEventsError | None = None
    async with anyio.create_task_group() as task_group:
        # A signal while connecting ends the start-up at once.
        task_group.start_soon(_cancel_on, stopping, task_group.cancel_scope)
        try:
            await processor.connect()
        except RedisUnavailableError as exc:
            # What the operator can do: the same advice as every CLI command.
            error = RedisUnavailableError(f"{exc}; {UNREACHABLE_HINT}")
        except RedisEventsError as exc:
            error = exc
        finally:
            task_group.cancel_scope.cancel()

    if error is None and not stopping.is_set():
        async with anyio.create_task_group() as task_group:
            if stats_interval > 0:
                task_group.start_soon(report_stats)

            try:
                await processor.run()
            except RedisEventsError as exc:
                # Kept and reported after the task group, which would
                # otherwise wrap it in an exception group.
                error = exc
            finally:
                task_group.cancel_scope.cancel()

    if error is not None:
        report(str(error))
        return EXIT_UNAVAILABLE

    return EXIT_OK


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _report_group(processor: EventProcessor) -> None:
    try:
        info = await processor.subscriber.group_info()
    except RedisEventsError as exc:
        logger.warning("Group state unavailable: %s", exc)
        return

    for topic, state in info.items():
        logger.info(
            "Group %s on %s: lag=%s pending=%s consumers=%s",
            processor.settings.group,
            topic,
            state["lag"],
            state["pending"],
            state["consumers"],
        )


def _format_stats(stats: dict[str, int]) -> str:
    return " ".join(f"{name}={value}" for name, value in stats.items())
