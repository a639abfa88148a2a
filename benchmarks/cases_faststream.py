"""The same jobs done with FastStream's Redis broker, the third side of a case.

Imported only when FastStream is installed (the ``bench`` extra); ``attach``
gives each case that FastStream can do its ``faststream`` side. Every side
here uses the feeder, tally and clocks of the other sides, so only the
publisher or the consumer differs. FastStream's per-message log lines go to
a logger with no handler, as the library's DEBUG lines do.

The slow-handler memory cases have no FastStream side yet: they run ours
and raw only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from importlib.metadata import version
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
from cases_publish import time_batches, time_sends
from cases_pubsub import pubsub_plan
from cases_streams import (
    READ_COUNT,
    AckClock,
    Job,
    backlog_job,
    leftover,
    live_job,
    paced_job,
)
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.message import DATA_KEY
from feeders import Feeder, Tally
from harness import (
    BATCH,
    Case,
    Sample,
    Sizes,
    raw_client,
    raw_encode,
    unique_name,
)

# FastStream reads the handlers' annotations at run time to validate events.
from redis_events.events import KeySubmitted  # noqa: TC001

if TYPE_CHECKING:
    from harness import SideRunner
    from redis.asyncio import Redis

VERSION = version("faststream")
CONSUMER = "faststream"
# How often to ask the server whether the subscription is in place.
SUBSCRIBED_POLL_SECONDS = 0.001


def new_broker(url: str) -> RedisBroker:
    """Return a broker speaking RESP2 on ``url``, its access log unseen.

    redis-py 8 speaks RESP3 unless told otherwise, and the other sides use
    RESP2, so the URL carries ``protocol=2``.
    """
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), ("protocol", "2")])
    return RedisBroker(
        urlunsplit(parts._replace(query=query)), logger=logging.getLogger(__name__)
    )


async def subscribed(client: Redis, channel: str) -> None:
    """Wait until the server counts a subscriber on ``channel``."""
    while True:
        counts = await client.pubsub_numsub(channel)
        if counts and counts[0][1]:
            return

        await anyio.sleep(SUBSCRIBED_POLL_SECONDS)


async def faststream_publish(url: str, sizes: Sizes) -> Sample:
    """Publish events one by one with ``RedisBroker.publish``."""
    channel = unique_name("publish")
    async with new_broker(url) as broker:

        async def send(event: KeySubmitted) -> None:
            await broker.publish(raw_encode(event), channel)

        return await time_sends(sizes.publish, send)


async def faststream_publish_many(url: str, sizes: Sizes) -> Sample:
    """Publish batches: ``RedisBroker.publish`` into a redis-py pipeline."""
    channel = unique_name("publish_many")
    client = raw_client(url)
    await client.ping()
    async with new_broker(url) as broker:

        async def send(events: list[KeySubmitted]) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for event in events:
                    await broker.publish(raw_encode(event), channel, pipeline=pipe)

                await pipe.execute()

        sample = await time_batches(sizes.publish_many, send)

    await client.aclose()
    return sample


async def faststream_pubsub(url: str, sizes: Sizes, *, timed: bool = False) -> Sample:
    """Receive the feed with a ``RedisBroker`` subscriber typed ``KeySubmitted``."""
    plan = pubsub_plan(url, sizes, timed=timed)
    feeder = Feeder(plan)
    tally = Tally(plan.count, feeder.received)
    record = tally.count_timed if timed else tally.count
    broker = new_broker(url)

    async def handle(event: KeySubmitted) -> None:
        record(event)

    # Called, not applied with @: with the bench extra absent, mypy sees an
    # untyped decorator.
    broker.subscriber(plan.target)(handle)

    client = raw_client(url)
    await feeder.ready()
    await broker.start()
    try:
        # The broker's start sends SUBSCRIBE without waiting for its reply.
        await subscribed(client, plan.target)
        sent, first = await feeder.run(tally)
    finally:
        await broker.stop()
        await client.aclose()

    return tally.sample(sent, first)


async def faststream_latency(url: str, sizes: Sizes) -> Sample:
    """Receive a paced feed with a ``RedisBroker`` subscriber; time each event."""
    return await faststream_pubsub(url, sizes, timed=True)


def in_faststream_field(job: Job) -> Job:
    """Return ``job`` with its entries in the field FastStream reads the body of.

    A stream entry without that field reaches the handler as the whole
    field map, not as the event.
    """
    return dataclasses.replace(job, plan=dataclasses.replace(job.plan, field=DATA_KEY))


async def faststream_streams(url: str, job: Job) -> Sample:
    """Consume ``job`` with a ``StreamSub`` group subscriber and its acks."""
    job = in_faststream_field(job)
    feeder = Feeder(job.plan)
    tally = Tally(job.plan.count, feeder.received)
    record = tally.count_timed if job.timed else tally.count
    group = unique_name("group")
    broker = new_broker(url)
    stream = StreamSub(
        job.key, group=group, consumer=CONSUMER, last_id="0", max_records=READ_COUNT
    )

    async def handle(event: KeySubmitted) -> None:
        record(event)

    broker.subscriber(stream=stream)(handle)

    client = raw_client(url)

    # FastStream's acknowledgements show only at the server: every entry
    # received and no longer pending has been acknowledged.
    async def acked() -> int:
        summary = await client.xpending(job.key, group)
        return tally.received - int(summary["pending"])

    await feeder.ready()
    start = time.perf_counter_ns()
    await broker.start()
    clock = AckClock(tally, acked)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.watch)
            sent, first = await feeder.run(tally)
            end = await clock.end()
            tg.cancel_scope.cancel()
    finally:
        await broker.stop()
        await client.aclose()

    unacked = await leftover(url, job.key, group)
    first = start if job.plan.backlog else first
    return tally.sample(sent, first, end_ns=end, unacked=unacked)


async def faststream_e2e(url: str, sizes: Sizes) -> Sample:
    """Consume a live feed with a FastStream stream subscriber."""
    return await faststream_streams(url, live_job(url, sizes))


async def faststream_backlog(url: str, sizes: Sizes) -> Sample:
    """Drain a full stream with a FastStream stream subscriber."""
    return await faststream_streams(url, backlog_job(url, sizes))


async def faststream_streams_latency(url: str, sizes: Sizes) -> Sample:
    """Consume a paced feed with a FastStream stream subscriber; time each event."""
    return await faststream_streams(url, paced_job(url, sizes))


PUBLISH_NOTE = (
    f"faststream (FastStream {VERSION}, RedisBroker, RESP2, hiredis): publish "
    "sends model_dump_json() bytes, as raw does (a model passed to FastStream "
    "would go out with the key masked), in FastStream's binary envelope; "
    f"publish_many has no pub/sub batch call in FastStream (publish_batch is "
    f"for lists), so it is {BATCH} publish(..., pipeline=pipe) calls into a "
    "redis-py pipeline(transaction=False), then pipe.execute()"
)
PUBSUB_NOTE = (
    "faststream pub/sub: broker.subscriber(channel) on a handler typed "
    "KeySubmitted (FastStream decodes and validates); the feed starts once "
    "PUBSUB NUMSUB shows the subscription"
)
STREAMS_NOTE = (
    "faststream streams: broker.subscriber(stream=StreamSub(key, group, "
    f"consumer, last_id='0', max_records={READ_COUNT})), its default ack "
    "policy (XACK per entry after the handler); the feeder writes the event "
    f"to field {DATA_KEY}, where FastStream reads a body; the last "
    "acknowledgement is seen by polling XPENDING"
)

RUNNERS: dict[str, tuple[SideRunner, str]] = {
    "publish": (faststream_publish, PUBLISH_NOTE),
    "publish_many": (faststream_publish_many, PUBLISH_NOTE),
    "pubsub": (faststream_pubsub, PUBSUB_NOTE),
    "latency": (faststream_latency, PUBSUB_NOTE),
    "streams": (faststream_e2e, STREAMS_NOTE),
    "streams_backlog": (faststream_backlog, STREAMS_NOTE),
    "streams_latency": (faststream_streams_latency, STREAMS_NOTE),
}


def attach(case: Case) -> Case:
    """Return ``case`` with its FastStream side, if FastStream can do the job."""
    if case.key not in RUNNERS:
        return case

    runner, note = RUNNERS[case.key]
    return dataclasses.replace(case, faststream=runner, notes=(*case.notes, note))
