"""The exceptions redis-events raises.

Every exception the library raises on purpose derives from one root::

    RedisEventsError
    ├── ConfigurationError        bad URL, option or topic name
    ├── RedisUnavailableError     Redis could not be reached, even after retries
    ├── PermissionDeniedError     the Redis user lacks a needed ACL right
    └── EventError                an event could not be encoded or decoded
        ├── EventEncodeError      not serializable to JSON
        ├── EventDecodeError      not JSON, wrong shape, unknown event_type
        └── EventTooLargeError    above the configured size limit

redis-py errors are translated into these in one place
(``redis_events._connection``), always chained with ``raise ... from``.
Messages say what failed and what to do; they never contain an event payload
or a secret.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "EventDecodeError",
    "EventEncodeError",
    "EventError",
    "EventTooLargeError",
    "PermissionDeniedError",
    "RedisEventsError",
    "RedisUnavailableError",
]


class RedisEventsError(Exception):
    """Root of every error raised by redis-events."""


class ConfigurationError(RedisEventsError, ValueError):
    """A setting, URL or topic name is not usable."""


class RedisUnavailableError(RedisEventsError):
    """Redis could not be reached or stopped answering.

    Raised after the library's own retries ran out. The operation may be
    retried by the caller once Redis is back.
    """


class PermissionDeniedError(RedisEventsError):
    """The connected Redis user may not run a command the library needs."""


class EventError(RedisEventsError):
    """An event could not be turned into bytes or back.

    Attributes:
        topic: The topic the event was published to or received on.
        reason: A short, payload-free description of what is wrong.
    """

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.topic = topic
        self.reason = reason
        where = f" on topic {topic!r}" if topic is not None else ""
        super().__init__(f"{self._summary}{where}: {reason}")

    _summary = "invalid event"


class EventEncodeError(EventError):
    """An event could not be serialized to JSON."""

    _summary = "cannot encode event"


class EventDecodeError(EventError):
    """Received bytes are not a valid event for their topic."""

    _summary = "cannot decode event"


class EventTooLargeError(EventEncodeError, EventDecodeError):
    """An encoded event is larger than the configured ``max_event_bytes``."""

    _summary = "event too large"
