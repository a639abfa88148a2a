"""How the command lines write log records: text for people, JSON lines for tools.

Only ``python -m redis_events.processor`` and ``redis-events`` use this
module; the library itself adds no handlers. It logs with the event's
``topic``, ``event_id`` and ``event_type`` in ``extra=``, and on streams
the ``group`` and ``consumer``, which a JSON line shows as fields of their
own.
"""

from __future__ import annotations

import logging
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "TEXT_FORMAT",
    "LogFormat",
    "configure_logging",
    "error_prefix",
    "formatter",
    "json_formatter",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The record attributes every JSON line has, under the names log collectors
# expect; anything the call passed in ``extra=`` follows as its own field.
_JSON_FIELDS = ("levelname", "name", "message")
_JSON_NAMES = {"levelname": "level", "name": "logger", "exc_info": "exception"}


# What an operator can do when Redis does not answer, said by every command.
UNREACHABLE_HINT = (
    "check that Redis runs there, or give the right URL (--redis-url or REDIS_URL)"
)


def error_prefix(command: str) -> str:
    """Return what starts the text line of an error that ends ``command``.

    Every error of ``redis-events``, of the processor and of ``serve`` is one
    ``<command>: error: <message>`` line, so that people and scripts look
    for one form; this is the one place that spells it.
    """
    return f"{command}: error: "


def json_formatter() -> logging.Formatter:
    """Return a formatter that writes each record as one JSON object.

    Fields: ``level``, ``logger``, ``message``, every field passed in
    ``extra=`` (``topic``, ``event_id``, ``event_type``, ``group``,
    ``consumer``, ...), ``exception`` with the traceback when there is one,
    and ``timestamp`` (ISO 8601, UTC).
    """
    return JsonFormatter(
        list(_JSON_FIELDS),
        rename_fields=_JSON_NAMES,
        timestamp=True,
        # Defaults come first in a line and the timestamp fills this one in,
        # so that lines start with their time, as text lines do.
        defaults={"timestamp": None},
    )


def formatter(log_format: LogFormat) -> logging.Formatter:
    """Return the formatter of ``log_format``."""
    if log_format == "json":
        return json_formatter()

    return logging.Formatter(TEXT_FORMAT)


def configure_logging(*, level: str, log_format: LogFormat) -> None:
    """Send every record at ``level`` or above to stderr, in ``log_format``.

    Replaces whatever handlers the root logger had, so that each record is
    written once.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
