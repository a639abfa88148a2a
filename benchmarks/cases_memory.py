"""A slow handler with a large backlog at the server: does memory stay bounded?

Each side runs in a fresh process (``Case.isolated``). Its handler validates,
sleeps ``SLOW_HANDLER_SECONDS`` and counts, at most ``SLOW_CONCURRENCY`` at a
time: ours through ``max_concurrency``, raw through an ``asyncio.Semaphore``
taken before each ``create_task``. The figure is the process's resident set
after ``sizes.slow_seconds`` of consuming, minus the one before it started.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import anyio
from cases_streams import leftover
from feeders import Feed, Feeder, Tally
from harness import Case, Sample, Sizes, raw_client, status_kb, unique_name

from redis_events import EventSubscriber
from redis_events._keys import DATA_FIELD, stream_key
from redis_events.events import KeySubmitted

if TYPE_CHECKING:
    from collections.abc import Coroutine

SLOW_CONCURRENCY = 64
SLOW_HANDLER_SECONDS = 0.01
# Redis cuts a pub/sub client whose unread output passes 32 MB; the case
# wants every event waiting at the server, so the limit is lifted for it
# (https://redis.io/docs/latest/develop/reference/clients/#output-buffer-limits).
UNLIMITED_PUBSUB = {"client-output-buffer-limit": "pubsub 0 0 0"}


class Watch:
    """The resident set at the start, and the sample after the run time."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.before_kb = status_kb("VmRSS")

    async def sample_after(self, seconds: float) -> Sample:
        """Let the subscriber run for ``seconds``; return what it did."""
        start = time.perf_counter_ns()
        await anyio.sleep(seconds)
        growth_kb = status_kb("VmRSS") - self.before_kb
        elapsed = (time.perf_counter_ns() - start) / 1e9
        return Sample(self.tally.received, elapsed, rss_growth_mb=growth_kb / 1024)


class Limited:
    """Raw's concurrency limit: a semaphore taken before each new task."""

    def __init__(self) -> None:
        self.slots = asyncio.Semaphore(SLOW_CONCURRENCY)
        self.tasks: set[asyncio.Task[None]] = set()

    async def acquire(self) -> None:
        """Wait for a free slot."""
        await self.slots.acquire()

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run ``job`` in a new task, in the slot acquired for it."""
        task = asyncio.create_task(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: Coroutine[Any, Any, None]) -> None:
        try:
            await job
        finally:
            self.slots.release()

    async def wait(self) -> None:
        """Wait for the tasks still running."""
        await asyncio.gather(*self.tasks)


async def ours_slow(url: str, sizes: Sizes, *, stream: bool) -> Sample:
    """Consume with a slow ``EventSubscriber`` handler."""
    topic = unique_name("slow")
    key = stream_key(topic) if stream else topic
    feeder = Feeder(
        Feed(url, key, sizes.slow, stream=stream, window=None, backlog=stream)
    )
    tally = Tally(sizes.slow, feeder.received)
    group = unique_name("group")
    transport = "stream" if stream else "pubsub"
    subscriber = EventSubscriber(
        url,
        transport=transport,
        start_from="all",
        group=group,
        max_concurrency=SLOW_CONCURRENCY,
    )
    subscriber.registry.register(topic, KeySubmitted)

    @subscriber.on(topic)
    async def handle(topic: str, event: KeySubmitted) -> None:
        await anyio.sleep(SLOW_HANDLER_SECONDS)
        tally.count(event)

    await feeder.ready()
    watch = Watch(tally)
    async with anyio.create_task_group() as tg:
        await tg.start(subscriber.run)
        feeder.start()
        sample = await watch.sample_after(sizes.slow_seconds)
        await subscriber.stop()

    await feeder.finish()
    if stream:
        await leftover(url, key, group)

    return sample


async def raw_slow_pubsub(url: str, sizes: Sizes) -> Sample:
    """Consume with ``listen()`` and a semaphore-bounded task per event."""
    channel = unique_name("slow")
    feeder = Feeder(Feed(url, channel, sizes.slow, window=None))
    tally = Tally(sizes.slow, feeder.received)
    limited = Limited()

    async def work(data: bytes) -> None:
        event = KeySubmitted.model_validate_json(data)
        await asyncio.sleep(SLOW_HANDLER_SECONDS)
        tally.count(event)

    await feeder.ready()
    watch = Watch(tally)
    client = raw_client(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    while await pubsub.get_message(timeout=5) is None:
        pass  # Only the subscribe confirmation can come before the feed.

    async def consume() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                await limited.acquire()
                limited.spawn(work(message["data"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        feeder.start()
        sample = await watch.sample_after(sizes.slow_seconds)
        tg.cancel_scope.cancel()

    await limited.wait()
    await feeder.finish()
    await pubsub.aclose()
    await client.aclose()
    return sample


async def raw_slow_streams(url: str, sizes: Sizes) -> Sample:
    """Consume with XREADGROUP and a semaphore-bounded task per entry."""
    key = stream_key(unique_name("slow"))
    feeder = Feeder(Feed(url, key, sizes.slow, stream=True, backlog=True))
    tally = Tally(sizes.slow, feeder.received)
    group = unique_name("group")
    limited = Limited()
    done: list[bytes] = []

    async def work(entry_id: bytes, data: bytes) -> None:
        event = KeySubmitted.model_validate_json(data)
        await asyncio.sleep(SLOW_HANDLER_SECONDS)
        tally.count(event)
        done.append(entry_id)

    async def consume() -> None:
        streams: Any = {key: ">"}
        while True:
            reply: Any = await client.xreadgroup(
                group, "raw", streams, count=100, block=1000
            )
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    await limited.acquire()
                    limited.spawn(work(entry_id, fields[DATA_FIELD]))

            if done:
                ids = done.copy()
                done.clear()
                await client.xack(key, group, *ids)

    await feeder.ready()
    watch = Watch(tally)
    client = raw_client(url)
    await client.xgroup_create(key, group, id="0", mkstream=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        feeder.start()
        sample = await watch.sample_after(sizes.slow_seconds)
        tg.cancel_scope.cancel()

    await limited.wait()
    await feeder.finish()
    await client.aclose()
    await leftover(url, key, group)
    return sample


async def ours_slow_pubsub(url: str, sizes: Sizes) -> Sample:
    """Slow handler on pub/sub, with ``EventSubscriber``."""
    return await ours_slow(url, sizes, stream=False)


async def ours_slow_streams(url: str, sizes: Sizes) -> Sample:
    """Slow handler on streams, with ``EventSubscriber``."""
    return await ours_slow(url, sizes, stream=True)


SLOW_NOTE = (
    f"slow handler: handlers sleep {SLOW_HANDLER_SECONDS * 1000:.0f} ms, at most "
    f"{SLOW_CONCURRENCY} at a time (ours max_concurrency, raw asyncio.Semaphore "
    "before each create_task); each side in a fresh process; ev/s = events "
    "handled in the run time; RSS growth = VmRSS after the run time minus "
    "VmRSS before the consumer started"
)
SLOW_PUBSUB_NOTE = (
    "slow handler, pub/sub: the feeder publishes every event at once (no flow "
    "window); client-output-buffer-limit is 'pubsub 0 0 0' (unlimited) on the "
    "bench's own server for this case only, so the events wait at the server"
)
SLOW_STREAMS_NOTE = (
    "slow handler, streams: every entry is in the stream before the consumer "
    "starts; raw acks what finished after each read of 100"
)

CASES = (
    Case(
        "slow_pubsub",
        "pub/sub slow handler memory",
        ours_slow_pubsub,
        raw_slow_pubsub,
        notes=(SLOW_NOTE, SLOW_PUBSUB_NOTE),
        isolated=True,
        server_config=UNLIMITED_PUBSUB,
    ),
    Case(
        "slow_streams",
        "streams slow handler memory",
        ours_slow_streams,
        raw_slow_streams,
        notes=(SLOW_NOTE, SLOW_STREAMS_NOTE),
        isolated=True,
    ),
)
