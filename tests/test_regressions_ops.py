"""Regressions of the break-it review of the CLI, metrics and tracing.

One test per defect found by attacking the ``redis-events`` commands, the
metrics server and the trace envelope; each failed before its fix. The
defect is in the docstring.
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import urllib.error
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)

from redis_events import (
    ConfigurationError,
    EventPublisher,
    EventSubscriber,
    Settings,
    _metrics_http,
)
from redis_events.dispatcher import Delivery, Outcome
from redis_events.metrics import Metrics
from tests.helpers import RawSubscriber, poll_until, wait_until
from tests.redis_server import free_port
from tests.test_cli import PROCESSOR, clean_environment
from tests.test_cli_events import Tails, invoke, stream_of, tails
from tests.test_metrics import fetch
from tests.test_tracing import Strict

if TYPE_CHECKING:
    from pathlib import Path

    import redis

    from tests.redis_server import RedisServer

__all__ = ["tails"]  # the fixture, imported for the tail tests here

# A file descriptor limit for the processor under test: enough to start and
# serve, far below the connections a client can open at it.
LOW_FD_LIMIT = 64
# Topics of long names that make /metrics larger than the kernel's buffers.
BIG_ANSWER_TOPICS = 4000


@pytest.mark.redis
@pytest.mark.parametrize(
    ("depth", "reason"),
    [(250, "recursion limit exceeded"), (5000, "nested too deeply")],
)
def test_publish_of_deeply_nested_json_exits_2_and_sends_nothing(
    redis_url: str, r: redis.Redis, uid: str, tmp_path: Path, depth: int, reason: str
) -> None:
    """Deep JSON made ``publish`` die with a traceback.

    Past Python's recursion limit, reading the JSON raised RecursionError;
    below it but past the decoder's limit, the event was encoded and then
    the check that decodes it again raised EventDecodeError unhandled.
    """
    topic = f"ops-{uid}"
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * depth + "1" + "}" * depth)

    result = invoke(
        "publish", topic, f"@{deep}", "--transport", "stream", "--redis-url", redis_url
    )

    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert "Traceback" not in result.output
    assert r.exists(stream_of(topic)) == 0


@pytest.mark.redis
def test_tail_shows_control_characters_of_names_and_types_escaped(
    redis_url: str, r: redis.Redis, tails: Tails, uid: str
) -> None:
    """A channel name or event_type with ESC reached the terminal raw.

    A pattern matches any channel name, so a publisher could clear the
    operator's screen or set its title through ``tail``'s header line.
    """
    tail = tails.start(f"ops-{uid}-*", "--count", "2", "--redis-url", redis_url)
    r.publish(f"ops-{uid}-\x1b[2J", '{"n": 1}')
    r.publish(f"ops-{uid}-x", json.dumps({"event_type": "\x1b]0;owned\x07"}))
    code = tail.wait()

    assert code == 0, tail.stderr
    out = tail.stdout
    assert "\x1b" not in out
    assert "\x07" not in out
    assert f"ops-{uid}-\\x1b[2J" in out
    assert "\\x1b]0;owned\\x07" in out
    assert "Stopped after 2 events." in tail.stderr


@pytest.mark.fault
def test_metrics_server_outlives_running_out_of_file_descriptors(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Many connections to /metrics made accept() fail with EMFILE.

    The failed accept ended the metrics server's task group, whose cancel
    scope held the processor's whole run: the processor stopped, exit 1.
    """
    port = free_port()
    log = tmp_path / "processor.log"

    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *PROCESSOR,
                "--redis-url",
                own_redis_server.url,
                "--metrics-port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=clean_environment(),
        )
    try:
        limit = (LOW_FD_LIMIT, LOW_FD_LIMIT)
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, limit)
        poll_until(lambda: answers(port, process), timeout=30)
        flood = [
            socket.create_connection(("127.0.0.1", port))
            for _ in range(2 * LOW_FD_LIMIT)
        ]
        try:
            # Held open, unanswered, until the server runs out of files.
            poll_until(lambda: out_of_files(log, process), timeout=30)
        finally:
            for connection in flood:
                connection.close()

        poll_until(lambda: answers(port, process), timeout=30)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    output_text = log.read_text(errors="replace")
    assert code == 0, output_text
    assert "Traceback" not in output_text


def out_of_files(log: Path, process: subprocess.Popen[bytes]) -> bool:
    """Tell whether the processor has logged a failed accept."""
    assert process.poll() is None, log.read_text(errors="replace")
    return "Could not accept a metrics connection" in log.read_text(errors="replace")


def answers(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Tell whether the processor answers /metrics with 200."""
    assert process.poll() is None, "the processor exited"
    try:
        return fetch(port, "/metrics")[0] == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.redis
async def test_traced_pubsub_publish_under_a_long_tracestate_reaches_strict_models(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    """A tracestate over ~1 KB put "_trace" where subscribers did not look.

    The member was appended whole, so it started before the tail that
    ``split_json`` searches: models with ``extra="forbid"`` rejected the
    event and ``dict`` handlers got a ``_trace`` field.
    """
    topic, plain = f"ops-trace-{uid}", f"ops-trace-plain-{uid}"
    subscriber = EventSubscriber(redis_url)
    subscriber.registry.register(topic, Strict)
    strict: list[Strict] = []
    dicts: list[dict[str, Any]] = []
    subscriber.on(topic)(lambda _, event: strict.append(event))
    subscriber.on(plain)(lambda _, event: dicts.append(event))
    publisher = EventPublisher(redis_url, tracing=True)
    publisher.registry.register(topic, Strict)
    state = TraceState([(f"vendor{i}", "v" * 200) for i in range(10)])
    parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=state,
    )
    with RawSubscriber(r, topic) as raw:
        async with subscriber, publisher:
            with trace.use_span(NonRecordingSpan(parent)):
                await publisher.publish(topic, Strict(n=7))
                await publisher.publish(plain, {"n": 8})

            stats = subscriber.get_stats
            await wait_until(lambda: stats()["events_received"] == 2)
            await wait_until(
                lambda: len(strict) + len(dicts) + stats()["invalid_events"] == 2
            )
            await raw.aflush()

    assert subscriber.get_stats()["invalid_events"] == 0
    assert strict == [Strict(n=7)]
    assert dicts[0]["n"] == 8
    assert "_trace" not in dicts[0]
    message = json.loads(raw.messages[0][1])
    # The trace itself still travels; only the oversized tracestate is left out.
    assert message["_trace"]["traceparent"].split("-")[1] == (
        "0af7651916cd43dd8448eb211c80319c"
    )
    assert "tracestate" not in message["_trace"]


@pytest.mark.redis
@pytest.mark.parametrize(
    "position", [f"{2**64}-0", f"0-{2**64}", "\u0661\u0667\u0660\u0660-0"]
)
def test_an_entry_id_redis_cannot_take_is_a_usage_error(
    redis_url: str, r: redis.Redis, uid: str, position: str
) -> None:
    """An id past 64 bits, or with non-ASCII digits, passed the check.

    Redis then refused it: ``replay`` exited 1 as if Redis had failed, and
    ``start_from`` was accepted until the group was created.
    """
    topic = f"ops-{uid}"
    r.xadd(stream_of(topic), {"data": '{"n": 1}'})

    result = invoke("replay", topic, "--from", position, "--redis-url", redis_url)

    assert result.exit_code == 2, result.output
    assert "--from must be all, an entry id" in result.output
    with pytest.raises(ConfigurationError, match="start_from must be"):
        Settings.from_arguments(redis_url, start_from=position)


async def test_a_client_that_stops_reading_metrics_is_cut_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sent a request and never read held its connection forever.

    Only reading the request had a timeout: with an answer larger than the
    kernel's buffers, the send never finished, and every such client kept a
    task and a file descriptor until the server stopped.
    """
    monkeypatch.setattr(_metrics_http, "_ANSWER_TIMEOUT", 0.5)
    metrics = Metrics(max_topics=10_000)
    for n in range(BIG_ANSWER_TOPICS):
        # Long label values make an answer of several megabytes.
        topic = f"ops-a-long-topic-name-to-make-a-large-answer-{n:05}-{'x' * 150}"
        metrics.received(topic)
        delivery = Delivery(topic=topic, event={}, pattern=None)
        metrics.finished(delivery, Outcome.HANDLED, metrics.started(delivery))

    size = len(metrics.render())
    async with metrics.serving(port=0) as port:
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", port))
            client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            await wait_until(
                lambda: "did not read its answer" in caplog.text, timeout=30
            )
            received = await anyio.to_thread.run_sync(read_all, client)

    assert size > 8 * 2**20
    assert len(received) < size


def read_all(client: socket.socket) -> bytes:
    """Read from ``client`` until the server closes or resets the connection."""
    client.settimeout(30)
    data = b""
    try:
        while chunk := client.recv(2**16):
            data += chunk
    except ConnectionResetError:
        pass

    return data
