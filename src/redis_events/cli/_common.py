"""What the commands share: connection options, settings, errors, redaction.

Exit codes of every command: 0 done (also when there was nothing to do),
1 not done (Redis refused or could not be reached, a dead-letter id was not
found, a purge was declined), 2 the input or a setting is not usable (click's
own usage errors also exit 2).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import anyio
import click
from pydantic import BaseModel

from redis_events import _constants as c
from redis_events._log_format import UNREACHABLE_HINT, error_prefix
from redis_events.cli._logs import library_logs, say
from redis_events.config import Settings
from redis_events.events import REDACTED
from redis_events.exceptions import (
    ConfigurationError,
    EventError,
    RedisEventsError,
    RedisUnavailableError,
)

if TYPE_CHECKING:
    from redis_events.codec import DecodedEvent

__all__ = [
    "EXIT_NOT_DONE",
    "EXIT_REDIS",
    "EXIT_USAGE",
    "OutputClosedError",
    "build_settings",
    "events",
    "fail",
    "plain",
    "redis_url_option",
    "run",
    "say",
    "transport_option",
]

EXIT_REDIS = 1
# The same code as EXIT_REDIS: "not done", for reasons other than Redis.
EXIT_NOT_DONE = 1
EXIT_USAGE = 2

# Fields whose values are secrets wherever they appear, also in events of
# topics without a model, where no serializer redacts them.
SECRET_FIELDS = frozenset({"key_value"})

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class OutputClosedError(Exception):
    """Whoever read standard output went away (a pipe into ``head``, say).

    Not an ``OSError``: the library would take that for a lost connection.
    """


def closed_output() -> OutputClosedError:
    """Point stdout at the null device and return the error to raise.

    Python flushes stdout once more at exit; into a closed pipe that flush
    would print a traceback of its own.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        # Not a real file (click's test runner): nothing is flushed at exit.
        pass

    return OutputClosedError("standard output was closed")


def redis_url_option(function: F) -> F:
    """Add ``--redis-url``, which falls back to the environment."""
    return click.option(
        "--redis-url",
        metavar="URL",
        help="Redis to talk to: redis://, rediss://, unix://, memory://, "
        "redis+cluster://host:port,... or redis+sentinel://host:port,.../service "
        "(default: $REDIS_EVENTS_REDIS_URL, $REDIS_URL, else "
        f"{c.DEFAULT_REDIS_URL}).",
    )(function)


def transport_option(help_text: str) -> Callable[[F], F]:
    """Add ``--transport pubsub|stream``, which falls back to the environment."""

    def decorate(function: F) -> F:
        return click.option(
            "--transport",
            type=click.Choice(["pubsub", "stream"]),
            help=f"{help_text} (default: $REDIS_EVENTS_TRANSPORT, else pubsub).",
        )(function)

    return decorate


def build_settings(redis_url: str | None, **options: Any) -> Settings:
    """Return the library's settings from the options given and the environment.

    Options given as ``None`` are left to the environment. An unusable value
    ends the command with exit code 2 and a message saying which one.
    """
    given = {name: value for name, value in options.items() if value is not None}
    try:
        return Settings.from_arguments(redis_url, **given)
    except ConfigurationError as exc:
        fail(f"{exc}; fix the option or the REDIS_EVENTS_* variable", EXIT_USAGE)


def fail(message: str, code: int, *, context: click.Context | None = None) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``.

    The line is ``<command>: error: <message>``; with ``--log-format json``
    it is an ERROR record in JSON. Every error of every command ends here,
    click's own usage errors too (``context`` is then the command's, which
    is no longer the current one).
    """
    if context is not None:
        with context.scope(cleanup=False):
            fail(message, code)

    command = click.get_current_context(silent=True)
    name = command.command_path if command is not None else "redis-events"
    say(message, level=logging.ERROR, prefix=error_prefix(name))
    sys.exit(code)


def run(function: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a coroutine function; turn the library's errors into exit codes.

    Input and configuration errors exit 2, everything else from Redis 1;
    the library's message is printed as it is (it never holds a payload or a
    password). The library's own records go to stderr meanwhile, from
    ``--log-level`` on and in ``--log-format``.
    """

    async def call() -> T:
        return await function(*args, **kwargs)

    try:
        with library_logs():
            return anyio.run(call)
    except OutputClosedError:
        # The reader has all it wanted: a normal end, as for `yes | head`.
        sys.exit(0)
    except (EventError, ConfigurationError) as exc:
        fail(str(exc), EXIT_USAGE)
    except RedisUnavailableError as exc:
        fail(f"{exc}; {UNREACHABLE_HINT}", EXIT_REDIS)
    except RedisEventsError as exc:
        fail(str(exc), EXIT_REDIS)


def events(count: int) -> str:
    """Return "1 event" or "N events"."""
    return f"{count} event" if count == 1 else f"{count} events"


def plain(event: DecodedEvent) -> dict[str, Any]:
    """Return ``event`` as JSON-ready data with every secret redacted."""
    if isinstance(event, BaseModel):
        # Without the codec's context the models' serializers write secrets
        # as REDACTED.
        data: Any = event.model_dump(mode="json")
    else:
        data = json.loads(json.dumps(event, default=str))

    redacted: dict[str, Any] = _redact(data)
    return redacted


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: REDACTED if key in SECRET_FIELDS else _redact(item)
            for key, item in value.items()
        }

    if isinstance(value, list):
        return [_redact(item) for item in value]

    return value
