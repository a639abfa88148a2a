"""Prometheus metrics and /healthz, scraped over HTTP from a real subscriber."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from redis_events import EventPublisher, EventSubscriber
from redis_events._keys import dead_letter_key, stream_key
from redis_events.dispatcher import Delivery, Outcome
from redis_events.metrics import OTHER_TOPICS, Metrics
from redis_events.processor._cli import ProcessorSettings, build_parser
from tests.helpers import poll_until, wait_until
from tests.redis_server import free_port
from tests.test_cli import PROCESSOR, clean_environment

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import redis

    from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

TRANSPORTS = ["pubsub", "stream"]


class Job(BaseModel):
    """The event of the tests' topic: ``fail`` makes the handler raise."""

    n: int
    fail: bool = False


def fetch(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the metrics server; return status and body."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """``fetch`` from a worker thread, so the server keeps running."""
    return await anyio.to_thread.run_sync(fetch, port, path)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse Prometheus text into ``{(name, labels): value}``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value

    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """Return one sample's value, or ``None`` when it is not there."""
    return samples(text).get((name, frozenset(labels.items())))


@contextlib.asynccontextmanager
async def serving(subscriber: EventSubscriber, metrics: Metrics) -> AsyncIterator[int]:
    """Run ``subscriber`` and the metrics server; yield the server's port."""
    async with metrics.serving(port=0) as port, subscriber:
        yield port


def make_subscriber(
    url: str, transport: str, topic: str, uid: str, **options: Any
) -> tuple[EventSubscriber, list[int]]:
    """A subscriber with a ``Job`` handler; the list collects handled ``n``."""
    subscriber = EventSubscriber(
        url, transport=transport, group=f"g-{uid}", start_from="all", **options
    )
    subscriber.registry.register(topic, Job)
    handled: list[int] = []

    @subscriber.on(topic)
    async def handle(topic: str, event: Job) -> None:
        if event.fail:
            msg = f"job {event.n} fails on purpose"
            raise ValueError(msg)

        handled.append(event.n)

    return subscriber, handled


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_counters_per_topic_after_good_failing_and_bad_events(
    redis_url: str, r: redis.Redis, uid: str, transport: str
) -> None:
    topic = f"metrics-{uid}"
    subscriber, handled = make_subscriber(
        redis_url, transport, topic, uid, max_deliveries=1
    )
    metrics = Metrics(refresh_interval=0)
    metrics.attach(subscriber)
    good, failing, bad = 7, 2, 3
    async with (
        serving(subscriber, metrics) as port,
        EventPublisher(
            redis_url, transport=transport, registry=subscriber.registry
        ) as publisher,
    ):
        for n in range(good):
            await publisher.publish(topic, {"n": n})

        for n in range(failing):
            await publisher.publish(topic, {"n": 100 + n, "fail": True})

        for _ in range(bad):
            if transport == "stream":
                r.xadd(stream_key(topic), {"data": "not json"})
            else:
                r.publish(topic, "not json")

        stats = subscriber.get_stats
        await wait_until(
            lambda: (
                stats()["events_handled"] == good
                and stats()["handler_errors"] == failing
                and stats()["invalid_events"] == bad
                and stats().get("dead_lettered", 0)
                == (failing + bad if transport == "stream" else 0)
            )
        )
        status, text = await scrape(port)

    assert status == 200
    assert sorted(handled) == list(range(good))
    assert value(text, "redis_events_events_received_total", topic=topic) == (
        good + failing + bad
    )
    assert value(text, "redis_events_events_handled_total", topic=topic) == good
    assert value(
        text, "redis_events_events_failed_total", topic=topic, reason="error"
    ) == (failing)
    assert (
        value(text, "redis_events_events_failed_total", topic=topic, reason="timeout")
        == 0
    )
    assert value(text, "redis_events_decode_errors_total", topic=topic) == bad
    dead = failing + bad if transport == "stream" else 0
    assert value(text, "redis_events_events_dead_lettered_total", topic=topic) == dead
    assert value(text, "redis_events_in_flight", topic=topic) == 0
    assert (
        value(text, "redis_events_handler_duration_seconds_count", topic=topic)
        == good + failing
    )
    assert (
        value(
            text, "redis_events_handler_duration_seconds_bucket", topic=topic, le="+Inf"
        )
        == good + failing
    )
    assert value(text, "redis_events_reconnects_total") == 0
    assert value(text, "redis_events_redis_up") == 1
    if transport == "stream":
        labels = {"topic": topic, "group": f"g-{uid}"}
        assert value(text, "redis_events_group_lag", **labels) == 0
        assert value(text, "redis_events_group_pending", **labels) == 0
        assert value(text, "redis_events_dead_letters", topic=topic) == dead
        assert r.xlen(dead_letter_key(topic)) == dead


async def test_stream_lag_pending_and_oldest_age_follow_a_known_backlog(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"backlog-{uid}"
    group = f"g-{uid}"
    # Entry ids at the start of 1970: the oldest pending entry is decades old.
    for n in range(1, 11):
        r.xadd(stream_key(topic), {"data": json.dumps({"n": n})}, id=f"{n}-0")

    release = anyio.Event()
    subscriber = EventSubscriber(
        redis_url,
        transport="stream",
        group=group,
        start_from="all",
        max_concurrency=2,
        read_count=10,
    )
    subscriber.registry.register(topic, Job)
    done: list[int] = []

    @subscriber.on(topic)
    async def handle(topic: str, event: Job) -> None:
        await release.wait()
        done.append(event.n)

    metrics = Metrics(refresh_interval=0)
    metrics.attach(subscriber)
    labels = {"topic": topic, "group": group}
    async with serving(subscriber, metrics) as port:
        # Two handler slots, both held: two entries delivered, eight waiting.
        await wait_until(lambda: subscriber.get_stats()["in_flight"] == 2)
        _, during = await scrape(port)
        release.set()
        await wait_until(lambda: len(done) == 10)
        await wait_until(lambda: subscriber.get_stats()["acked"] == 10)
        _, after = await scrape(port)

    assert value(during, "redis_events_group_lag", **labels) == 8
    assert value(during, "redis_events_group_pending", **labels) == 2
    age = value(during, "redis_events_group_oldest_pending_age_seconds", **labels)
    assert age is not None
    assert age > 50 * 365 * 24 * 3600
    assert value(during, "redis_events_group_consumers", **labels) == 1
    assert value(during, "redis_events_in_flight", topic=topic) == 2
    assert value(after, "redis_events_group_lag", **labels) == 0
    assert value(after, "redis_events_group_pending", **labels) == 0
    assert value(after, "redis_events_group_oldest_pending_age_seconds", **labels) == 0
    assert value(after, "redis_events_events_handled_total", topic=topic) == 10


@pytest.mark.fault
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_healthz_is_200_while_running_and_503_once_redis_is_gone(
    own_redis_server: RedisServer, uid: str, transport: str
) -> None:
    topic = f"health-{uid}"
    subscriber, _ = make_subscriber(
        own_redis_server.url,
        transport,
        topic,
        uid,
        socket_timeout=1,
        socket_connect_timeout=1,
    )
    metrics = Metrics(refresh_interval=0, redis_timeout=0.5, stale_after=0)
    metrics.attach(subscriber)
    async with serving(subscriber, metrics) as port:
        up_status, up_body = await scrape(port, "/healthz")
        _, up_metrics = await scrape(port)
        own_redis_server.stop()
        # The consume loop notices too: what /healthz reads as "consuming".
        await wait_until(lambda: not subscriber.connected)
        down_status, down_body = await scrape(port, "/healthz")
        metrics_status, down_metrics = await scrape(port)

    assert up_status == 200
    up = json.loads(up_body)
    assert up["redis"] == "up"
    assert up["consuming"] is True
    assert up["transport"] == transport
    assert value(up_metrics, "redis_events_redis_up") == 1
    assert down_status == 503
    down = json.loads(down_body)
    assert down["redis"] == "down"
    assert down["consuming"] is False
    assert "PING" in down["reason"]
    # Scraping never fails because Redis does; it says Redis is down.
    assert metrics_status == 200
    assert value(down_metrics, "redis_events_redis_up") == 0
    assert value(down_metrics, "redis_events_group_lag", topic=topic) is None


@pytest.mark.fault
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reconnects_are_counted_after_a_redis_restart(
    own_redis_server: RedisServer, uid: str, transport: str
) -> None:
    subscriber, _ = make_subscriber(own_redis_server.url, transport, f"re-{uid}", uid)
    metrics = Metrics()
    metrics.attach(subscriber)
    async with serving(subscriber, metrics) as port:
        own_redis_server.restart()
        await wait_until(lambda: subscriber.get_stats()["reconnects"] == 1, timeout=30)
        _, text = await scrape(port)

    assert value(text, "redis_events_reconnects_total") == 1
    attempts = value(text, "redis_events_reconnect_attempts_total")
    assert attempts is not None
    assert attempts >= 1


async def test_healthz_is_503_when_the_subscriber_is_not_running(
    redis_url: str, uid: str
) -> None:
    subscriber, _ = make_subscriber(redis_url, "pubsub", f"idle-{uid}", uid)
    metrics = Metrics()
    metrics.attach(subscriber)
    async with metrics.serving() as port:
        status, body = await scrape(port, "/healthz")

    report = json.loads(body)
    assert status == 503
    assert report["redis"] == "up"
    assert report["consuming"] is False
    assert report["reason"] == "the subscriber is not running"


async def test_other_paths_get_404_and_nothing_is_left_open_after_the_block(
    redis_url: str, uid: str
) -> None:
    subscriber, _ = make_subscriber(redis_url, "pubsub", f"paths-{uid}", uid)
    metrics = Metrics()
    metrics.attach(subscriber)
    async with serving(subscriber, metrics) as port:
        missing, _ = await scrape(port, "/")
        await scrape(port, "/healthz")

    assert missing == 404
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass


async def test_a_taken_port_raises_oserror(redis_url: str) -> None:
    metrics = Metrics()
    async with metrics.serving() as port:
        with pytest.raises(OSError, match="ddress"):
            async with Metrics().serving(port=port):
                pass


def make_delivery(topic: str) -> Delivery:
    return Delivery(topic=topic, event={"n": 1})


def test_two_instances_keep_their_own_counts() -> None:
    first, second = Metrics(), Metrics()
    for _ in range(3):
        first.received("a")

    second.received("a")

    assert (
        value(first.render().decode(), "redis_events_events_received_total", topic="a")
        == 3
    )
    assert (
        value(second.render().decode(), "redis_events_events_received_total", topic="a")
        == 1
    )
    assert first.registry is not second.registry


def test_topics_past_max_topics_share_one_label() -> None:
    metrics = Metrics(max_topics=2)
    for name in ("t1", "t2", "t3", "t4", "t1"):
        delivery = make_delivery(name)
        metrics.received(name)
        token = metrics.started(delivery)
        metrics.finished(delivery, Outcome.HANDLED, token)

    text = metrics.render().decode()
    assert value(text, "redis_events_events_received_total", topic="t1") == 2
    assert value(text, "redis_events_events_received_total", topic="t2") == 1
    assert value(text, "redis_events_events_received_total", topic=OTHER_TOPICS) == 2
    assert value(text, "redis_events_events_handled_total", topic=OTHER_TOPICS) == 2
    assert value(text, "redis_events_events_received_total", topic="t3") is None


def test_metrics_port_and_host_come_from_flags_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = build_parser().parse_args(
        ["--metrics-port", "9464", "--metrics-host", "0.0.0.0"]
    )
    assert args.metrics_port == 9464
    assert args.metrics_host == "0.0.0.0"

    monkeypatch.setenv("REDIS_EVENTS_METRICS_PORT", "9555")
    settings = ProcessorSettings()
    assert settings.metrics_port == 9555
    assert settings.metrics_host == "127.0.0.1"

    monkeypatch.delenv("REDIS_EVENTS_METRICS_PORT")
    assert ProcessorSettings().metrics_port == 0


ORIGINAL_KEY_EVENT = (
    '{"event_type": "key_submitted", "key_value": "abc123", '
    '"token_name": "Token1", "timestamp": "2024-01-01T10:00:00"}'
)


def healthy(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Tell whether the processor answers /healthz with 200 yet."""
    assert process.poll() is None, "the processor exited early"
    try:
        return fetch(port, "/healthz")[0] == 200
    except urllib.error.URLError:
        return False


@pytest.mark.fault
def test_processor_serves_metrics_with_its_group_lag_and_closes_them_at_sigterm(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_environment(
        REDIS_EVENTS_METRICS_PORT=str(port), REDIS_EVENTS_START_FROM="all"
    )
    log = tmp_path / "processor.log"
    client = own_redis_server.client()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *PROCESSOR,
                "--redis-url",
                own_redis_server.url,
                "--transport",
                "stream",
                "--stats-interval",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=env,
        )
    try:
        poll_until(lambda: healthy(port, process), timeout=30)
        client.xadd(stream_key("key_submission"), {"data": ORIGINAL_KEY_EVENT})
        handled = [
            f'redis_events_events_handled_total{{topic="{topic}"}} 1.0'
            for topic in ("key_submission", "processing_results")
        ]
        poll_until(
            lambda: all(line in fetch(port, "/metrics")[1] for line in handled),
            timeout=30,
        )
        # The group state is read at most once a second: poll for it too.
        drained = (
            'redis_events_group_lag{group="redis-events",topic="key_submission"} 0.0'
        )
        poll_until(lambda: drained in fetch(port, "/metrics")[1], timeout=30)
        status, text = fetch(port, "/metrics")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

        client.close()

    output_text = log.read_text(errors="replace")
    assert code == 0, output_text
    assert status == 200
    labels = {"topic": "key_submission", "group": "redis-events"}
    assert value(text, "redis_events_group_lag", **labels) == 0
    assert (
        value(text, "redis_events_events_received_total", topic="key_submission") == 1
    )
    # The processor's own result went to processing_results and came back.
    assert (
        value(text, "redis_events_events_handled_total", topic="processing_results")
        == 1
    )
    assert "abc123" not in text
    assert "abc123" not in output_text
    with pytest.raises(urllib.error.URLError):
        fetch(port, "/healthz")
