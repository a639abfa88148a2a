"""Streams end to end: a feeder process XADDs, one consumer validates and acks.

Ours is an ``EventSubscriber(transport="stream")``; raw is the loop a
redis-py user would write: XREADGROUP with COUNT and BLOCK, pydantic on each
entry, one XACK per read with every id of that read. Each side of each round
reads a new stream with a new group, and deletes the stream at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from cases_pubsub import LATENCY_NOTE
from feeders import FLOW_WINDOW, STALL_SECONDS, Feed, Feeder, Tally
from harness import BATCH, FULL, Case, Sample, Sizes, raw_client, unique_name

from redis_events import EventSubscriber
from redis_events._keys import DATA_FIELD, stream_key
from redis_events.events import KeySubmitted

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

# What the library reads per XREADGROUP by default, and so does raw.
READ_COUNT = 100
BLOCK_MS = 5_000


@dataclass(frozen=True)
class Job:
    """One stream to consume: its topic, its feed, whether to time events."""

    topic: str
    plan: Feed
    timed: bool = False

    @property
    def key(self) -> str:
        """The stream's key."""
        return self.plan.target


def live_job(url: str, sizes: Sizes) -> Job:
    """Return a feed sent while the consumer runs, in pipelines."""
    topic = unique_name("streams")
    return Job(topic, Feed(url, stream_key(topic), sizes.streams, stream=True))


def backlog_job(url: str, sizes: Sizes) -> Job:
    """Return a feed that is all in the stream before the consumer starts."""
    topic = unique_name("backlog")
    plan = Feed(url, stream_key(topic), sizes.backlog, stream=True, backlog=True)
    return Job(topic, plan)


def paced_job(url: str, sizes: Sizes) -> Job:
    """Return a feed of one event at a time at ``sizes.rate``, send time inside."""
    topic = unique_name("streams-latency")
    count = int(sizes.rate * sizes.rate_seconds)
    plan = Feed(url, stream_key(topic), count, stream=True, rate=sizes.rate)
    return Job(topic, plan, timed=True)


class AckClock:
    """When the last event received was acknowledged.

    The watch starts polling the acknowledgement count only once the tally
    is complete, so it costs nothing while events flow. ``acked`` is a
    coroutine function, so that a side whose acknowledgements show only at
    the server can ask the server.
    """

    def __init__(self, tally: Tally, acked: Callable[[], Awaitable[int]]) -> None:
        self.tally = tally
        self.acked = acked
        self.end_ns = 0
        self.stamped = anyio.Event()

    async def watch(self) -> None:
        """Stamp the time once every event arrived and was acknowledged."""
        await self.tally.done.wait()
        await self._stamp()

    async def end(self) -> int:
        """Return the stamp; with events missing, stamp what was acknowledged."""
        if not self.tally.done.is_set():
            await self._stamp()

        await self.stamped.wait()
        return self.end_ns

    async def _stamp(self) -> None:
        stalled_at = time.monotonic() + STALL_SECONDS
        # Polled: acknowledgements show only in the library's counters, or
        # at the server.
        while time.monotonic() < stalled_at:
            if await self.acked() >= self.tally.received:
                break

            await anyio.sleep(0.0005)

        self.end_ns = time.perf_counter_ns()
        self.stamped.set()


async def leftover(url: str, key: str, group: str) -> int:
    """Return how many entries ``group`` has not acknowledged; drop the stream."""
    client = raw_client(url)
    summary = await client.xpending(key, group)
    await client.delete(key)
    await client.aclose()
    return int(summary["pending"])


async def ours_streams(url: str, job: Job) -> Sample:
    """Consume ``job`` with an ``EventSubscriber`` handler that counts."""
    feeder = Feeder(job.plan)
    tally = Tally(job.plan.count, feeder.received)
    record = tally.count_timed if job.timed else tally.count
    group = unique_name("group")
    subscriber = EventSubscriber(url, transport="stream", start_from="all", group=group)
    subscriber.registry.register(job.topic, KeySubmitted)

    @subscriber.on(job.topic)
    async def handle(topic: str, event: KeySubmitted) -> None:
        record(event)

    async def acked() -> int:
        return subscriber.get_stats()["acked"]

    await feeder.ready()
    start = time.perf_counter_ns()
    clock = AckClock(tally, acked)
    async with anyio.create_task_group() as tg:
        await tg.start(subscriber.run)
        tg.start_soon(clock.watch)
        sent, first = await feeder.run(tally)
        end = await clock.end()
        await subscriber.stop()
        tg.cancel_scope.cancel()

    unacked = await leftover(url, job.key, group)
    first = start if job.plan.backlog else first
    return tally.sample(sent, first, end_ns=end, unacked=unacked)


async def raw_streams(url: str, job: Job) -> Sample:
    """Consume ``job`` with an XREADGROUP loop, pydantic and batched XACK."""
    feeder = Feeder(job.plan)
    tally = Tally(job.plan.count, feeder.received)
    record = tally.count_timed if job.timed else tally.count
    group = unique_name("group")
    client = raw_client(url)
    acked = 0

    async def consume() -> None:
        nonlocal acked
        streams: Any = {job.key: ">"}
        while True:
            reply: Any = await client.xreadgroup(
                group, "raw", streams, count=READ_COUNT, block=BLOCK_MS
            )
            for key, entries in reply or ():
                ids = []
                for entry_id, fields in entries:
                    record(KeySubmitted.model_validate_json(fields[DATA_FIELD]))
                    ids.append(entry_id)

                await client.xack(key, group, *ids)
                acked += len(ids)

    async def acked_count() -> int:
        return acked

    await feeder.ready()
    start = time.perf_counter_ns()
    await client.xgroup_create(job.key, group, id="0", mkstream=True)
    clock = AckClock(tally, acked_count)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        tg.start_soon(clock.watch)
        sent, first = await feeder.run(tally)
        end = await clock.end()
        tg.cancel_scope.cancel()

    await client.aclose()
    unacked = await leftover(url, job.key, group)
    first = start if job.plan.backlog else first
    return tally.sample(sent, first, end_ns=end, unacked=unacked)


async def ours_e2e(url: str, sizes: Sizes) -> Sample:
    """Consume a live feed with an ``EventSubscriber``."""
    return await ours_streams(url, live_job(url, sizes))


async def raw_e2e(url: str, sizes: Sizes) -> Sample:
    """Consume a live feed with a hand-written XREADGROUP loop."""
    return await raw_streams(url, live_job(url, sizes))


async def ours_backlog(url: str, sizes: Sizes) -> Sample:
    """Drain a full stream with an ``EventSubscriber``."""
    return await ours_streams(url, backlog_job(url, sizes))


async def raw_backlog(url: str, sizes: Sizes) -> Sample:
    """Drain a full stream with a hand-written XREADGROUP loop."""
    return await raw_streams(url, backlog_job(url, sizes))


async def ours_latency(url: str, sizes: Sizes) -> Sample:
    """Consume a paced feed with an ``EventSubscriber``; time each event."""
    return await ours_streams(url, paced_job(url, sizes))


async def raw_latency(url: str, sizes: Sizes) -> Sample:
    """Consume a paced feed with a hand-written loop; time each event."""
    return await raw_streams(url, paced_job(url, sizes))


STREAMS_NOTE = (
    "streams: the feeder XADDs pre-encoded events (field data) in pipelines "
    f"of {BATCH}, at most {FLOW_WINDOW:,} unreceived. Ours: EventSubscriber("
    "transport='stream', start_from='all'), a new group per side and round, "
    "default read_count 100 and max_concurrency 64; raw: XREADGROUP COUNT "
    f"{READ_COUNT} BLOCK {BLOCK_MS} + KeySubmitted.model_validate_json per "
    "entry + one XACK per read. Time runs to the last acknowledgement; lost "
    "= sent - handled + still pending after the stop"
)
BACKLOG_NOTE = (
    "streams backlog: the feeder XADDs every entry (pipelined, not timed) "
    "before the consumer starts; time runs from the consumer's start (group "
    "creation included) to the last acknowledgement"
)

CASES = (
    Case(
        "streams",
        "streams e2e, validated, acked",
        ours_e2e,
        raw_e2e,
        notes=(STREAMS_NOTE,),
    ),
    Case(
        "streams_backlog",
        "streams backlog drain",
        ours_backlog,
        raw_backlog,
        notes=(STREAMS_NOTE, BACKLOG_NOTE),
    ),
    Case(
        "streams_latency",
        f"streams latency {FULL.rate:,}/s",
        ours_latency,
        raw_latency,
        notes=(STREAMS_NOTE, LATENCY_NOTE),
        latency_of="from XADD to handler",
    ),
)
