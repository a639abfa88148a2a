"""Where the commands' stderr lines go: ``--log-level`` and ``--log-format``.

Both options belong to the ``redis-events`` group, so they come before the
command (``redis-events --log-format json tail ...``) or from
``REDIS_EVENTS_LOG_LEVEL`` and ``REDIS_EVENTS_LOG_FORMAT``. In text, the
library's records are ``<command>: <level>: <message>`` lines; in JSON,
every line on stderr is one JSON object, the commands' own notes and errors
included (logger ``redis_events.cli``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from redis_events._log_format import LOG_FORMATS, LogFormat, json_formatter

__all__ = [
    "LogOptions",
    "library_logs",
    "log_options",
    "logging_options",
    "say",
]

F = TypeVar("F", bound=Callable[..., Any])

_CLI_LOGGER = "redis_events.cli"
_DEFAULT_LEVEL = "WARNING"


@dataclass(frozen=True, slots=True)
class LogOptions:
    """The group's logging options, kept on the click context for commands."""

    level: str = _DEFAULT_LEVEL
    format: LogFormat = "text"


def _level(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    level = value.upper()
    if level not in logging.getLevelNamesMapping():
        msg = f"{value!r} is not a log level: use DEBUG, INFO, WARNING or ERROR"
        raise click.BadParameter(msg)

    return level


def logging_options(function: F) -> F:
    """Add ``--log-level`` and ``--log-format`` to the group."""
    function = click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        envvar="REDIS_EVENTS_LOG_FORMAT",
        help="text, or json: one JSON object per stderr line with timestamp, "
        "level, logger, message and the event's topic, event_id, event_type, "
        "group and consumer where known "
        "(default: $REDIS_EVENTS_LOG_FORMAT, else text).",
    )(function)
    return click.option(
        "--log-level",
        default=_DEFAULT_LEVEL,
        envvar="REDIS_EVENTS_LOG_LEVEL",
        callback=_level,
        metavar="LEVEL",
        help="Show the library's records from this level on: DEBUG, INFO, "
        "WARNING or ERROR (default: $REDIS_EVENTS_LOG_LEVEL, else WARNING).",
    )(function)


def log_options() -> LogOptions:
    """Return the logging options of the running command (defaults outside one)."""
    context = click.get_current_context(silent=True)
    found = context.find_object(LogOptions) if context is not None else None
    return found if found is not None else LogOptions()


def _command() -> str:
    context = click.get_current_context(silent=True)
    return context.command_path if context is not None else "redis-events"


def say(message: str, *, level: int = logging.INFO, prefix: str = "") -> None:
    """Write one line about the command itself to stderr, whatever the level.

    In text it is ``prefix`` and ``message``; in JSON a record of the
    ``redis_events.cli`` logger with the command in ``command``.
    """
    if log_options().format == "text":
        click.echo(f"{prefix}{message}", err=True)
        return

    record = logging.LogRecord(_CLI_LOGGER, level, __file__, 0, message, (), None)
    record.command = _command()
    click.echo(json_formatter().format(record), err=True)


class _CommandFormatter(logging.Formatter):
    """Format a record as ``<command>: <level>: <message>``."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self._command = command

    def format(self, record: logging.LogRecord) -> str:
        return f"{self._command}: {record.levelname.lower()}: {record.getMessage()}"


class _StderrHandler(logging.Handler):
    """Write records to the current stderr, as the command's own lines go."""

    def __init__(self, command: str, options: LogOptions) -> None:
        super().__init__(options.level)
        if options.format == "json":
            self.setFormatter(json_formatter())
        else:
            self.setFormatter(_CommandFormatter(command))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # A log handler must never raise.
            self.handleError(record)


@contextmanager
def library_logs() -> Iterator[None]:
    """Show the library's records (skipped entries, retries) on stderr.

    From ``--log-level`` on, in ``--log-format``. The handler and the level
    are taken back at the end, so that running a command in-process leaves
    logging as it was.
    """
    options = log_options()
    handler = _StderrHandler(_command(), options)
    library = logging.getLogger("redis_events")
    level = library.level
    library.setLevel(options.level)
    library.addHandler(handler)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)
