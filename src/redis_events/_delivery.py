"""The values a transport and the dispatcher pass each other.

A ``Delivery`` goes in with its ``Handler``; an ``Outcome`` comes back; both
sides count into one ``Stats``. Public from ``redis_events.dispatcher``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from redis_events.codec import DecodedEvent
    from redis_events.observers import EventObserver

__all__ = ["Delivery", "Handler", "Outcome", "Stats", "new_delivery"]

Handler: TypeAlias = Callable[[str, Any], Awaitable[object] | object]


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


# A frozen dataclass's __init__ sets each field through object.__setattr__,
# which costs a third of a microsecond per event on the read path. The slots'
# own descriptors set them directly; only new_delivery() uses them, on an
# instance nobody else holds yet.
_new = object.__new__
_slots = vars(Delivery)
_set_topic = _slots["topic"].__set__
_set_event = _slots["event"].__set__
_set_pattern = _slots["pattern"].__set__
_set_delivery_id = _slots["delivery_id"].__set__
_set_delivery_count = _slots["delivery_count"].__set__
_set_trace_context = _slots["trace_context"].__set__


def new_delivery(
    topic: str,
    event: DecodedEvent,
    pattern: str | None,
    delivery_id: str | None,
    delivery_count: int,
    trace_context: dict[str, str] | None,
) -> Delivery:
    """Return ``Delivery(...)`` of these fields, built without its ``__init__``."""
    delivery: Delivery = _new(Delivery)
    _set_topic(delivery, topic)
    _set_event(delivery, event)
    _set_pattern(delivery, pattern)
    _set_delivery_id(delivery, delivery_id)
    _set_delivery_count(delivery, delivery_count)
    _set_trace_context(delivery, trace_context)
    return delivery


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
