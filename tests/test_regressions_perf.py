"""Regressions of the break-it review of the performance rewrite and clusters.

One test per defect found by attacking the dispatcher, the packed pub/sub
batches and the leaner readers of the ``perf`` merge, and the cluster and
Sentinel support of the ``cluster`` merge; each failed on the merged code
(e95a4b4) and passes since. The defect is in the docstring.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import BaseModel, ConfigDict

from redis_events import (
    ConfigurationError,
    EventPublisher,
    EventSubscriber,
    RedisUnavailableError,
    Settings,
    current_delivery,
)
from redis_events._envelope import add_to_json
from redis_events._keys import dead_letter_key, stream_key
from redis_events.dispatcher import Delivery, Dispatcher, Outcome, Stats
from redis_events.observers import EventObserver
from tests.helpers import wait_until
from tests.redis_server import free_port

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import redis

    from tests.cluster_servers import ClusterServers
    from tests.redis_server import RedisServer

# Freezes of the server during one batch: each shorter than the socket
# timeout, all of them together longer.
FREEZES = 3
FREEZE_SECONDS = 0.8
BATCH_TIMEOUT = 2.0
BATCH = 100_000
BATCH_STARTED = 1000

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Strict(BaseModel):
    """A model that refuses unknown fields, such as a trace member left in."""

    model_config = ConfigDict(extra="forbid")

    n: int


class Arrivals(EventObserver):
    """Record the topic of every ``received`` call."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def received(self, topic: str) -> None:
        """Record ``topic``."""
        self.topics.append(topic)


@pytest.mark.redis
@pytest.mark.parametrize("with_pattern", [False, True], ids=["direct", "grouped"])
async def test_both_pubsub_routes_take_off_the_trace_and_tell_observers(
    redis_url: str, r: redis.Redis, uid: str, with_pattern: bool
) -> None:
    """The route for subscribers without patterns skipped two steps.

    It decoded the message with the publisher's ``_trace`` member still in
    it, so a model that forbids unknown fields rejected every traced event
    and no handler got the trace context; and it never called the
    observers' ``received``, so ``redis_events_events_received_total``
    stayed at 0. Both routes now decode in one place.
    """
    topic = f"route-{uid}"
    subscriber = EventSubscriber(redis_url)
    subscriber.registry.register(topic, Strict)
    arrivals = Arrivals()
    subscriber.add_observer(arrivals)
    got: list[tuple[int, dict[str, str] | None]] = []

    @subscriber.on(topic)
    async def handle(_: str, event: Strict) -> None:
        got.append((event.n, current_delivery().trace_context))

    if with_pattern:
        subscriber.on_pattern(f"other-{uid}-*")(handle)

    async with subscriber:
        for n in range(3):
            data = json.dumps({"n": n}).encode()
            r.publish(topic, add_to_json(data, {"traceparent": TRACEPARENT}))

        await wait_until(lambda: len(got) == 3)

    assert got == [(n, {"traceparent": TRACEPARENT}) for n in range(3)]
    assert arrivals.topics == [topic] * 3
    assert subscriber.get_stats()["invalid_events"] == 0


def _publishes(client: redis.Redis) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return stats.get("cmdstat_publish", {}).get("calls", 0)


def _freeze_during_batch(server: RedisServer, stop: threading.Event) -> None:
    """Once Redis runs the batch's PUBLISHes, freeze it a few times."""
    client = server.client()
    try:
        while _publishes(client) < BATCH_STARTED and not stop.wait(0.001):
            pass
    finally:
        client.close()

    for _ in range(FREEZES):
        if stop.is_set():
            return

        server.freeze()
        time.sleep(FREEZE_SECONDS)
        server.thaw()
        # Thawed just long enough to answer part of the batch.
        time.sleep(0.02)


@pytest.mark.redis
async def test_a_batch_that_keeps_progressing_is_not_cut_by_the_socket_timeout(
    own_redis_server: RedisServer, uid: str
) -> None:
    """A packed PUBLISH batch had ``socket_timeout`` for all of its replies.

    A pipeline waits up to ``socket_timeout`` for each reply; the packed
    batch bounded the whole exchange by it, so a large batch, or one that a
    busy server answered in several bursts, failed with
    ``RedisUnavailableError`` from a healthy server, after part of it was
    delivered. The bound is now on each wait for progress.
    """
    topic = f"packed-{uid}"
    stop = threading.Event()
    freezer = threading.Thread(
        target=_freeze_during_batch, args=(own_redis_server, stop)
    )
    freezer.start()
    try:
        async with EventPublisher(
            own_redis_server.url,
            socket_timeout=BATCH_TIMEOUT,
            publish_retry_timeout=0,
        ) as publisher:
            counts = await publisher.publish_many(
                topic, [{"n": n} for n in range(BATCH)]
            )
            # The same pooled connection serves the next batch.
            assert await publisher.publish_many(topic, [{"n": 0}]) == [0]
    finally:
        stop.set()
        await anyio.to_thread.run_sync(freezer.join)

    assert counts == [0] * BATCH
    assert publisher.get_stats() == {
        "events_published": BATCH + 1,
        "publish_retries": 0,
        "publish_failures": 0,
    }


async def test_an_unreachable_cluster_is_retried_and_reported_as_unavailable() -> None:
    """No reachable seed node was neither retried nor called unavailable.

    redis-py raises ``RedisClusterUnreachableError``, which is neither a
    ``RedisError`` nor a ``ConnectionError``, when no seed node answers: a
    publish failed at once with the root ``RedisEventsError`` instead of
    retrying, and subscribers' ``connect`` raised the same.
    """
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    publisher = EventPublisher(url, publish_retry_timeout=0.3)
    with pytest.raises(RedisUnavailableError, match="RedisClusterUnreachableError"):
        await publisher.publish_many("t", [{"n": 1}])

    await publisher.close()
    assert publisher.get_stats()["publish_retries"] >= 1
    with pytest.raises(RedisUnavailableError):
        async with EventSubscriber(url) as subscriber:
            subscriber.on("t")(lambda _, event: None)


@pytest.mark.redis
async def test_subscribers_outlive_a_restart_of_the_whole_cluster(
    own_redis_cluster: ClusterServers, uid: str
) -> None:
    """A stream subscriber died when every cluster node was down at once.

    Rebuilding the slot map with no node up raised
    ``RedisClusterUnreachableError``, which the consumer's retry loop did
    not catch; and a connection the settling nodes closed during the
    group's re-creation ended it too (see the test below).
    """
    cluster = own_redis_cluster
    topic = f"bounce-{uid}"
    # The nodes keep no data: the group is created again, and reads the
    # stream from its start.
    # A short backoff cap: the readers come back soon after the cluster does
    # (the default cap, 5 s, can add up to 5 s to each reader's recovery).
    stream = EventSubscriber(
        cluster.url,
        transport="stream",
        group=f"g-{uid}",
        start_from="all",
        reconnect_backoff_cap=1,
    )
    shard = EventSubscriber(cluster.url, reconnect_backoff_cap=1)
    got: dict[str, list[int]] = {"stream": [], "pubsub": []}
    stream.on(topic)(lambda _, event: got["stream"].append(event["n"]))
    shard.on(topic)(lambda _, event: got["pubsub"].append(event["n"]))
    async with (
        stream,
        shard,
        EventPublisher(cluster.url, transport="stream") as to_stream,
        EventPublisher(cluster.url) as to_shard,
    ):
        await to_stream.publish(topic, {"n": 0})
        await to_shard.publish(topic, {"n": 0})
        await wait_until(lambda: got == {"stream": [0], "pubsub": [0]})
        for node in cluster.nodes:
            node.stop()

        # Down long enough for both readers to try to rebuild the slot map.
        await anyio.sleep(1)
        for node in cluster.nodes:
            node.start()

        await anyio.to_thread.run_sync(cluster.wait_healthy)
        await to_stream.publish(topic, {"n": 1})
        with anyio.fail_after(30):
            # Pub/sub keeps nothing for a subscriber that is not back yet.
            while len(got["pubsub"]) < 2:
                await to_shard.publish(topic, {"n": 1})
                await anyio.sleep(0.1)

        await wait_until(lambda: got["stream"] == [0, 1], timeout=20)
        assert set(got["pubsub"]) == {0, 1}


@pytest.mark.redis
async def test_a_lost_connection_while_the_group_is_created_again_is_retried(
    own_redis_server: RedisServer, uid: str
) -> None:
    """The stream consumer created a lost group again outside its retry.

    It did so from inside its error handler: a connection lost or timed out
    during that ``XGROUP CREATE`` (a server restarting, cluster nodes that
    settle) ended the subscriber with ``RedisUnavailableError``. Here the
    group is destroyed and writes are paused in one transaction, so the
    re-creation times out once.
    """
    topic, group = f"regroup-{uid}", f"g-{uid}"
    got: list[int] = []
    subscriber = EventSubscriber(
        own_redis_server.url,
        transport="stream",
        group=group,
        socket_timeout=0.5,
        block_seconds=0.2,
    )
    subscriber.on(topic)(lambda _, event: got.append(event["n"]))
    admin = own_redis_server.client()
    async with (
        subscriber,
        EventPublisher(
            own_redis_server.url, transport="stream", publish_retry_timeout=30
        ) as publisher,
    ):
        await publisher.publish(topic, {"n": 0})
        await wait_until(lambda: got == [0])
        with admin.pipeline(transaction=True) as both:
            both.execute_command("XGROUP", "DESTROY", stream_key(topic), group)  # type: ignore[no-untyped-call]  # untyped upstream
            both.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # type: ignore[no-untyped-call]  # untyped upstream
            assert both.execute() == [1, "OK"]

        await wait_until(lambda: subscriber.get_stats()["reconnect_attempts"] >= 1)
        await publisher.publish(topic, {"n": 1})
        await wait_until(lambda: got == [0, 1])

    admin.close()
    assert subscriber.get_stats()["groups_recreated"] == 1


OUTCOME_COUNTERS = (
    "events_handled",
    "handler_errors",
    "handler_timeouts",
    "handlers_cancelled",
    "invalid_events",
    "unrouted_events",
)


@pytest.mark.redis
@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_every_event_received_is_in_one_outcome_counter_after_a_stop(
    own_redis_server: RedisServer, uid: str, ordered: bool
) -> None:
    """Events dropped at a stop were received but counted nowhere.

    Two kinds were lost from the counts: one waiting behind a busy ordering
    key (dropped unstarted), and one the reader held while it waited for a
    handler slot. With one handler per event, ``events_received`` must equal
    the sum of the outcome counters.
    """
    topic = f"counts-{uid}"
    subscriber = EventSubscriber(
        own_redis_server.url, max_concurrency=3, shutdown_timeout=0
    )
    started: list[int] = []

    @subscriber.on(topic)
    async def handle(_: str, event: dict[str, int]) -> None:
        started.append(event["n"])
        await anyio.sleep_forever()

    if ordered:
        subscriber.order_by(topic, "k")

    async with EventPublisher(own_redis_server.url) as publisher, subscriber:
        await publisher.publish_many(topic, [{"n": n, "k": 0} for n in range(6)])
        # Three accepted, the fourth held by the reader waiting for a slot.
        await wait_until(lambda: subscriber.get_stats()["events_received"] == 4)
        await wait_until(lambda: len(started) == (1 if ordered else 3))

    stats = subscriber.get_stats()
    assert stats["events_received"] == 4
    assert sum(stats[name] for name in OUTCOME_COUNTERS) == 4
    assert stats["handlers_cancelled"] == 4


@pytest.mark.redis
async def test_calls_of_an_event_held_at_a_stop_are_all_counted(
    own_redis_server: RedisServer, uid: str
) -> None:
    """The handlers after the one waiting for a slot were counted nowhere."""
    topic = f"three-{uid}"
    subscriber = EventSubscriber(
        own_redis_server.url, max_concurrency=1, shutdown_timeout=0
    )
    started: list[str] = []

    def handler(name: str) -> Callable[[str, object], Awaitable[None]]:
        async def handle(_: str, event: object) -> None:
            started.append(name)
            await anyio.sleep_forever()

        handle.__qualname__ = name
        return handle

    for name in ("a", "b", "c"):
        subscriber.on(topic)(handler(name))

    async with EventPublisher(own_redis_server.url) as publisher, subscriber:
        await publisher.publish(topic, {"n": 0})
        await wait_until(lambda: started == ["a"])

    stats = subscriber.get_stats()
    assert stats["events_received"] == 1
    assert stats["handlers_cancelled"] == 3
    assert sum(stats[name] for name in OUTCOME_COUNTERS) == 3


def _key_or_fail(event: dict[str, object]) -> object:
    """An ordering key function that fails on events without ``k``."""
    key = event["k"]
    return [key] if key == "list" else key


@pytest.mark.redis
@pytest.mark.parametrize("transport", ["pubsub", "stream"])
async def test_an_event_whose_ordering_key_fails_is_rejected_not_fatal(
    redis_url: str, r: redis.Redis, uid: str, transport: str
) -> None:
    """An ordering key function that raised, or returned an unhashable value,
    ended the subscriber (on pub/sub as a bare ``ExceptionGroup``).

    Such an event is bad input: it is now rejected like an undecodable one,
    counted in ``invalid_events``, logged, and dead-lettered on streams;
    the events around it are handled in order.
    """
    topic = f"keyfail-{uid}"
    subscriber = EventSubscriber(redis_url, transport=transport, group=f"g-{uid}")
    got: list[int] = []
    subscriber.on(topic)(lambda _, event: got.append(event["n"]))
    subscriber.order_by(topic, _key_or_fail)
    events: list[dict[str, Any]] = [
        {"n": 0, "k": 1},
        {"n": 1},
        {"n": 2, "k": "list"},
        {"n": 3, "k": 1},
    ]
    async with EventPublisher(redis_url, transport=transport) as publisher:
        async with subscriber:
            for event in events:
                await publisher.publish(topic, event)

            await wait_until(lambda: got == [0, 3])
            await wait_until(lambda: subscriber.get_stats()["invalid_events"] == 2)

    if transport == "stream":
        letters: list[Any] = r.xrange(dead_letter_key(topic)) or []
        assert [json.loads(fields["data"])["n"] for _, fields in letters] == [1, 2]


@pytest.mark.parametrize(
    ("url", "options", "addresses", "db"),
    [
        ("redis+cluster://[::1]", {}, (("::1", 6379),), 0),
        ("redis+cluster://a:7000,[::1]", {}, (("a", 7000), ("::1", 6379)), 0),
        ("redis://[::1]", {"topology": "cluster"}, (("::1", 6379),), 0),
        (
            "redis+sentinel://[fe80::1%25eth0]:26379/s",
            {},
            (("fe80::1%eth0", 26379),),
            0,
        ),
        ("redis+sentinel://s:26379/events/2", {}, (("s", 26379),), 2),
    ],
)
def test_ipv6_seed_addresses_take_the_default_port_and_their_zone(
    url: str, options: dict[str, Any], addresses: tuple[tuple[str, int], ...], db: int
) -> None:
    """A bracketed IPv6 address without a port was refused.

    The port was taken after the last colon, which for ``[::1]`` is inside
    the brackets; and a percent-encoded zone stayed encoded.
    """
    deployment = Settings(redis_url=url, **options).deployment
    assert deployment.addresses == addresses
    assert deployment.db == db


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+cluster://a:7000,b:\u0663\u0660\u0660\u0660", "host:port"),
        ("redis+cluster://a:7000,b:\u00b2", "host:port"),
        ("redis+cluster://a:7000,::1:7001", "IPv6 address in brackets"),
        ("redis+cluster://a:7000,[::1]x", "IPv6 address in brackets"),
        ("redis+sentinel://u:secret@s:26379/events/\u0663", "/service"),
    ],
)
def test_ports_and_databases_are_ascii_digits(url: str, said: str) -> None:
    """Ports and database numbers were read with ``str.isdigit()``.

    It takes digits of any script: a port of Arabic-Indic digits became
    3000 and a superscript one raised ``int()``'s own error; a Sentinel
    database of such digits was accepted too. An IPv6 address without
    brackets had its last group taken for the port.
    """
    with pytest.raises(ConfigurationError, match=said) as caught:
        Settings.from_arguments(url)

    assert "secret" not in str(caught.value)


class ControlFlow(BaseException):
    """What some libraries raise for their own control flow."""


@pytest.mark.redis
async def test_a_handler_that_raises_another_base_exception_just_failed(
    redis_url: str, uid: str
) -> None:
    """A BaseException that is not an Exception ended the subscriber.

    With a handler timeout set it hung it instead (see the observer test
    below). Only ``SystemExit`` and ``KeyboardInterrupt`` mean "stop"; anything else
    a handler raises is that handler's failure, counted and logged.
    """
    topic = f"base-{uid}"
    subscriber = EventSubscriber(redis_url)
    got: list[int] = []

    @subscriber.on(topic)
    async def handle(_: str, event: dict[str, int]) -> None:
        got.append(event["n"])
        if event["n"] == 1:
            raise ControlFlow

    async with EventPublisher(redis_url) as publisher, subscriber:
        for n in range(3):
            await publisher.publish(topic, {"n": n})

        await wait_until(lambda: len(got) == 3)
        await wait_until(lambda: subscriber.get_stats()["events_handled"] == 2)

    assert subscriber.get_stats()["handler_errors"] == 1


class Broken(EventObserver):
    """An observer that raises in every hook."""

    def received(self, topic: str) -> None:
        """Raise."""
        raise RuntimeError(topic)

    def rejected(self, topic: str | None) -> None:
        """Raise."""
        raise RuntimeError(topic)

    def started(self, delivery: Delivery) -> object:
        """Raise."""
        raise RuntimeError(delivery.topic)

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        """Raise."""
        raise RuntimeError(delivery.topic)


@pytest.mark.redis
@pytest.mark.parametrize("alongside", [False, True], ids=["alone", "with-another"])
async def test_an_observer_that_raises_is_logged_and_the_events_go_on(
    redis_url: str,
    r: redis.Redis,
    uid: str,
    caplog: pytest.LogCaptureFixture,
    alongside: bool,
) -> None:
    """An observer's exception ended the subscriber, or hung it for good.

    With a handler timeout (60 s by default), the worker that the exception
    ended never counted itself out, so the shielded timeout watch, and the
    subscriber's block with it, waited forever, deaf to cancellation. Each
    failing hook is now logged at ERROR once (then at DEBUG), the other
    observers are still told, and a worker that an exception does end
    always counts itself out.
    """
    topic = f"observed-{uid}"
    subscriber = EventSubscriber(redis_url)
    arrivals = Arrivals()
    subscriber.add_observer(Broken())
    if alongside:
        subscriber.add_observer(arrivals)

    got: list[int] = []
    subscriber.on(topic)(lambda _, event: got.append(event["n"]))
    with caplog.at_level(logging.DEBUG, logger="redis_events.observers"):
        async with subscriber:
            for n in range(3):
                r.publish(topic, json.dumps({"n": n}))

            r.publish(topic, "not json")
            await wait_until(lambda: sorted(got) == [0, 1, 2])
            await wait_until(lambda: subscriber.get_stats()["invalid_events"] == 1)

    assert arrivals.topics == ([topic] * 4 if alongside else [])
    errors = [
        record.getMessage()
        for record in caplog.records
        if record.name == "redis_events.observers" and record.levelno == logging.ERROR
    ]
    # Not told of the end of calls whose start it failed to take.
    assert sorted(errors) == [
        f"Observer Broken failed in {hook}(); the event goes on without it"
        for hook in ("received", "rejected", "started")
    ]
    assert subscriber.get_stats()["events_handled"] == 3


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis+cluster://a:7000?password=secret", {}),
        ("redis+sentinel://s:26379/events?password=secret", {}),
        ("redis://a:7000?password=secret", {"topology": "cluster"}),
        ("redis+cluster://u:secret@a:7000#x", {}),
    ],
)
def test_a_query_on_a_cluster_or_sentinel_url_is_refused(
    url: str, options: dict[str, Any]
) -> None:
    """A cluster or Sentinel URL's query was ignored without a word.

    ``?password=`` works on a ``redis://`` URL (redis-py reads it), so the
    same on a cluster URL looked right, yet the password was dropped and
    Redis refused the connection later as if it were wrong.
    """
    with pytest.raises(ConfigurationError, match=r"no \?query") as caught:
        Settings.from_arguments(url, **options)

    assert "secret" not in str(caught.value)


async def test_a_job_is_reported_once_when_a_callback_raises() -> None:
    """A callback that raised after a call made the worker count it twice.

    The worker took the job as still in flight: ``in_flight`` went below 0,
    the transport was told ``CANCELLED`` after the call had ended, and not
    told how it ended. An observer set on ``Stats`` directly (not through
    ``add_observer``, which contains its errors) is such a callback.
    """
    outcomes: list[tuple[int, Outcome]] = []
    stats = Stats(observer=FinishFails())
    dispatcher = Dispatcher(
        max_concurrency=1,
        handler_timeout=60,
        shutdown_timeout=1,
        stats=stats,
        on_outcome=lambda d, o: outcomes.append((int(str(d.event_id)), o)),
    )

    async def handle(_: str, event: object) -> None:
        """Return at once."""

    async def run() -> None:
        async with dispatcher.running():
            await dispatcher.submit(handle, Delivery("t", {"event_id": "0"}))
            await dispatcher.submit(handle, Delivery("t", {"event_id": "1"}))
            await anyio.sleep_forever()

    with anyio.fail_after(10), pytest.raises(RuntimeError, match="finished"):
        await run()

    # The second job waited for the one worker, which the error ended.
    assert outcomes == [(0, Outcome.HANDLED), (1, Outcome.NOT_STARTED)]
    assert stats.in_flight == 0
    assert stats.events_handled == 1
    assert stats.handlers_cancelled == 1


class FinishFails(EventObserver):
    """An observer whose ``finished`` raises."""

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        """Raise."""
        raise RuntimeError("finished")


CHURN = 400


@pytest.mark.redis
async def test_subscription_churn_does_not_keep_every_forwarder_alive(
    redis_url: str, uid: str
) -> None:
    """Each ``subscription()`` block left its forwarder alive for the run.

    The dispatcher remembered, per handler, whether it is a coroutine
    function, in a dict that only grew: every block's forwarding closure,
    and the memory stream it feeds, stayed reachable until the subscriber
    stopped (2,000 blocks, 2,000 live streams). The cache is now bounded.
    """
    topic = f"churn-{uid}"
    subscriber = EventSubscriber(redis_url)
    subscriber.on(f"{topic}-kept")(lambda _, event: None)
    async with EventPublisher(redis_url) as publisher, subscriber:
        for n in range(CHURN):
            async with subscriber.subscription(topic) as deliveries:
                await publisher.publish(topic, {"n": n})
                with anyio.fail_after(10):
                    delivery = await deliveries.receive()

            assert isinstance(delivery.event, dict)
            assert delivery.event["n"] == n

        gc.collect()
        alive = sum(isinstance(o, MemoryObjectSendStream) for o in gc.get_objects())

    assert alive < CHURN / 2


async def test_a_plain_handler_past_its_timeout_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain handler that ran past ``handler_timeout`` left no trace.

    It cannot be cut short (it runs in a thread), so it ends as handled;
    but nothing said that it overran. It is now logged at WARNING.
    """
    stats = Stats()
    outcomes: list[Outcome] = []
    release = threading.Event()
    dispatcher = Dispatcher(
        max_concurrency=1,
        handler_timeout=0.05,
        shutdown_timeout=10,
        stats=stats,
        on_outcome=lambda d, o: outcomes.append(o),
    )

    def slow(_: str, event: object) -> None:
        release.wait(10)

    with (
        caplog.at_level(logging.WARNING, logger="redis_events.dispatcher"),
        anyio.fail_after(20),
    ):
        async with dispatcher.running():
            await dispatcher.submit(slow, Delivery("t", {"event_id": "e1"}))
            # Let the watch fire (it cancels the worker's call scope) before
            # the thread is let go: no public state shows it.
            await wait_until(lambda: _timeout_fired(dispatcher))
            release.set()

    assert outcomes == [Outcome.HANDLED]
    assert stats.handler_timeouts == 0
    [line] = [r.getMessage() for r in caplog.records if "ran past" in r.getMessage()]
    assert "(event e1)" in line


def _timeout_fired(dispatcher: Dispatcher) -> bool:
    workers = dispatcher._workers
    return bool(workers) and all(w.call_scope.cancel_called for w in workers)
