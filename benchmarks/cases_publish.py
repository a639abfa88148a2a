"""Publishing cases: one awaited PUBLISH at a time, and batches of ``BATCH``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeAlias

from harness import (
    BATCH,
    Case,
    Sample,
    Sizes,
    new_event,
    raw_client,
    raw_encode,
    unique_name,
)

from redis_events import EventPublisher
from redis_events.events import KeySubmitted

# What one timed call sends: one event, or one batch of ``BATCH``.
SendOne: TypeAlias = Callable[[KeySubmitted], Awaitable[object]]
SendBatch: TypeAlias = Callable[[list[KeySubmitted]], Awaitable[object]]


async def time_sends(count: int, send: SendOne) -> Sample:
    """Send ``count`` new events one at a time, timing each send and the whole."""
    latencies: list[int] = []
    start = time.perf_counter_ns()
    for _ in range(count):
        event = new_event()
        sent = time.perf_counter_ns()
        await send(event)
        latencies.append(time.perf_counter_ns() - sent)

    elapsed = time.perf_counter_ns() - start
    return Sample(count, elapsed / 1e9, latencies_ns=latencies)


async def time_batches(count: int, send: SendBatch) -> Sample:
    """Send ``count`` new events in batches of ``BATCH``, timing each batch."""
    latencies: list[int] = []
    start = time.perf_counter_ns()
    for _ in range(count // BATCH):
        events = [new_event() for _ in range(BATCH)]
        sent = time.perf_counter_ns()
        await send(events)
        latencies.append(time.perf_counter_ns() - sent)

    elapsed = time.perf_counter_ns() - start
    return Sample(len(latencies) * BATCH, elapsed / 1e9, latencies_ns=latencies)


async def ours_publish(url: str, sizes: Sizes) -> Sample:
    """Publish events one by one with ``EventPublisher.publish``."""
    channel = unique_name("publish")
    async with EventPublisher(url) as publisher:
        return await time_sends(sizes.publish, partial(publisher.publish, channel))


async def raw_publish(url: str, sizes: Sizes) -> Sample:
    """Publish events one by one with ``Redis.publish``."""
    channel = unique_name("publish")
    client = raw_client(url)
    await client.ping()

    async def send(event: KeySubmitted) -> None:
        await client.publish(channel, raw_encode(event))

    sample = await time_sends(sizes.publish, send)
    await client.aclose()
    return sample


async def ours_publish_many(url: str, sizes: Sizes) -> Sample:
    """Publish batches with ``EventPublisher.publish_many``."""
    channel = unique_name("publish_many")
    async with EventPublisher(url) as publisher:
        send = partial(publisher.publish_many, channel)
        return await time_batches(sizes.publish_many, send)


async def raw_publish_many(url: str, sizes: Sizes) -> Sample:
    """Publish batches with a non-transactional pipeline of PUBLISH."""
    channel = unique_name("publish_many")
    client = raw_client(url)
    await client.ping()

    async def send(events: list[KeySubmitted]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.publish(channel, raw_encode(event))

            await pipe.execute()

    sample = await time_batches(sizes.publish_many, send)
    await client.aclose()
    return sample


CASES = (
    Case(
        "publish",
        "publish, awaited",
        ours_publish,
        raw_publish,
        notes=(
            "publish: ours EventPublisher.publish(channel, KeySubmitted(...)); "
            "raw model_dump_json() then await Redis.publish, one at a time",
        ),
        latency_of="per publish call",
    ),
    Case(
        "publish_many",
        f"publish_many x{BATCH}",
        ours_publish_many,
        raw_publish_many,
        notes=(
            f"publish_many: ours publish_many(channel, {BATCH} events); raw a "
            f"pipeline(transaction=False) of {BATCH} PUBLISH",
        ),
        latency_of="per batch",
    ),
)
