"""``python -m redis_events.processor``: run the processor as a service.

This is the only place that configures logging and installs signal handlers.
Exit codes are those of ``serve``; 2 also stands for invalid configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Annotated, TypeVar

import anyio
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from redis_events import _constants as c
from redis_events._keys import stream_key
from redis_events._log_format import LOG_FORMATS, LogFormat, configure_logging
from redis_events.codec import validate_topic
from redis_events.config import Settings
from redis_events.exceptions import ConfigurationError, RedisEventsError
from redis_events.metrics import Metrics
from redis_events.processor._core import EventProcessor
from redis_events.processor._service import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    print_error,
    run_service,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["ProcessorSettings", "main"]

EXIT_INTERRUPTED = 130
# How the processor is named when nothing says how it was started.
MODULE_PROG = "python -m redis_events.processor"

logger = logging.getLogger("redis_events.processor")


class ProcessorSettings(Settings):
    """Settings of the processor service, on top of the library's own."""

    topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(c.DEFAULT_PROCESSOR_TOPICS), min_length=1
    )
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    stats_interval: float = Field(default=60.0, ge=0)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]

        return value

    @field_validator("topics")
    @classmethod
    def _usable_topics(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # transport is a field of the base class, so it is validated first.
        # On streams, the stream key refuses patterns ('profile_*'): they
        # work on pub/sub only.
        on_streams = info.data.get("transport") == "stream"
        for topic in value:
            if on_streams:
                stream_key(topic)
            else:
                validate_topic(topic)

        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            msg = f"unknown log level {value!r}"
            raise ValueError(msg)

        return level


def build_parser(prog: str = MODULE_PROG) -> argparse.ArgumentParser:
    """Return the argument parser; every flag falls back to the environment.

    ``prog`` is how the processor was started, for its usage and errors.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Process key and profile events from Redis and publish results "
            "to processing_results. Stop with SIGINT or SIGTERM: events in "
            "flight finish first; a second signal stops at once."
        ),
    )
    parser.add_argument(
        "--redis-url",
        help="Redis URL: redis://, rediss://, unix://, memory://, "
        "redis+cluster://host:port[,host:port...] or "
        "redis+sentinel://host:port[,host:port...]/service "
        f"(env REDIS_URL or REDIS_EVENTS_REDIS_URL; default {c.DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="TOPIC",
        help="topic to subscribe; repeat for several (env REDIS_EVENTS_TOPICS, "
        f"comma-separated; default {', '.join(c.DEFAULT_PROCESSOR_TOPICS)})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        dest="max_concurrency",
        help="handlers running at once (env REDIS_EVENTS_MAX_CONCURRENCY; "
        f"default {c.DEFAULT_MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--log-level",
        help="DEBUG, INFO, WARNING or ERROR (env REDIS_EVENTS_LOG_LEVEL; default INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json for one JSON object per line with timestamp, "
        "level, logger, message and the event's topic, event_id, event_type, "
        "group and consumer where known (env REDIS_EVENTS_LOG_FORMAT; "
        "default text)",
    )
    parser.add_argument(
        "--transport",
        choices=["pubsub", "stream"],
        help="pubsub (fire-and-forget) or stream (consumer group, "
        "at-least-once) (env REDIS_EVENTS_TRANSPORT; default pubsub)",
    )
    parser.add_argument(
        "--group",
        help="consumer group on the stream transport "
        f"(env REDIS_EVENTS_GROUP; default {c.DEFAULT_GROUP})",
    )
    parser.add_argument(
        "--consumer",
        help="this instance's consumer name in the group (env "
        "REDIS_EVENTS_CONSUMER; default <host>-<pid>-<random>)",
    )
    parser.add_argument(
        "--replay-from",
        metavar="ID|TIME|all",
        help="stream transport: instead of consuming, feed each topic's "
        "history from this entry id or ISO 8601 time to the handlers, "
        "without touching the group, then exit",
    )
    parser.add_argument(
        "--stats-interval",
        type=_seconds,
        help="seconds between stats log lines, 0 = off "
        "(env REDIS_EVENTS_STATS_INTERVAL; default 60)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on /metrics and a health check on "
        "/healthz at this port, 0 = off (env REDIS_EVENTS_METRICS_PORT; "
        "default off)",
    )
    parser.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="address the metrics server listens on (env "
        "REDIS_EVENTS_METRICS_HOST; default 127.0.0.1, this machine only)",
    )
    return parser


_N = TypeVar("_N", int, float)


def _number_type(
    kind: Callable[[str], _N], low: _N, high: _N, expected: str
) -> Callable[[str], _N]:
    """Return an argparse type: a number of ``kind`` from ``low`` to ``high``.

    A refused value (not a number, out of range, NaN or infinite) is named
    with ``expected`` in argparse's error line for the flag.
    """

    def parse(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            value = None

        if value is None or not low <= value <= high:  # NaN compares false
            msg = f"expected {expected}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


_positive_int = _number_type(int, 1, sys.maxsize, "a whole number, 1 or more")
_seconds = _number_type(
    float, 0.0, sys.float_info.max, "a number of seconds, 0 or more"
)
_port = _number_type(int, 0, 65535, "a port from 0 to 65535 (0 = off)")


def main(argv: Sequence[str] | None = None, *, prog: str = MODULE_PROG) -> int:
    """Run the processor until a signal; return the process exit code.

    ``prog`` names the command in ``--help`` and in error lines:
    ``redis-events processor`` passes its own name.
    """
    args = build_parser(prog).parse_args(argv)
    given = {
        k: v for k, v in vars(args).items() if v is not None and k != "replay_from"
    }
    try:
        settings = ProcessorSettings.from_arguments(
            given.pop("redis_url", None), **given
        )
    except ConfigurationError as exc:
        # Settings from the environment are unknown here: only the flag can
        # ask for JSON.
        if args.log_format == "json":
            configure_logging(level="INFO", log_format="json")

        _reporter(args.log_format or "text", prog)(str(exc))
        return EXIT_UNAVAILABLE

    assert isinstance(settings, ProcessorSettings)
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    if settings.scheme == "memory":
        logger.warning(
            "%s is an in-process Redis: no other process can send this "
            "processor events",
            settings.masked_url,
        )

    try:
        if args.replay_from is not None:
            return anyio.run(_replay, settings, args.replay_from, prog)

        return anyio.run(_serve, settings, prog)
    except KeyboardInterrupt:
        # Only reachable before the signal handlers are installed.
        return EXIT_INTERRUPTED


def _reporter(log_format: LogFormat, prog: str) -> Callable[[str], None]:
    """Return how to report an error that ends the processor.

    As one ``<prog>: error: <message>`` line in text, like every command of
    ``redis-events``; as an ERROR record in JSON, so that every line on
    stderr is a JSON object.
    """
    if log_format == "json":
        return _log_error

    def print_line(message: str) -> None:
        print_error(message, command=prog)

    return print_line


def _log_error(message: str) -> None:
    logger.error("%s", message)


async def _replay(settings: ProcessorSettings, start: str, prog: str) -> int:
    report = _reporter(settings.log_format, prog)
    if settings.transport != "stream":
        report("--replay-from needs --transport stream")
        return EXIT_UNAVAILABLE

    processor = EventProcessor(settings=settings, topics=settings.topics)
    try:
        counts = await processor.replay(start=start)
    except RedisEventsError as exc:
        report(str(exc))
        return EXIT_UNAVAILABLE

    for topic, count in counts.items():
        logger.info("Replayed %d events of %s", count, topic)

    logger.info("Replay done. Stats: %s", processor.get_stats())
    return EXIT_OK


async def _serve(settings: ProcessorSettings, prog: str) -> int:
    processor = EventProcessor(settings=settings, topics=settings.topics)
    report = _reporter(settings.log_format, prog)
    if not settings.metrics_port:
        return await run_service(
            processor, stats_interval=settings.stats_interval, report=report
        )

    metrics = Metrics()
    metrics.attach(processor.subscriber)
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(
                metrics.serving(host=settings.metrics_host, port=settings.metrics_port)
            )
        except OSError as exc:
            report(
                "cannot serve metrics on "
                f"{settings.metrics_host}:{settings.metrics_port} "
                f"({exc.strerror or exc})"
            )
            return EXIT_UNAVAILABLE

        return await run_service(
            processor, stats_interval=settings.stats_interval, report=report
        )
