"""OpenTelemetry tracing: spans and trace context from publish to handler."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel, ConfigDict

from redis_events import EventPublisher, EventSubscriber
from redis_events._envelope import add_to_json, split_json
from redis_events._keys import stream_key
from tests.helpers import RawSubscriber, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

TRANSPORTS = ["pubsub", "stream"]

_EXPORTER = InMemorySpanExporter()


class Strict(BaseModel):
    """A model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")

    n: int
    event_id: str = "fixed-id"
    fail: bool = False


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans finished during the test (global provider set once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)

    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def only(found: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    """Return the one finished span called ``name``."""
    matching = [span for span in found if span.name == name]
    assert len(matching) == 1, [span.name for span in found]
    return matching[0]


def entries(client: redis.Redis, topic: str) -> list[tuple[str, dict[str, str]]]:
    """Return the entries of ``topic``'s stream."""
    found: list[tuple[str, dict[str, str]]] = client.xrange(stream_key(topic))  # type: ignore[assignment]  # sync client
    return found


def ids(span: ReadableSpan) -> tuple[int, int]:
    """Return a span's trace id and span id."""
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


@pytest.mark.redis
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_handler_span_is_the_child_of_the_publish_span(
    redis_url: str, uid: str, transport: str, spans: InMemorySpanExporter
) -> None:
    topic, results = f"traced-{uid}", f"traced-results-{uid}"
    subscriber = EventSubscriber(
        redis_url, transport=transport, group=f"g-{uid}", tracing=True
    )
    publisher = EventPublisher(redis_url, transport=transport, tracing=True)
    subscriber.registry.register(topic, Strict)
    publisher.registry.register(topic, Strict)
    inside: list[int] = []

    @subscriber.on(topic)
    async def handle(topic: str, event: Strict) -> None:
        inside.append(trace.get_current_span().get_span_context().span_id)
        await publisher.publish(results, {"of": event.n})

    async with subscriber, publisher:
        await publisher.publish(topic, Strict(n=1, event_id=f"ev-{uid}"))
        await wait_until(lambda: len(spans.get_finished_spans()) == 3)

    found = spans.get_finished_spans()
    sent = only(found, f"publish {topic}")
    processed = only(found, f"process {topic}")
    result = only(found, f"publish {results}")
    assert sent.kind is SpanKind.PRODUCER
    assert processed.kind is SpanKind.CONSUMER
    assert ids(processed)[0] == ids(sent)[0]
    assert processed.parent is not None
    assert processed.parent.span_id == ids(sent)[1]
    assert processed.parent.is_remote
    assert inside == [ids(processed)[1]]
    # What the handler publishes joins the same trace, under its span.
    assert result.parent is not None
    assert result.parent.span_id == ids(processed)[1]
    assert ids(result)[0] == ids(sent)[0]
    attributes = dict(processed.attributes or {})
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.destination.name"] == topic
    assert attributes["messaging.message.id"] == f"ev-{uid}"
    assert attributes["messaging.operation.type"] == "process"
    assert dict(sent.attributes or {})["messaging.message.id"] == f"ev-{uid}"
    assert processed.status.status_code is StatusCode.UNSET


@pytest.mark.redis
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_failing_handler_marks_its_span_as_an_error(
    redis_url: str, uid: str, transport: str, spans: InMemorySpanExporter
) -> None:
    topic = f"failing-{uid}"
    subscriber = EventSubscriber(
        redis_url, transport=transport, group=f"g-{uid}", tracing=True, max_deliveries=1
    )

    @subscriber.on(topic)
    async def handle(topic: str, event: dict[str, Any]) -> None:
        msg = "fails on purpose"
        raise ValueError(msg)

    async with (
        subscriber,
        EventPublisher(redis_url, transport=transport, tracing=True) as publisher,
    ):
        await publisher.publish(topic, {"n": 1})
        await wait_until(lambda: len(spans.get_finished_spans()) == 2)

    processed = only(spans.get_finished_spans(), f"process {topic}")
    assert processed.status.status_code is StatusCode.ERROR
    assert processed.status.description == "handler failed"


@pytest.mark.redis
async def test_publish_many_sends_one_span_and_its_context_with_every_event(
    redis_url: str, uid: str, spans: InMemorySpanExporter
) -> None:
    topic = f"batch-{uid}"
    subscriber = EventSubscriber(
        redis_url, transport="stream", group=f"g-{uid}", tracing=True
    )
    seen: list[int] = []

    @subscriber.on(topic)
    async def handle(topic: str, event: dict[str, Any]) -> None:
        seen.append(event["n"])

    async with (
        subscriber,
        EventPublisher(redis_url, transport="stream", tracing=True) as publisher,
    ):
        await publisher.publish_many(topic, [{"n": n} for n in range(3)])
        await wait_until(lambda: len(spans.get_finished_spans()) == 4)

    found = spans.get_finished_spans()
    sent = only(found, f"publish {topic}")
    handled = [span for span in found if span.name == f"process {topic}"]
    assert dict(sent.attributes or {})["messaging.batch.message_count"] == 3
    assert len(handled) == 3
    assert {span.parent.span_id for span in handled if span.parent} == {ids(sent)[1]}
    assert sorted(seen) == [0, 1, 2]


@pytest.mark.redis
async def test_pubsub_message_stays_json_and_untraced_strict_consumers_read_it(
    redis_url: str, r: redis.Redis, uid: str, spans: InMemorySpanExporter
) -> None:
    topic, plain = f"wire-{uid}", f"wire-plain-{uid}"
    # Tracing is off here: the trace member is still taken off for models
    # that forbid unknown fields and for dict events.
    subscriber = EventSubscriber(redis_url)
    subscriber.registry.register(topic, Strict)
    strict: list[Strict] = []
    dicts: list[dict[str, Any]] = []
    subscriber.on(topic)(lambda _, event: strict.append(event))
    subscriber.on(plain)(lambda _, event: dicts.append(event))
    publisher = EventPublisher(redis_url, tracing=True)
    publisher.registry.register(topic, Strict)
    with RawSubscriber(r, topic) as raw:
        async with subscriber, publisher:
            await publisher.publish(topic, Strict(n=7))
            await publisher.publish(plain, {"n": 8})
            await wait_until(lambda: len(strict) == 1 and len(dicts) == 1)
            await raw.aflush()

    message = json.loads(raw.messages[0][1])
    assert message["n"] == 7
    assert message["event_id"] == "fixed-id"
    assert list(message)[-1] == "_trace"
    assert message["_trace"]["traceparent"].startswith("00-")
    assert strict == [Strict(n=7)]
    assert "_trace" not in dicts[0]
    assert dicts[0]["n"] == 8


@pytest.mark.redis
async def test_stream_entry_carries_the_context_next_to_the_data_field(
    redis_url: str, r: redis.Redis, uid: str, spans: InMemorySpanExporter
) -> None:
    topic = f"fields-{uid}"
    async with EventPublisher(redis_url, transport="stream", tracing=True) as publisher:
        await publisher.publish(topic, {"n": 1, "event_id": "e1"})

    [(_, fields)] = entries(r, topic)
    sent = only(spans.get_finished_spans(), f"publish {topic}")
    trace_id, span_id = ids(sent)
    assert set(fields) == {"data", "traceparent"}
    assert sent.context is not None
    flags = int(sent.context.trace_flags)
    assert fields["traceparent"] == f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    assert json.loads(fields["data"])["n"] == 1
    assert "_trace" not in json.loads(fields["data"])


@pytest.mark.redis
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_with_tracing_off_nothing_changes_on_the_wire_and_no_span_is_made(
    redis_url: str,
    r: redis.Redis,
    uid: str,
    transport: str,
    spans: InMemorySpanExporter,
) -> None:
    topic = f"off-{uid}"
    publisher = EventPublisher(redis_url, transport=transport)
    publisher.registry.register(topic, Strict)
    event = Strict(n=3)
    expected = publisher.registry.encode(topic, event).decode()
    with RawSubscriber(r, topic) as raw:
        async with publisher:
            await publisher.publish(topic, event)

        await raw.aflush()

    if transport == "stream":
        [(_, fields)] = entries(r, topic)
        assert fields == {"data": expected}
    else:
        assert raw.messages == [(topic, expected)]

    assert spans.get_finished_spans() == ()


NO_OTEL_SCRIPT = """
import json, sys

import anyio

BLOCK = sys.argv[2] == "block"
if BLOCK:
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(name)
            return None

    sys.meta_path.insert(0, Blocker())

import redis_events
from redis_events import ConfigurationError, EventPublisher, EventSubscriber

before = {m for m in sys.modules if m.startswith("opentelemetry")}


async def main():
    got = []
    for transport in ("pubsub", "stream"):
        subscriber = EventSubscriber(sys.argv[1], transport=transport, group="g")
        subscriber.on("no-otel")(lambda topic, event: got.append(event))
        async with subscriber, EventPublisher(sys.argv[1], transport=transport) as p:
            await p.publish("no-otel", {"n": 1})
            while len(got) < (1 if transport == "pubsub" else 2):
                await anyio.sleep(0.01)
    after = {m for m in sys.modules if m.startswith("opentelemetry")}
    loaded = "redis_events.tracing" in sys.modules
    error = None
    try:
        EventPublisher(sys.argv[1], tracing=True)
    except ConfigurationError as exc:
        error = str(exc)
    print(json.dumps({
        "handled": len(got),
        "new": sorted(after - before),
        "any": sorted(after),
        "tracing_loaded": loaded,
        "error": error,
    }))


anyio.run(main)
"""


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["installed", "block"])
def test_tracing_off_imports_no_opentelemetry(redis_url: str, mode: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_OTEL_SCRIPT, redis_url, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["handled"] == 2
    assert report["new"] == []
    assert report["tracing_loaded"] is False
    if mode == "block":
        # Without the extra: nothing at all, and asking for tracing says how.
        assert report["any"] == []
        assert "redis-events[otel]" in report["error"]
    else:
        # With OpenTelemetry installed, redis-py itself imports part of it
        # (its own metrics); tracing off adds nothing to that.
        assert report["error"] is None
        assert "opentelemetry.trace.propagation.tracecontext" not in report["any"]


def test_trace_member_round_trips_and_anything_else_is_left_alone() -> None:
    context = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}

    joined = add_to_json(b'{"n":1,"m":{"x":2}}', context)
    assert json.loads(joined)["_trace"] == context
    assert split_json(joined) == (b'{"n":1,"m":{"x":2}}', context)
    assert split_json(add_to_json(b"{}", context)) == (b"{}", context)
    assert add_to_json(b"[1]", context) == b"[1]"
    # A nested member of that name, or a broken one, is not the envelope's.
    for data in (
        b'{"a":{"b":1,"_trace":{"traceparent":"x"}}}',
        b'{"a":1,"_trace":{"traceparent":"x"}',
        b'{"a":1,"_trace":{"traceparent":"x"},"z":{}}',
        b'{"s":"a,\\"_trace\\":{}}',
    ):
        assert split_json(data) == (data, None)

    # Only the W3C fields come out of it.
    data = b'{"a":1,"_trace":{"traceparent":"p","baggage":"b","tracestate":3}}'
    assert split_json(data) == (b'{"a":1}', {"traceparent": "p"})
