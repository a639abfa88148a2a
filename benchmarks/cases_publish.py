"""Publishing cases: one awaited PUBLISH at a time, and batches of ``BATCH``."""

from __future__ import annotations

import time

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


async def ours_publish(url: str, sizes: Sizes) -> Sample:
    """Publish events one by one with ``EventPublisher.publish``."""
    channel = unique_name("publish")
    latencies: list[int] = []
    async with EventPublisher(url) as publisher:
        start = time.perf_counter_ns()
        for _ in range(sizes.publish):
            event = new_event()
            sent = time.perf_counter_ns()
            await publisher.publish(channel, event)
            latencies.append(time.perf_counter_ns() - sent)

        elapsed = time.perf_counter_ns() - start

    return Sample(sizes.publish, elapsed / 1e9, latencies_ns=latencies)


async def raw_publish(url: str, sizes: Sizes) -> Sample:
    """Publish events one by one with ``Redis.publish``."""
    channel = unique_name("publish")
    latencies: list[int] = []
    client = raw_client(url)
    await client.ping()
    start = time.perf_counter_ns()
    for _ in range(sizes.publish):
        event = new_event()
        sent = time.perf_counter_ns()
        await client.publish(channel, raw_encode(event))
        latencies.append(time.perf_counter_ns() - sent)

    elapsed = time.perf_counter_ns() - start
    await client.aclose()
    return Sample(sizes.publish, elapsed / 1e9, latencies_ns=latencies)


async def ours_publish_many(url: str, sizes: Sizes) -> Sample:
    """Publish batches with ``EventPublisher.publish_many``."""
    channel = unique_name("publish_many")
    latencies: list[int] = []
    async with EventPublisher(url) as publisher:
        start = time.perf_counter_ns()
        for _ in range(sizes.publish_many // BATCH):
            events = [new_event() for _ in range(BATCH)]
            sent = time.perf_counter_ns()
            await publisher.publish_many(channel, events)
            latencies.append(time.perf_counter_ns() - sent)

        elapsed = time.perf_counter_ns() - start

    return Sample(len(latencies) * BATCH, elapsed / 1e9, latencies_ns=latencies)


async def raw_publish_many(url: str, sizes: Sizes) -> Sample:
    """Publish batches with a non-transactional pipeline of PUBLISH."""
    channel = unique_name("publish_many")
    latencies: list[int] = []
    client = raw_client(url)
    await client.ping()
    start = time.perf_counter_ns()
    for _ in range(sizes.publish_many // BATCH):
        events = [new_event() for _ in range(BATCH)]
        sent = time.perf_counter_ns()
        async with client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.publish(channel, raw_encode(event))

            await pipe.execute()

        latencies.append(time.perf_counter_ns() - sent)

    elapsed = time.perf_counter_ns() - start
    await client.aclose()
    return Sample(len(latencies) * BATCH, elapsed / 1e9, latencies_ns=latencies)


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
