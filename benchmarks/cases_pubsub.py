"""Pub/sub end to end: a feeder process publishes, one subscriber validates."""

from __future__ import annotations

import anyio
from feeders import FLOW_WINDOW, Feed, Feeder, Tally
from harness import BATCH, FULL, Case, Sample, Sizes, raw_client, unique_name

from redis_events import EventSubscriber
from redis_events.events import KeySubmitted


def pubsub_plan(url: str, sizes: Sizes, *, timed: bool) -> Feed:
    """Return the feed of the end-to-end case, or of the latency case."""
    if timed:
        count = int(sizes.rate * sizes.rate_seconds)
        return Feed(url, unique_name("latency"), count, rate=sizes.rate)

    return Feed(url, unique_name("pubsub"), sizes.pubsub)


async def ours_pubsub(url: str, sizes: Sizes, *, timed: bool = False) -> Sample:
    """Receive the feed with an ``EventSubscriber`` handler."""
    plan = pubsub_plan(url, sizes, timed=timed)
    feeder = Feeder(plan)
    tally = Tally(plan.count, feeder.received)
    record = tally.count_timed if timed else tally.count
    subscriber = EventSubscriber(url)
    subscriber.registry.register(plan.target, KeySubmitted)

    @subscriber.on(plan.target)
    async def handle(topic: str, event: KeySubmitted) -> None:
        record(event)

    await feeder.ready()
    async with anyio.create_task_group() as tg:
        await tg.start(subscriber.run)
        sent, first = await feeder.run(tally)
        await subscriber.stop()

    return tally.sample(sent, first)


async def raw_pubsub(url: str, sizes: Sizes, *, timed: bool = False) -> Sample:
    """Receive the feed with a ``pubsub.listen()`` loop and pydantic."""
    plan = pubsub_plan(url, sizes, timed=timed)
    feeder = Feeder(plan)
    tally = Tally(plan.count, feeder.received)
    record = tally.count_timed if timed else tally.count
    client = raw_client(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(plan.target)
    while await pubsub.get_message(timeout=5) is None:
        pass  # Only the subscribe confirmation can come before the feed.

    async def consume() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                record(KeySubmitted.model_validate_json(message["data"]))

    await feeder.ready()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        sent, first = await feeder.run(tally)
        tg.cancel_scope.cancel()

    await pubsub.aclose()
    await client.aclose()
    return tally.sample(sent, first)


async def ours_latency(url: str, sizes: Sizes) -> Sample:
    """Receive a paced feed with an ``EventSubscriber``; time each event."""
    return await ours_pubsub(url, sizes, timed=True)


async def raw_latency(url: str, sizes: Sizes) -> Sample:
    """Receive a paced feed with a ``listen()`` loop; time each event."""
    return await raw_pubsub(url, sizes, timed=True)


FEEDER_NOTE = (
    "pub/sub e2e: a separate feeder process (sync redis-py, RESP2, hiredis) "
    f"PUBLISHes pre-encoded events in pipelines of {BATCH}, at most "
    f"{FLOW_WINDOW:,} unreceived; the server's output-buffer limit is left at "
    "its default. Ours: an EventSubscriber handler that counts validated "
    "events; raw: pubsub.listen() + KeySubmitted.model_validate_json"
)

LATENCY_NOTE = (
    "latency cases: the feeder sends one event at a time on schedule, with "
    "its send time in event_id; measured when the handler (raw: the loop, "
    "after validation) sees it"
)

CASES = (
    Case(
        "pubsub",
        "pub/sub e2e, validated",
        ours_pubsub,
        raw_pubsub,
        notes=(FEEDER_NOTE,),
    ),
    Case(
        "latency",
        f"pub/sub latency {FULL.rate:,}/s",
        ours_latency,
        raw_latency,
        notes=(FEEDER_NOTE, LATENCY_NOTE),
        latency_of="from send to handler",
    ),
)
