"""Stream consumers as real processes: SIGKILL, SIGTERM and restarts.

Each test owns its redis-server and runs consumer processes from a small
script: an ``EventProcessor`` on ``transport="stream"`` whose handler records
its work in Redis, run by ``serve`` (so signals and exit codes are the stock
ones) and printing its stats as JSON when it exits. The test looks at server
state with a plain client (``R``): XPENDING, XINFO, and the hashes the
handlers write. Claim settings are short (3 s idle, checked every second) so
that a dead consumer's entries come back within seconds. These are the
shared cases BR-11 (a crashed consumer's entries reclaimed) and BR-15
(SIGTERM finishes and acknowledges what started, takes nothing new).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import redis

from redis_events import EventPublisher
from redis_events._keys import stream_key
from tests.helpers import poll_until, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.fault]

logger = logging.getLogger(__name__)

TOPIC = "jobs"
KEY = stream_key(TOPIC)
GROUP = "workers"
CLAIM_MIN_IDLE = 3.0
CLAIM_INTERVAL = 1.0
GRACE = 10.0
EXIT_TIMEOUT = 20.0

WORKER_SCRIPT = '''
"""A stream consumer whose handler records its progress in Redis."""

import json
import logging
import os
import sys
import time

import anyio
import redis.asyncio

from redis_events import current_delivery
from redis_events.processor import EventProcessor, serve

URL, TOPIC = sys.argv[1], sys.argv[2]
SLEEP = float(os.environ["WORKER_SLEEP"])
DONE = os.environ["WORKER_DONE_HASH"]
MARK_STARTED = os.environ.get("WORKER_MARK_STARTED") == "1"


class Worker(EventProcessor):
    def __init__(self, r):
        super().__init__(URL, topics=[TOPIC])
        self.r = r

    async def handle_other(self, topic, event):
        delivery = current_delivery()
        event_id = delivery.event_id
        if MARK_STARTED:
            await self.r.set(f"started:{event_id}", repr(time.time()))

        if SLEEP:
            await anyio.sleep(SLEEP)

        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hincrby(DONE, event_id, 1)
            pipe.hset("deliveries", event_id, delivery.delivery_count)
            await pipe.execute()


async def main():
    r = redis.asyncio.Redis.from_url(URL)
    worker = Worker(r)
    try:
        code = await serve(worker, stats_interval=0)
    finally:
        await r.aclose()

    print(json.dumps(worker.get_stats()), flush=True)
    return code


logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
raise SystemExit(anyio.run(main))
'''


@dataclass
class Worker:
    """One consumer process; stdout (stats JSON) and stderr (log) go to files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process, as a crash would, and reap it."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=EXIT_TIMEOUT)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Return the exit code; fail if the process still runs then."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"consumer {self.name} did not exit within {timeout} s")

    def stop(self) -> dict[str, int]:
        """SIGTERM, expect exit code 0, and return the stats it printed."""
        self.signal(signal.SIGTERM)
        code = self.wait()
        assert code == 0, f"consumer {self.name} exited {code}: {self.log[-3000:]}"
        return self.stats()

    def stats(self) -> dict[str, int]:
        """Return the stats JSON the process printed as it exited."""
        lines = self.stdout_path.read_text().splitlines()
        assert lines, f"consumer {self.name} printed no stats: {self.log[-3000:]}"
        stats: dict[str, int] = json.loads(lines[-1])
        return stats


@dataclass
class Workers:
    """Start consumer processes; kill every one still running at teardown."""

    directory: Path
    url: str
    started: list[Worker] = field(default_factory=list)

    def start(
        self,
        consumer: str,
        *,
        sleep: float,
        done_hash: str = "done",
        mark_started: bool = False,
        concurrency: int = 64,
    ) -> Worker:
        script = self.directory / "worker.py"
        if not script.exists():
            script.write_text(WORKER_SCRIPT)

        run = len(self.started)
        stdout_path = self.directory / f"{consumer}-{run}.out"
        stderr_path = self.directory / f"{consumer}-{run}.log"
        env = worker_environment(
            REDIS_EVENTS_CONSUMER=consumer,
            REDIS_EVENTS_MAX_CONCURRENCY=str(concurrency),
            WORKER_SLEEP=str(sleep),
            WORKER_DONE_HASH=done_hash,
            WORKER_MARK_STARTED="1" if mark_started else "0",
        )
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, str(script), self.url, TOPIC],
                stdout=out,
                stderr=err,
                env=env,
            )

        worker = Worker(consumer, process, stdout_path, stderr_path)
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.kill()


def worker_environment(**extra: str) -> dict[str, str]:
    """The test's environment without Redis settings, plus stream settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "REDIS_URL" and not name.startswith("REDIS_EVENTS_")
    }
    return env | {
        "PYTHONUNBUFFERED": "1",
        "REDIS_EVENTS_TRANSPORT": "stream",
        "REDIS_EVENTS_GROUP": GROUP,
        "REDIS_EVENTS_START_FROM": "all",
        "REDIS_EVENTS_CLAIM_MIN_IDLE": str(CLAIM_MIN_IDLE),
        "REDIS_EVENTS_CLAIM_INTERVAL": str(CLAIM_INTERVAL),
        "REDIS_EVENTS_BLOCK_SECONDS": "1",
        "REDIS_EVENTS_HANDLER_TIMEOUT": "0",
        "REDIS_EVENTS_SHUTDOWN_TIMEOUT": str(GRACE),
        **extra,
    }


@pytest.fixture
def own_r(own_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """``R`` on the test's own server."""
    client = own_redis_server.client()
    yield client
    client.close()


@pytest.fixture
def workers(tmp_path: Path, own_redis_server: RedisServer) -> Iterator[Workers]:
    """Consumer processes against the test's own server."""
    pool = Workers(tmp_path, own_redis_server.url)
    yield pool
    pool.kill_all()


def consumer_pending(r: redis.Redis) -> dict[str, int]:
    """Return each consumer's pending count (XINFO CONSUMERS); {} before any."""
    try:
        rows: list[dict[str, Any]] = r.xinfo_consumers(KEY, GROUP)
    except redis.ResponseError:
        return {}

    return {row["name"]: int(row["pending"]) for row in rows}


def pending_total(r: redis.Redis) -> int:
    """Return the XPENDING summary count of the group."""
    summary: dict[str, Any] = r.xpending(KEY, GROUP)
    return int(summary["pending"])


def pending_entries(r: redis.Redis) -> dict[str, str]:
    """Return ``{entry id: owning consumer}`` of every pending entry."""
    rows: list[dict[str, Any]] = r.xpending_range(KEY, GROUP, "-", "+", 100_000)
    return {row["message_id"]: row["consumer"] for row in rows}


def last_delivered_id(r: redis.Redis) -> str:
    groups: list[dict[str, Any]] = r.xinfo_groups(KEY)
    return str(groups[0]["last-delivered-id"])


def entry_order(entry_id: str) -> tuple[int, int]:
    """Return a stream entry id as a tuple that sorts like the stream."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence)


def fetched(r: redis.Redis, entry_ids: Iterable[str]) -> set[str]:
    """Return those of ``entry_ids`` that the group has handed to a consumer."""
    last = entry_order(last_delivered_id(r))
    return {entry for entry in entry_ids if entry_order(entry) <= last}


def hash_counts(r: redis.Redis, name: str) -> dict[str, int]:
    """Return a hash of counters (HGETALL) with its values as ints."""
    return {str(key): int(value) for key, value in r.hgetall(name).items()}


def started_at(r: redis.Redis) -> dict[str, float]:
    """Return ``{event id: wall-clock start}`` from the ``started:*`` keys."""
    keys = [str(key) for key in r.keys("started:*")]
    values = r.mget(keys) if keys else []
    return {
        key.removeprefix("started:"): float(value)
        for key, value in zip(keys, values, strict=True)
        if value is not None
    }


def add_entries(r: redis.Redis, first: int, count: int) -> dict[str, str]:
    """XADD events ``e<first>``.. in one round trip; return ``{event id: entry}``."""
    event_ids = [f"e{n}" for n in range(first, first + count)]
    with r.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.xadd(KEY, {"data": json.dumps({"event_id": event_id})})

        entry_ids: list[str] = pipe.execute()

    return dict(zip(event_ids, entry_ids, strict=True))


def wait_consuming(r: redis.Redis, *names: str, timeout: float = 20.0) -> None:
    """Wait until every named consumer has read from the group once."""
    poll_until(lambda: set(names) <= set(consumer_pending(r)), timeout=timeout)


@pytest.mark.slow
async def test_survivor_handles_every_one_of_10000_events_after_sigkill_of_its_peer(
    own_r: redis.Redis, own_redis_server: RedisServer, workers: Workers
) -> None:
    total = 10_000
    c1 = workers.start("c1", sleep=0.0005, done_hash="handled")
    c2 = workers.start("c2", sleep=0.0005, done_hash="handled")
    wait_consuming(own_r, "c1", "c2")
    async with EventPublisher(own_redis_server.url, transport="stream") as publisher:
        for first in range(0, total, 500):
            batch = [{"event_id": f"e{n}"} for n in range(first, first + 500)]
            await publisher.publish_many(TOPIC, batch)

    await wait_until(lambda: own_r.hlen("handled") >= 3000, timeout=60)
    c1.kill()
    held = consumer_pending(own_r)["c1"]
    await wait_until(lambda: own_r.hlen("handled") == total, timeout=90)
    await wait_until(lambda: pending_total(own_r) == 0, timeout=CLAIM_MIN_IDLE + 20)
    stats = c2.stop()

    counts = hash_counts(own_r, "handled")
    duplicates = sum(counts.values()) - total
    logger.warning(
        "10,000 events: c1 held %d unacknowledged at SIGKILL, c2 reclaimed %d, "
        "duplicates %d",
        held,
        stats["reclaimed"],
        duplicates,
    )
    assert len(counts) == total
    assert set(counts) == {f"e{n}" for n in range(total)}
    assert 0 <= duplicates <= held
    assert stats["reclaimed"] == held
    assert pending_total(own_r) == 0


def add_until_c1_holds(r: redis.Redis, kill_at: int) -> dict[str, str]:
    """XADD one event at a time until consumer c1 holds ``kill_at`` of them.

    Each entry is read by a consumer before the next is added, so the two
    consumers share them; at most 40 are added.
    """
    entries: dict[str, str] = {}
    while consumer_pending(r).get("c1", 0) < kill_at:
        assert len(entries) < 40, "c1 was given too few entries"
        added = add_entries(r, len(entries), 1)
        entries |= added
        wait_delivered(r, *added.values())

    return entries


def wait_delivered(r: redis.Redis, entry_id: str) -> None:
    """Wait until a consumer of the group has read ``entry_id``."""
    poll_until(lambda: last_delivered_id(r) == entry_id, timeout=10)


@pytest.mark.parametrize("kill_at", [1, 3, 5])
def test_sigkilled_consumers_pending_entries_are_reclaimed_once_by_its_peer(
    own_r: redis.Redis, workers: Workers, kill_at: int
) -> None:
    p1 = workers.start("c1", sleep=60, done_hash="processed", mark_started=True)
    p2 = workers.start("c2", sleep=0, done_hash="processed")
    wait_consuming(own_r, "c1", "c2")
    entries = add_until_c1_holds(own_r, kill_at)
    p1.kill()
    pending = pending_entries(own_r)
    held = {entry for entry, owner in pending.items() if owner == "c1"}
    if len(entries) < 10:
        entries |= add_entries(own_r, len(entries), 10 - len(entries))

    poll_until(lambda: own_r.hlen("processed") == len(entries), timeout=15)
    poll_until(lambda: pending_total(own_r) == 0, timeout=15)
    stats = p2.stop()

    assert len(held) >= kill_at
    assert hash_counts(own_r, "processed") == dict.fromkeys(entries, 1)
    assert set(started_at(own_r)) <= {e for e, i in entries.items() if i in held}
    expected_counts = {e: 2 if i in held else 1 for e, i in entries.items()}
    assert hash_counts(own_r, "deliveries") == expected_counts
    assert stats["reclaimed"] == len(held)
    assert stats["events_handled"] == len(entries)
    assert pending_total(own_r) == 0


def test_restarted_consumer_first_takes_back_its_own_pending_entries(
    own_r: redis.Redis, workers: Workers
) -> None:
    p1 = workers.start("c1", sleep=60, done_hash="processed", mark_started=True)
    wait_consuming(own_r, "c1")
    entries = add_entries(own_r, 0, 10)
    poll_until(lambda: len(started_at(own_r)) == 10, timeout=10)
    p1.kill()
    held = consumer_pending(own_r)["c1"]

    restarted = workers.start("c1", sleep=0, done_hash="processed")
    poll_until(lambda: own_r.hlen("processed") == 10, timeout=15)
    poll_until(lambda: pending_total(own_r) == 0, timeout=15)
    stats = restarted.stop()

    assert held == 10
    assert hash_counts(own_r, "processed") == dict.fromkeys(entries, 1)
    assert hash_counts(own_r, "deliveries") == dict.fromkeys(entries, 2)
    assert stats["events_received"] == 10
    assert stats["reclaimed"] == 0
    assert stats["acked"] == 10


def start_draining_run(workers: Workers, own_r: redis.Redis, sleep: float) -> Worker:
    """Start consumer w1 (concurrency 2) and wait until it reads the group."""
    worker = workers.start(
        "w1", sleep=sleep, done_hash="done", mark_started=True, concurrency=2
    )
    wait_consuming(own_r, "w1")
    return worker


@pytest.mark.slow
def test_sigterm_finishes_and_acks_started_entries_and_the_next_run_takes_the_rest(
    own_r: redis.Redis, workers: Workers
) -> None:
    first = start_draining_run(workers, own_r, sleep=2)
    entries = add_entries(own_r, 0, 10)
    poll_until(lambda: len(started_at(own_r)) >= 1, timeout=10)
    time.sleep(0.5)
    signalled = time.time()
    first.signal(signal.SIGTERM)
    code = first.wait(timeout=GRACE + 2)

    assert code == 0, first.log[-3000:]
    assert "SIGTERM received" in first.log
    assert "Final stats" in first.log
    started = started_at(own_r)
    done = hash_counts(own_r, "done")
    assert len(started) == len(done) == 2
    assert set(done) == set(started)
    assert [e for e, at in started.items() if at > signalled] == []
    pending = pending_entries(own_r)
    assert {entries[e] for e in done}.isdisjoint(pending)
    # The rest was not acknowledged: either fetched and left pending for
    # this consumer, or never fetched at all.
    left = {i for e, i in entries.items() if e not in done}
    assert fetched(own_r, left) == set(pending)
    assert set(pending.values()) <= {"w1"}
    logger.warning("After SIGTERM, w1 still holds %d fetched entries", len(pending))

    second = start_draining_run(workers, own_r, sleep=2)
    poll_until(lambda: own_r.hlen("done") == 10, timeout=30)
    poll_until(lambda: pending_total(own_r) == 0, timeout=10)
    second_stats = second.stop()

    deliveries = hash_counts(own_r, "deliveries")
    assert hash_counts(own_r, "done") == dict.fromkeys(entries, 1), (
        f"reclaimed={second_stats['reclaimed']} delivery counts={deliveries}"
    )
    assert pending_total(own_r) == 0
    assert second_stats["events_received"] == 8
    assert second_stats["acked"] == 8
    first_stats = first.stats()
    assert first_stats["events_handled"] == 2
    assert first_stats["handlers_cancelled"] == 0


def test_stats_count_every_acknowledgement_written_during_the_drain(
    own_r: redis.Redis, workers: Workers
) -> None:
    # Two handlers that finish together while the process drains after
    # SIGTERM: their acknowledgements go out in two writes at the very end.
    worker = start_draining_run(workers, own_r, sleep=1)
    add_entries(own_r, 0, 2)
    poll_until(lambda: len(started_at(own_r)) == 2, timeout=10)
    stats = worker.stop()

    assert hash_counts(own_r, "done") == {"e0": 1, "e1": 1}
    assert pending_total(own_r) == 0
    assert stats["events_handled"] == 2
    assert stats["acked"] == 2


def test_second_sigterm_exits_1_and_leaves_in_flight_entries_pending(
    own_r: redis.Redis, workers: Workers
) -> None:
    first = start_draining_run(workers, own_r, sleep=5)
    entries = add_entries(own_r, 0, 10)
    poll_until(lambda: len(started_at(own_r)) == 2, timeout=10)
    first.signal(signal.SIGTERM)
    poll_until(lambda: "SIGTERM received" in first.log, timeout=5)
    first.signal(signal.SIGTERM)
    code = first.wait(timeout=GRACE + 2)

    assert code == 1, first.log[-3000:]
    assert "Second SIGTERM" in first.log
    started = started_at(own_r)
    assert len(started) == 2
    assert own_r.hlen("done") == 0
    # Nothing was acknowledged: the two cut short are pending, and so is
    # whatever else was fetched.
    pending = pending_entries(own_r)
    assert {entries[e] for e in started} <= set(pending)
    assert fetched(own_r, entries.values()) == set(pending)
    stats = first.stats()
    assert stats["handlers_cancelled"] == 2
    assert stats["acked"] == 0

    later = start_draining_run(workers, own_r, sleep=0.2)
    poll_until(lambda: own_r.hlen("done") == 10, timeout=20)
    poll_until(lambda: pending_total(own_r) == 0, timeout=10)
    stats = later.stop()

    assert hash_counts(own_r, "done") == dict.fromkeys(entries, 1)
    assert stats["events_received"] == 10
    assert pending_total(own_r) == 0
