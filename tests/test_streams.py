"""The streams transport on a real redis-server.

Publishing (entry ids, one pipelined round trip, ``MAXLEN ~`` retention, the
key scheme), consumer groups and where they start, acknowledgement after
success, retries and dead letters (BR-13, BR-17), a group lost in a restart,
per-key ordering, replay, shutdown and ``group_info``. Tests that need fixed
topic names or break their server own it; the others put ``uid`` in every
topic and group name. Timings are shortened through settings so that retries
and claims happen within a second.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    ConfigurationError,
    EventPublisher,
    EventRegistry,
    EventSubscriber,
    KeySubmitted,
    current_delivery,
)
from redis_events._keys import dead_letter_key, stream_key
from tests.helpers import command_calls, wait_until
from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.redis

# Retries after 0.2 s, claims every 0.5 s of entries idle for 1 s, and reads
# that block for 0.5 s at most: every test here runs in a few seconds.
FAST: dict[str, Any] = {
    "retry_backoff": 0.2,
    "claim_interval": 0.5,
    "claim_min_idle": 1.0,
    "block_seconds": 0.5,
}
ENTRY_ID = re.compile(r"\d+-\d+")
SECRET = "SECRET-9f3c"
# BR-13's invalid entry: JSON that lacks token_name, with a secret in it.
INVALID_KEY_EVENT = '{"event_type":"key_submitted","key_value":"SECRET-9f3c"}'
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Recorder = Callable[[str, dict[str, Any]], Any]
Fields = dict[str, str]


@pytest.fixture
def own_r(own_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client (``R``) of the test's own server."""
    client = own_redis_server.client()
    yield client
    client.close()


def stream_subscriber(url: str, **options: Any) -> EventSubscriber:
    """Return a subscriber on the streams transport with short timings."""
    return EventSubscriber(url, transport="stream", **(FAST | options))


def stream_publisher(url: str, **options: Any) -> EventPublisher:
    """Return a publisher on the streams transport."""
    return EventPublisher(url, transport="stream", **options)


def recorder(into: list[int]) -> Recorder:
    """Return a handler that appends each event's ``n`` to ``into``."""

    async def record(topic: str, event: dict[str, Any]) -> None:
        into.append(event["n"])

    return record


def pending_count(r: redis.Redis, topic: str, group: str) -> int:
    """Return the length of ``group``'s pending list on ``topic`` (XPENDING)."""
    return int(r.xpending(stream_key(topic), group)["pending"])


def group_row(r: redis.Redis, topic: str, group: str) -> dict[str, Any]:
    """Return ``group``'s row of XINFO GROUPS, or ``{}`` while it is missing."""
    if not r.exists(stream_key(topic)):
        return {}

    for row in r.xinfo_groups(stream_key(topic)):
        if row["name"] == group:
            return dict(row)

    return {}


def caught_up(r: redis.Redis, topic: str, group: str, last_id: str) -> bool:
    """Tell whether ``group`` was given every entry up to ``last_id`` and acked."""
    row = group_row(r, topic, group)
    return bool(row) and row["last-delivered-id"] == last_id and row["pending"] == 0


def iso_at(ms: int) -> str:
    """Return the ISO 8601 time of ``ms`` milliseconds after the epoch, exactly."""
    return (EPOCH + timedelta(milliseconds=ms)).isoformat()


def ms_of(entry_id: str) -> int:
    """Return the millisecond part of a stream entry id."""
    return int(entry_id.partition("-")[0])


def key_json(name: str) -> bytes:
    """Return a valid ``key_submitted`` event as its topic carries it."""
    event = KeySubmitted(key_value=f"key-{name}", token_name="br13", event_id=name)
    return EventRegistry().encode(KEY_SUBMISSION_TOPIC, event)


def str_ids(ids: list[int] | list[str]) -> list[str]:
    """Narrow ``publish_many``'s reply on streams to entry ids."""
    assert all(isinstance(entry_id, str) for entry_id in ids)
    return [str(entry_id) for entry_id in ids]


def cluster_port() -> int:
    """Return a free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port <= 55535 and _bindable(port + 10000):
            return port

    msg = "no free port for a cluster-enabled redis-server"
    raise RuntimeError(msg)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False

    return True


def shutdown_nosave(server: RedisServer) -> None:
    """Send SHUTDOWN NOSAVE on a client that does not retry, then reap the server.

    redis-py's default client retries the lost connection for seconds first.
    """
    client = server.client(retry=Retry(NoBackoff(), 0))
    with suppress(redis.ConnectionError):
        client.shutdown(nosave=True)

    client.close()
    server.stop()


def xadd(r: redis.Redis, key: str, data: bytes | str) -> str:
    """XADD one entry with ``data`` as its data field; return its id."""
    return str(r.xadd(key, {"data": data}))


def xrange(r: redis.Redis, key: str, start: str = "-") -> list[tuple[str, Fields]]:
    """XRANGE from ``start`` on a decoding client: ids and fields as text."""
    rows: Any = r.xrange(key, start)
    return [(str(entry_id), dict(fields)) for entry_id, fields in rows]


def read_unacked(r: redis.Redis, group: str, consumer: str, key: str, n: int) -> int:
    """XREADGROUP ``n`` new entries as ``consumer`` without acknowledging them."""
    reply: Any = r.xreadgroup(group, consumer, {key: ">"}, count=n)
    return len(reply[0][1]) if reply else 0


def reads_processed(r: redis.Redis) -> int:
    """Return how many socket reads the server has made (INFO stats)."""
    return int(r.info("stats")["total_reads_processed"])


# Publishing.


async def test_publish_returns_an_entry_id_and_publish_many_one_per_event_in_one_trip(
    own_redis_server: RedisServer, own_r: redis.Redis
) -> None:
    topic, n = "orders", 50
    key = stream_key(topic)
    async with stream_publisher(own_redis_server.url) as pub:
        first = await pub.publish(topic, {"n": -1})
        xadds = command_calls(own_r, "xadd")
        reads = reads_processed(own_r)
        ids = str_ids(await pub.publish_many(topic, [{"n": i} for i in range(n)]))
        # This INFO is one read of its own.
        pipeline_reads = reads_processed(own_r) - reads - 1

    logger.info("publish_many of %d events: %d server socket reads", n, pipeline_reads)
    assert isinstance(first, str)
    assert ENTRY_ID.fullmatch(first)
    assert command_calls(own_r, "xadd") - xadds == n
    assert own_r.xlen(key) == n + 1
    stored = [entry_id for entry_id, _ in xrange(own_r, key)]
    assert stored == [first, *ids]
    # One XADD each, but sent as one pipeline: sent one at a time, the server
    # would need one socket read per command.
    assert 1 <= pipeline_reads < n // 5
    assert pub.get_stats()["events_published"] == n + 1


async def test_maxlen_retention_keeps_each_stream_near_its_own_limit(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    default, kept, wider = f"{uid}:default", f"{uid}:kept", f"{uid}:wider"
    maxlen = 100
    async with stream_publisher(redis_url, stream_maxlen=maxlen) as pub:
        pub.set_retention(kept, 0)
        pub.set_retention(wider, 3 * maxlen)
        for _ in range(10):
            for topic in (default, kept, wider):
                await pub.publish_many(topic, [{"n": i} for i in range(maxlen)])

        for _ in range(maxlen):
            await pub.publish(default, {"n": -1})

    lengths = [r.xlen(stream_key(topic)) for topic in (default, kept, wider)]
    logger.info("XLEN after 10x maxlen=%d: default, kept, wider = %s", maxlen, lengths)
    assert maxlen <= r.xlen(stream_key(default)) < 2 * maxlen + 100
    assert r.xlen(stream_key(kept)) == 10 * maxlen
    assert 3 * maxlen <= r.xlen(stream_key(wider)) < 6 * maxlen + 100


async def test_stream_and_dead_letter_keys_are_named_by_topic_in_one_cluster_slot(
    redis_url: str, r: redis.Redis, uid: str, tmp_path: Path
) -> None:
    topic = f"{uid}:orders"
    async with stream_publisher(redis_url) as pub:
        await pub.publish(topic, {"n": 1})

    assert r.xlen(f"redis-events:{{{topic}}}") == 1
    assert stream_key(topic) == f"redis-events:{{{topic}}}"
    assert dead_letter_key(topic) == f"redis-events:{{{topic}}}:dead"
    # CLUSTER KEYSLOT needs a server with cluster support switched on.
    cluster = RedisServer(
        tmp_path / "cluster",
        port=cluster_port(),
        args=(
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(tmp_path / "nodes.conf"),
        ),
    ).start()
    try:
        client = cluster.client()
        slots = {
            name: int(client.cluster("KEYSLOT", name))
            for name in (stream_key(topic), dead_letter_key(topic), topic)
        }
        client.close()
    finally:
        cluster.stop()

    # The slot is the bare topic's: the hash tag is exactly the topic.
    assert len(set(slots.values())) == 1


# Consumer groups.


async def test_a_new_group_starts_where_start_from_says(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"{uid}:start"
    async with stream_publisher(redis_url) as pub:
        early = str_ids(await pub.publish_many(topic, [{"n": n} for n in range(3)]))
        # A moment strictly between the two batches, on the server's clock.
        await anyio.sleep(0.05)
        moment = datetime.now(UTC)
        await anyio.sleep(0.05)
        expected = {
            "new": [10, 11],
            "all": [0, 1, 2, 10, 11],
            early[1]: [2, 10, 11],
            moment.isoformat(): [10, 11],
        }
        seen: dict[str, list[int]] = {start: [] for start in expected}
        groups = {start: f"{uid}-g{i}" for i, start in enumerate(expected)}
        async with AsyncExitStack() as stack:
            for start in expected:
                sub = stream_subscriber(
                    redis_url, group=groups[start], start_from=start
                )
                sub.on(topic)(recorder(seen[start]))
                await stack.enter_async_context(sub)

            later = str_ids(await pub.publish_many(topic, [{"n": 10}, {"n": 11}]))
            await wait_until(
                lambda: all(caught_up(r, topic, g, later[-1]) for g in groups.values())
            )

    assert seen == expected


async def test_a_group_started_at_an_entrys_own_time_includes_that_entry(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}:at", f"{uid}-at"
    async with stream_publisher(redis_url) as pub:
        ids: list[str] = []
        for n in range(3):
            ids.append(str(await pub.publish(topic, {"n": n})))
            await anyio.sleep(0.01)

        assert ms_of(ids[0]) < ms_of(ids[1]) < ms_of(ids[2])
        assert ids[1].endswith("-0")
        seen: list[int] = []
        sub = stream_subscriber(
            redis_url, group=group, start_from=iso_at(ms_of(ids[1]))
        )
        sub.on(topic)(recorder(seen))
        async with sub:
            await wait_until(lambda: caught_up(r, topic, group, ids[-1]))

    # The entry stamped at that very millisecond is at or after the time.
    assert seen == [1, 2]


async def test_starting_on_an_existing_group_is_fine_and_keeps_its_position(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}:again", f"{uid}-again"
    seen: list[int] = []
    async with stream_publisher(redis_url) as pub:
        first = stream_subscriber(redis_url, group=group, start_from="all")
        first.on(topic)(recorder(seen))
        async with first:
            ids = str_ids(await pub.publish_many(topic, [{"n": n} for n in range(3)]))
            await wait_until(lambda: caught_up(r, topic, group, ids[-1]))

        ids = str_ids(await pub.publish_many(topic, [{"n": n} for n in range(3, 5)]))
        second = stream_subscriber(redis_url, group=group, start_from="all")
        second.on(topic)(recorder(seen))
        async with second:
            await wait_until(lambda: caught_up(r, topic, group, ids[-1]))

    assert seen == [0, 1, 2, 3, 4]
    assert [row["name"] for row in r.xinfo_groups(stream_key(topic))] == [group]
    assert second.get_stats()["events_handled"] == 2


# Acknowledgement.


async def test_an_entry_is_acknowledged_only_after_its_handler_returned(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}:ack", f"{uid}-ack"
    entered, release = anyio.Event(), anyio.Event()
    sub = stream_subscriber(redis_url, group=group, start_from="all")

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        entered.set()
        await release.wait()

    async with sub, stream_publisher(redis_url) as pub:
        entry_id = await pub.publish(topic, {"n": 1})
        await wait_until(entered.is_set)
        rows = r.xpending_range(stream_key(topic), group, "-", "+", 10)
        assert [(row["message_id"], row["consumer"]) for row in rows] == [
            (entry_id, sub.consumer_name)
        ]
        assert pending_count(r, topic, group) == 1
        assert sub.get_stats()["acked"] == 0
        release.set()
        await wait_until(lambda: pending_count(r, topic, group) == 0)
        stats = sub.get_stats()

    assert stats["acked"] == 1
    assert stats["events_handled"] == 1


async def test_an_entry_still_in_its_handler_is_not_claimed_again_by_its_consumer(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}:slow", f"{uid}-slow"
    calls = 0
    sub = stream_subscriber(
        redis_url, group=group, start_from="all", claim_min_idle=0.3, claim_interval=0.1
    )

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            # Several claim intervals past claim_min_idle, still working.
            await anyio.sleep(1.5)

    async with sub, stream_publisher(redis_url) as pub:
        await pub.publish(topic, {"n": 1})
        await wait_until(lambda: sub.get_stats()["acked"] == 1)
        stats = sub.get_stats()

    assert calls == 1
    assert stats["reclaimed"] == 0
    assert pending_count(r, topic, group) == 0


# Retries and dead letters.


async def test_br13_poison_entries_are_dead_lettered_and_the_rest_are_handled(
    own_redis_server: RedisServer, own_r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    r, topic, group = own_r, KEY_SUBMISSION_TOPIC, "workers"
    key, dead = stream_key(topic), dead_letter_key(topic)
    # c1 read an entry without acknowledging it; the entry was then deleted.
    r.xgroup_create(key, group, id="0", mkstream=True)
    ghost = xadd(r, key, key_json("ghost"))
    assert read_unacked(r, group, "c1", key, 1) == 1
    assert r.xdel(key, ghost) == 1
    valid = [xadd(r, key, key_json(f"valid-{i}")) for i in range(5)]
    not_json = xadd(r, key, "not json")
    invalid = xadd(r, key, INVALID_KEY_EVENT)
    transient = xadd(r, key, key_json("transient"))
    valid += [xadd(r, key, key_json(f"valid-{i}")) for i in range(5, 10)]

    calls: Counter[str] = Counter()
    counts: list[int] = []
    pending_on_retry: list[int] = []
    sub = stream_subscriber(
        own_redis_server.url,
        group=group,
        consumer="c1",
        start_from="all",
        max_deliveries=3,
    )

    @sub.on(topic)
    async def handler(topic: str, event: KeySubmitted) -> None:
        delivery = current_delivery()
        entry_id = delivery.delivery_id or ""
        calls[entry_id] += 1
        counts.append(delivery.delivery_count)
        if entry_id != transient:
            return

        if calls[entry_id] == 1:
            raise RuntimeError("transient failure")

        rows = r.xpending_range(key, group, entry_id, entry_id, 1)
        pending_on_retry.extend(int(row["times_delivered"]) for row in rows)

    def settled() -> bool:
        letters = {fields["original_id"] for _, fields in xrange(r, dead)}
        return (
            all(calls[entry_id] == 1 for entry_id in valid)
            and calls[transient] == 2
            and {not_json, invalid} <= letters
            and pending_count(r, topic, group) == 0
        )

    caplog.set_level(logging.DEBUG)
    async with sub:
        await wait_until(settled, timeout=15)
        stats = sub.get_stats()

    logger.info("BR-13 stats: %s", stats)
    assert calls == Counter({**dict.fromkeys(valid, 1), transient: 2})
    # Between the two attempts the entry stayed pending, not acknowledged.
    assert pending_on_retry == [2]
    assert max(counts) <= 3
    letters = {fields["original_id"]: fields for _, fields in xrange(r, dead)}
    # The entry with no body is not a dead letter: it is counted as missing.
    assert set(letters) == {not_json, invalid}
    assert r.xlen(dead) == 2
    for fields in letters.values():
        assert fields["topic"] == topic
        assert fields["reason"].startswith("invalid")
        assert SECRET not in fields["reason"]
        assert 1 <= int(fields["delivery_count"]) <= 3

    assert pending_count(r, topic, group) == 0
    assert stats["events_handled"] == 11
    assert stats["dead_lettered"] == 2
    assert stats["retries"] >= 1
    assert stats["missing_entries"] == 1
    assert stats["invalid_events"] == 2
    assert stats["handler_errors"] == 1
    assert SECRET not in caplog.text
    assert all(SECRET not in rec.getMessage() for rec in caplog.records)
    warned = " ".join(
        rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING
    )
    assert not_json in warned
    assert invalid in warned


async def test_an_event_whose_handler_always_fails_is_dead_lettered_and_others_go_on(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group, max_deliveries, poison = f"{uid}:poison", f"{uid}-poison", 3, 4
    calls: Counter[int] = Counter()
    handled: list[int] = []
    sub = stream_subscriber(
        redis_url, group=group, start_from="all", max_deliveries=max_deliveries
    )

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        calls[event["n"]] += 1
        if event["n"] == poison:
            raise ValueError("this event can never be handled")

        handled.append(event["n"])

    dead = dead_letter_key(topic)
    async with sub, stream_publisher(redis_url) as pub:
        ids = str_ids(await pub.publish_many(topic, [{"n": n} for n in range(10)]))
        await wait_until(lambda: r.xlen(dead) == 1 and len(handled) == 9)
        assert sub.running
        last = await pub.publish(topic, {"n": 10})
        await wait_until(lambda: 10 in handled and pending_count(r, topic, group) == 0)
        stats = sub.get_stats()
        consumer = sub.consumer_name

    assert sorted(handled) == [n for n in range(11) if n != poison]
    assert calls[poison] == max_deliveries
    [(_, letter)] = xrange(r, dead)
    assert letter["original_id"] == ids[poison]
    assert letter["topic"] == topic
    assert letter["group"] == group
    assert letter["consumer"] == consumer
    assert "failed" in letter["reason"]
    assert int(letter["delivery_count"]) == max_deliveries
    assert letter["data"] == xrange(r, stream_key(topic), ids[poison])[0][1]["data"]
    assert caught_up(r, topic, group, str(last))
    assert stats["dead_lettered"] == 1
    assert stats["handler_errors"] == max_deliveries
    assert stats["retries"] == max_deliveries - 1
    assert stats["events_handled"] == 10


class _TouchWhenUnpickled:
    """Unpickling this calls ``Path.touch(path)``, which creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


async def test_br17_a_pickle_entry_is_dead_lettered_and_never_unpickled(
    own_redis_server: RedisServer, own_r: redis.Redis, tmp_path: Path, uid: str
) -> None:
    # The payload does work: unpickled, it creates its file.
    control = tmp_path / f"{uid}.control"
    pickle.loads(pickle.dumps(_TouchWhenUnpickled(control)))
    assert control.exists()
    marker = tmp_path / f"{uid}.pwned"
    r, topic = own_r, KEY_SUBMISSION_TOPIC
    key, dead = stream_key(topic), dead_letter_key(topic)
    events: list[KeySubmitted] = []
    sub = stream_subscriber(own_redis_server.url, start_from="all")

    @sub.on(topic)
    async def handler(topic: str, event: KeySubmitted) -> None:
        events.append(event)

    pickled = xadd(r, key, pickle.dumps(_TouchWhenUnpickled(marker)))
    hinted = {
        "event_type": "key_submitted",
        "key_value": "k-123456",
        "token_name": "hinted",
        "__class__": "os.system",
        "$type": "System.Diagnostics.Process",
    }
    xadd(r, key, KeySubmitted.model_validate(hinted).model_dump_json())
    async with sub:
        await wait_until(lambda: len(events) == 1 and r.xlen(dead) == 1)
        stats = sub.get_stats()

    assert not marker.exists()
    raw = redis.Redis(host="127.0.0.1", port=own_redis_server.port)
    rows: Any = raw.xrange(dead)
    [(_, letter)] = rows
    raw.close()
    assert letter[b"original_id"] == pickled.encode()
    assert letter[b"reason"].startswith(b"invalid")
    assert letter[b"data"] == pickle.dumps(_TouchWhenUnpickled(marker))
    assert stats["invalid_events"] == 1
    assert stats["dead_lettered"] == 1
    assert type(events[0]) is KeySubmitted
    assert events[0].token_name == "hinted"


# A group lost in a restart.


@pytest.mark.fault
@pytest.mark.slow
async def test_a_group_lost_in_a_restart_is_created_again_once_and_work_goes_on(
    own_redis_server: RedisServer, own_r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    server, topic, outage = own_redis_server, "orders", 5.0
    handled: list[int] = []
    sub = stream_subscriber(server.url, start_from="all", reconnect_backoff_cap=1.0)
    sub.on(topic)(recorder(handled))
    caplog.set_level(logging.WARNING, logger="redis_events._streams")
    async with sub, stream_publisher(server.url, publish_retry_timeout=10) as pub:
        await pub.publish_many(topic, [{"n": n} for n in range(3)])
        await wait_until(lambda: len(handled) == 3)
        attempts = sub.get_stats()["reconnect_attempts"]
        shutdown_nosave(server)
        cpu, wall = time.process_time(), time.monotonic()
        await anyio.sleep(outage)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        attempts = sub.get_stats()["reconnect_attempts"] - attempts
        server.start()
        ids = str_ids(await pub.publish_many(topic, [{"n": n} for n in range(3, 8)]))
        await wait_until(lambda: len(handled) == 8, timeout=15)
        await wait_until(
            lambda: caught_up(own_r, topic, sub.settings.group, ids[-1]), timeout=15
        )
        stats = sub.get_stats()

    logger.info(
        "Redis down %.1f s: CPU %.3f s, %d reconnect attempts; stats %s",
        wall,
        cpu,
        attempts,
        stats,
    )
    assert handled == list(range(8))
    recreated = [
        rec
        for rec in caplog.records
        if rec.name == "redis_events._streams"
        and "creating it again" in rec.getMessage()
    ]
    assert len(recreated) == 1
    assert recreated[0].levelno == logging.WARNING
    assert stats["groups_recreated"] == 1
    assert stats["reconnects"] >= 1
    assert 1 <= attempts <= 40
    assert cpu < 0.25 * wall


# Per-key ordering.


async def test_events_of_one_key_are_handled_in_publish_order_while_keys_overlap(
    redis_url: str, uid: str
) -> None:
    topic, n, keys = f"{uid}:ordered", 1000, 10
    rng = random.Random(n)
    seen: defaultdict[str, list[int]] = defaultdict(list)
    active = peak = 0
    sub = stream_subscriber(
        redis_url,
        group=f"{uid}-ordered",
        start_from="all",
        max_concurrency=8,
        claim_min_idle=60,
    )
    sub.order_by(topic, "key")

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(rng.random() / 1000)
        seen[event["key"]].append(event["seq"])
        active -= 1

    events = [{"key": f"k{i % keys}", "seq": i} for i in range(n)]
    async with stream_publisher(redis_url) as pub:
        await pub.publish_many(topic, events)

    async with sub:
        await wait_until(lambda: sum(map(len, seen.values())) == n, timeout=30)

    logger.info("%d events over %d keys: at most %d handlers at once", n, keys, peak)
    for k in range(keys):
        assert seen[f"k{k}"] == list(range(k, n, keys))

    assert 1 < peak <= 8
    assert sub.get_stats()["events_handled"] == n


# Replay.


def group_snapshot(r: redis.Redis, topic: str, group: str) -> dict[str, Any]:
    """Return what replay must not change: XINFO GROUPS and XPENDING rows."""
    row = group_row(r, topic, group)
    rows = r.xpending_range(stream_key(topic), group, "-", "+", 1000)
    return {
        "pending": row["pending"],
        "last-delivered-id": row["last-delivered-id"],
        "entries-read": row.get("entries-read"),
        "lag": row.get("lag"),
        "rows": [(p["message_id"], p["consumer"], p["times_delivered"]) for p in rows],
        "summary": r.xpending(stream_key(topic), group),
    }


async def test_replay_redelivers_history_in_order_and_leaves_the_group_alone(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group, n = f"{uid}:replay", f"{uid}-replay", 200
    key = stream_key(topic)
    async with stream_publisher(redis_url) as pub:
        ids = str_ids(await pub.publish_many(topic, [{"n": i} for i in range(n // 2)]))
        await anyio.sleep(0.05)
        moment = datetime.now(UTC)
        await anyio.sleep(0.05)
        ids += str_ids(
            await pub.publish_many(topic, [{"n": i} for i in range(n // 2, n)])
        )

    # Another consumer holds ten entries unacknowledged, so the pending list
    # has something replay could disturb.
    r.xgroup_create(key, group, id="0")
    assert read_unacked(r, group, f"raw-{uid}", key, 10) == 10
    consumed: list[int] = []
    sub = stream_subscriber(redis_url, group=group, claim_min_idle=60)
    sub.on(topic)(recorder(consumed))
    async with sub:
        await wait_until(lambda: len(consumed) == n - 10)

    before = group_snapshot(r, topic, group)
    assert before["pending"] == 10
    assert before["last-delivered-id"] == ids[-1]
    replayed: list[int] = []
    after_time: list[int] = []
    after_id: list[int] = []
    given = [
        await sub.replay(topic, recorder(replayed)),
        await sub.replay(topic, recorder(after_time), start=moment.isoformat()),
        await sub.replay(topic, recorder(after_id), start=ids[149]),
    ]
    assert group_snapshot(r, topic, group) == before
    assert consumed == list(range(10, n))
    assert replayed == list(range(n))
    assert after_time == list(range(n // 2, n))
    # Replay from an entry id includes that entry (XRANGE is inclusive), as
    # the README says; a group's start_from id keeps Redis's "after it".
    assert after_id == list(range(149, n))
    assert given == [n, n // 2, 51]


# Shutdown.


async def test_stop_acks_finished_work_and_the_next_run_takes_the_rest_once(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group, consumer = f"{uid}:stop", f"{uid}-stop", f"c-{uid}"
    calls: Counter[str] = Counter()
    started = anyio.Event()

    async def handler(topic: str, event: dict[str, Any]) -> None:
        calls[current_delivery().delivery_id or ""] += 1
        if not started.is_set():
            started.set()
            await anyio.sleep(0.5)

    def run_of_consumer() -> EventSubscriber:
        sub = stream_subscriber(
            redis_url,
            group=group,
            consumer=consumer,
            start_from="all",
            max_concurrency=1,
            read_count=10,
            claim_min_idle=60,
            shutdown_timeout=10,
        )
        sub.on(topic)(handler)
        return sub

    async with stream_publisher(redis_url) as pub:
        ids = str_ids(await pub.publish_many(topic, [{"n": i} for i in range(10)]))

    first = run_of_consumer()
    async with anyio.create_task_group() as tg:
        await tg.start(first.run)
        await wait_until(started.is_set)
        with anyio.fail_after(10):
            await first.stop()

    # The handler in flight finished and was acknowledged; nothing more was
    # taken, since no more is read than there are free handler slots.
    assert calls == Counter({ids[0]: 1})
    assert r.xpending_range(stream_key(topic), group, "-", "+", 100) == []
    second = run_of_consumer()
    async with second:
        await wait_until(lambda: caught_up(r, topic, group, ids[-1]))

    assert calls == Counter(dict.fromkeys(ids, 1))
    assert second.get_stats()["events_handled"] == 9
    assert second.get_stats()["acked"] == 9
    first_stats = first.get_stats()
    assert first_stats["events_handled"] == 1
    assert first_stats["handlers_cancelled"] == 0
    assert first_stats["acked"] == 1


# Watching a group.


async def test_group_info_reports_the_lag_and_pending_of_a_known_backlog(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}:lag", f"{uid}-lag"
    key = stream_key(topic)
    sub = stream_subscriber(redis_url, group=group)
    sub.on(topic)(recorder([]))
    async with sub:
        name = sub.consumer_name
        await wait_until(
            lambda: [c["name"] for c in r.xinfo_consumers(key, group)] == [name]
        )

    async with stream_publisher(redis_url) as pub:
        ids = str_ids(await pub.publish_many(topic, [{"n": i} for i in range(50)]))

    assert await sub.group_info() == {
        topic: {"pending": 0, "lag": 50, "consumers": 1, "last_delivered_id": "0-0"}
    }
    assert read_unacked(r, group, f"raw-{uid}", key, 5) == 5
    assert await sub.group_info() == {
        topic: {"pending": 5, "lag": 45, "consumers": 2, "last_delivered_id": ids[4]}
    }


# -- patterns are pub/sub only ------------------------------------------------


@pytest.mark.parametrize("topic", ["profile_*", "key_?", "orders[12]", "a]b"])
async def test_a_stream_topic_with_glob_characters_is_refused_before_redis(
    redis_url: str, r: redis.Redis, topic: str
) -> None:
    sub = EventSubscriber(redis_url, transport="stream")

    async def handler(topic: str, event: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(ConfigurationError, match="pub/sub transport only"):
        sub.on(topic)(handler)
    with pytest.raises(ConfigurationError, match="pub/sub transport only"):
        await sub.subscribe(topic, handler)
    with pytest.raises(ConfigurationError, match="pub/sub transport only"):
        sub.subscribe_to_topics({topic: handler})
    async with EventPublisher(redis_url, transport="stream") as pub:
        with pytest.raises(ConfigurationError, match="pub/sub transport only"):
            await pub.publish(topic, {"n": 1})

    assert sub.topics == []
    assert r.exists(f"redis-events:{{{topic}}}") == 0


def test_on_with_glob_characters_on_pubsub_subscribes_literally_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = EventSubscriber("redis://localhost:6379/0")

    async def handler(topic: str, event: Any) -> None:
        raise AssertionError("never called")

    with caplog.at_level(logging.WARNING, logger="redis_events.subscriber"):
        sub.on("profile_*")(handler)
        sub.on("profile_events")(handler)

    assert sub.topics == ["profile_*", "profile_events"]
    [record] = caplog.records
    assert record.getMessage().startswith(
        "Topic 'profile_*' has glob characters but is subscribed as a channel"
    )
