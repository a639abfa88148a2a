"""The feeder process, and the tally of what a subscriber received.

Events of the end-to-end cases come from a separate process (sync redis-py,
RESP2, hiredis) that sends pre-encoded events, identical for both sides of a
case, so only the subscriber differs.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import redis
from harness import BATCH, Sample, new_event, raw_encode

from redis_events._keys import DATA_FIELD

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Event as ProcessEvent

    from redis_events.events import KeySubmitted

# A batched feed keeps at most this many events sent but not yet received,
# so Redis's pub/sub output-buffer limit (32 MB hard by default,
# https://redis.io/docs/latest/develop/reference/clients/#output-buffer-limits)
# is never reached and no event is lost to a cut connection.
FLOW_WINDOW = 5_000
# A wait for the subscriber ends as "lost" after this long without progress.
STALL_SECONDS = 2.0


@dataclass(frozen=True)
class Feed:
    """What the feeder process sends, and how.

    ``target`` is a channel (PUBLISH) or, with ``stream``, a stream key
    (XADD, the event in the entry's ``field``, the library's ``data`` unless
    a side reads another one). A ``rate`` sends the events one at a
    time on schedule, with the send time (``perf_counter_ns``, a clock shared
    by every process on Linux) in ``event_id``; otherwise they go in
    pipelines of ``BATCH``, at most ``window`` of them unreceived (``None``:
    no limit). A ``backlog`` feed sends everything before it reports ready.
    """

    url: str
    target: str
    count: int
    stream: bool = False
    rate: int | None = None
    window: int | None = FLOW_WINDOW
    backlog: bool = False
    field: bytes | str = DATA_FIELD


def feed(plan: Feed, received: Any, go: ProcessEvent, results: Connection) -> None:
    """Send the events of ``plan``; runs in the feeder process."""
    client = redis.Redis.from_url(plan.url, protocol=2)
    client.ping()
    payloads = [] if plan.rate else [raw_encode(new_event()) for _ in range(plan.count)]
    sent = feed_batched(client, plan, payloads, None) if plan.backlog else 0
    results.send("ready")
    go.wait()
    first = time.perf_counter_ns()
    if plan.rate:
        sent = feed_paced(client, plan)
    elif not plan.backlog:
        sent = feed_batched(client, plan, payloads, received)

    results.send((sent, first))
    client.close()


def send(client: redis.Redis, plan: Feed, payload: bytes) -> None:
    """Send one event to the feed's channel or stream."""
    if plan.stream:
        client.xadd(plan.target, {plan.field: payload})
    else:
        client.publish(plan.target, payload)


def feed_batched(
    client: redis.Redis, plan: Feed, payloads: list[bytes], received: Any
) -> int:
    """Send ``payloads`` in pipelines, keeping the flow window if there is one."""
    window = plan.window if received is not None else None
    sent = 0
    for begin in range(0, len(payloads), BATCH):
        stalled_at = time.monotonic() + STALL_SECONDS
        while (
            window is not None
            and sent - received.value > window
            and time.monotonic() < stalled_at
        ):
            time.sleep(0.0002)

        pipe = client.pipeline(transaction=False)
        for payload in payloads[begin : begin + BATCH]:
            send(pipe, plan, payload)

        sent += len(pipe.execute())

    return sent


def feed_paced(client: redis.Redis, plan: Feed) -> int:
    """Send one event at a time at ``plan.rate`` per second, send time inside."""
    assert plan.rate is not None
    template = new_event().model_copy(update={"event_id": "@" * 32})
    head, tail = raw_encode(template).split(b"@" * 32)
    interval = 1e9 / plan.rate
    start = time.perf_counter_ns()
    for index in range(plan.count):
        due = start + int(index * interval)
        now = time.perf_counter_ns()
        if due > now:
            time.sleep((due - now) / 1e9)

        stamp = f"{time.perf_counter_ns():032d}".encode()
        send(client, plan, head + stamp + tail)

    return plan.count


class Tally:
    """What a subscriber received, written by its handler or loop."""

    __slots__ = ("done", "expected", "last_ns", "latencies", "received", "shared")

    def __init__(self, expected: int, shared: Any) -> None:
        self.expected = expected
        self.received = 0
        self.last_ns = 0
        self.latencies: list[int] = []
        self.shared = shared
        self.done = anyio.Event()

    def count(self, event: KeySubmitted) -> None:
        """Count one validated event."""
        self.last_ns = time.perf_counter_ns()
        self.received += 1
        self.shared.value = self.received
        if self.received == self.expected:
            self.done.set()

    def count_timed(self, event: KeySubmitted) -> None:
        """Count one event and how long it took since it was sent."""
        self.count(event)
        self.latencies.append(self.last_ns - int(event.event_id))

    async def drained(self) -> None:
        """Wait until every event arrived or nothing arrives any more."""
        while not self.done.is_set():
            seen = self.received
            with anyio.move_on_after(STALL_SECONDS):
                await self.done.wait()

            if self.received == seen:
                return

    def sample(
        self, sent: int, first_ns: int, *, end_ns: int | None = None, unacked: int = 0
    ) -> Sample:
        """Return the sample: from ``first_ns`` to the last event (or ``end_ns``).

        Lost is what was sent but not received, plus what was received but
        not acknowledged (``unacked``).
        """
        end = self.last_ns if end_ns is None else end_ns
        return Sample(
            self.received,
            (end - first_ns) / 1e9,
            lost=sent - self.received + unacked,
            latencies_ns=self.latencies,
        )


class Feeder:
    """A feeder process, started and ready before the clock starts."""

    def __init__(self, plan: Feed) -> None:
        context = multiprocessing.get_context("spawn")
        self.plan = plan
        self.received = context.Value("q", 0, lock=False)
        self.go = context.Event()
        self.results, child_end = context.Pipe(duplex=False)
        self.process = context.Process(
            target=feed, args=(plan, self.received, self.go, child_end), daemon=True
        )
        self.process.start()
        child_end.close()

    async def ready(self) -> None:
        """Wait until the feeder has connected and built (or sent) its events."""
        await anyio.to_thread.run_sync(self.results.recv)

    def start(self) -> None:
        """Let the feeder send."""
        self.go.set()

    async def finish(self) -> tuple[int, int]:
        """Wait until the feeder is done; return how many it sent, and when."""
        sent, first = await anyio.to_thread.run_sync(self.results.recv)
        await anyio.to_thread.run_sync(self.process.join, 10)
        return int(sent), int(first)

    async def run(self, tally: Tally) -> tuple[int, int]:
        """Start sending; wait for the feeder, then for the subscriber.

        Returns how many events were sent, and when the first one was.
        """
        self.start()
        sent = await self.finish()
        await tally.drained()
        return sent
