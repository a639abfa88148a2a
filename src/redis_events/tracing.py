"""OpenTelemetry tracing: trace context from publish to handler.

Switched on with ``Settings.tracing`` (``REDIS_EVENTS_TRACING=1``) and the
``otel`` extra (``pip install 'redis-events[otel]'``); without both, this
module is never imported. Spans go to the global tracer provider, which the
application sets up (the library configures no exporter).

- A publish runs in a ``publish <topic>`` span (kind PRODUCER) and sends its
  W3C trace context with the event: as ``traceparent``/``tracestate`` entry
  fields on streams, as a trailing ``"_trace"`` member of the JSON on
  pub/sub (see ``redis_events._envelope``).
- Each handler call runs in a ``process <topic>`` span (kind CONSUMER) whose
  parent is the publisher's span, so a result the handler publishes joins
  the same trace.

Only the W3C Trace Context format is carried (not baggage, whatever the
global propagator is), so the envelope stays small and fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from redis_events.exceptions import ConfigurationError
from redis_events.observers import EventObserver

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import (
        TraceContextTextMapPropagator,
    )
except ImportError as exc:
    _msg = (
        "tracing is switched on but OpenTelemetry is not installed: "
        "pip install 'redis-events[otel]', or set tracing=False"
    )
    raise ConfigurationError(_msg) from exc

from redis_events.dispatcher import Outcome

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextvars import Token

    from opentelemetry.trace import Span
    from pydantic import BaseModel

    from redis_events.dispatcher import Delivery

__all__ = ["ConsumerTracing", "ProducerTracing"]

_TRACER = "redis_events"
_PROPAGATOR = TraceContextTextMapPropagator()
_SYSTEM = {"messaging.system": "redis"}


class ProducerTracing:
    """Open a PRODUCER span per publish and hand out its trace context."""

    def __init__(self, *, transport: str) -> None:
        self._tracer = trace.get_tracer(_TRACER)
        self._transport = transport

    @contextmanager
    def publishing(
        self, topic: str, events: Mapping[str, Any] | BaseModel | None, count: int = 1
    ) -> Iterator[dict[str, str]]:
        """Run the block in a ``publish <topic>`` span; yield its context.

        An exception from the block is recorded on the span and raised.
        """
        attributes: dict[str, str | int] = {
            **_SYSTEM,
            "messaging.destination.name": topic,
            "messaging.operation.type": "send",
            "messaging.redis.transport": self._transport,
        }
        if count != 1:
            attributes["messaging.batch.message_count"] = count

        event_id = _event_id(events)
        if event_id is not None:
            attributes["messaging.message.id"] = event_id

        with self._tracer.start_as_current_span(
            f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            yield carrier


class ConsumerTracing(EventObserver):
    """Run each handler call in a CONSUMER span parented to the publisher's."""

    def __init__(self, *, group: str | None = None) -> None:
        self._tracer = trace.get_tracer(_TRACER)
        self._group = group

    def started(self, delivery: Delivery) -> object:
        """Open the span and make it current for the handler."""
        # An event without trace context starts a trace of its own rather
        # than joining whatever span the subscriber was started in.
        parent = Context()
        if delivery.trace_context:
            parent = _PROPAGATOR.extract(delivery.trace_context, context=parent)

        attributes: dict[str, str | int] = {
            **_SYSTEM,
            "messaging.destination.name": delivery.topic,
            "messaging.operation.type": "process",
        }
        if delivery.event_id is not None:
            attributes["messaging.message.id"] = delivery.event_id

        if delivery.delivery_id is not None:
            attributes["messaging.redis.entry_id"] = delivery.delivery_id
            attributes["messaging.redis.delivery_count"] = delivery.delivery_count

        if self._group is not None:
            attributes["messaging.consumer.group.name"] = self._group

        span = self._tracer.start_span(
            f"process {delivery.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        """End the span; a call that did not succeed marks it as an error."""
        span, attached = cast("tuple[Span, Token[Context]]", token)
        otel_context.detach(attached)
        if outcome is not Outcome.HANDLED:
            span.set_status(Status(StatusCode.ERROR, f"handler {outcome.value}"))

        span.end()


def _event_id(event: Mapping[str, Any] | BaseModel | None) -> str | None:
    if event is None:
        return None

    value = event.get("event_id") if isinstance(event, Mapping) else None
    if value is None:
        value = getattr(event, "event_id", None)

    return value if isinstance(value, str) else None
