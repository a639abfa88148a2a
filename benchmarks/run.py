"""Measure redis-events side by side with the same job on raw redis-py.

Run from the project root::

    python benchmarks/run.py               # 3 rounds, full sizes
    python benchmarks/run.py --quick       # 1 round, small sizes, well under 1 min
    python benchmarks/run.py --json out.json --redis-url redis://127.0.0.1:6380/0

Without ``--redis-url`` a ``redis-server`` is started on a free loopback port
(no persistence) and stopped by pid at the end. Each case runs redis-events
("ours") and a hand-written redis-py equivalent ("raw") in the same process,
alternating ours, raw, ours, raw, ...; the table shows medians over rounds.
The exit status is 1 when any event was lost.

Both sides speak RESP2 with hiredis, as the library does by default, and both
build or validate events with the library's own ``KeySubmitted`` model: raw
publishers serialize it with ``model_dump_json``, raw subscribers validate
with ``KeySubmitted.model_validate_json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import redis
from redis.asyncio import Redis

from redis_events import EventPublisher, EventSubscriber
from redis_events.events import REVEAL_SECRETS, KeySubmitted

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Event as ProcessEvent

# A 35-character key makes a key_submitted event exactly 200 bytes of JSON.
KEY = "k" * 35
TOKEN = "bench-token"
REVEAL = {REVEAL_SECRETS: True}
BATCH = 100
# The pub/sub feeder keeps at most this many events sent but not yet
# received, so Redis's pub/sub output-buffer limit (32 MB hard by default,
# https://redis.io/docs/latest/develop/reference/clients/#output-buffer-limits)
# is never reached and no event is lost to a cut connection.
FLOW_WINDOW = 5_000
# A wait for the subscriber ends as "lost" after this long without progress.
STALL_SECONDS = 2.0

FEEDER_NOTE = (
    "pub/sub cases: events come from a separate process (sync redis-py, "
    f"RESP2, hiredis) sending pre-encoded events in pipelines of {BATCH}, "
    f"at most {FLOW_WINDOW:,} unreceived; the server's output-buffer limit "
    "is left at its default"
)


@dataclass(frozen=True)
class Sizes:
    """How much work each case does."""

    publish: int
    publish_many: int
    pubsub: int
    rate: int
    rate_seconds: float


FULL = Sizes(
    publish=5_000, publish_many=20_000, pubsub=20_000, rate=2_000, rate_seconds=3
)
QUICK = Sizes(
    publish=2_000, publish_many=5_000, pubsub=5_000, rate=2_000, rate_seconds=1
)


@dataclass
class Sample:
    """One side of one case in one round."""

    events: int
    seconds: float
    lost: int | None = None
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    peak_rss_mb: float = 0.0
    rss_growth_mb: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """CPU time of this process's main thread per event, in microseconds."""
        return 1e6 * self.cpu_seconds / self.events if self.events else 0.0

    def percentile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank) of the latencies, in ms."""
        if not self.latencies_ns:
            return None

        ordered = sorted(self.latencies_ns)
        rank = max(0, math.ceil(q * len(ordered)) - 1)
        return ordered[rank] / 1e6


SideRunner: TypeAlias = "Callable[[str, Sizes], Awaitable[Sample]]"


@dataclass(frozen=True)
class Case:
    """One benchmark: the same job done by redis-events and by raw redis-py."""

    key: str
    name: str
    latency_of: str | None
    ours: SideRunner
    raw: SideRunner


def new_event() -> KeySubmitted:
    """Return a fresh 200-byte ``key_submitted`` event (new id and time)."""
    return KeySubmitted(key_value=KEY, token_name=TOKEN)


def raw_encode(event: KeySubmitted) -> str:
    """Serialize ``event`` the way a hand-written publisher would."""
    return event.model_dump_json(context=REVEAL)


def raw_client(url: str) -> Redis:
    """Return a plain redis-py client speaking RESP2, like the library's."""
    return Redis.from_url(url, protocol=2)


def channel_for(case: str) -> str:
    """Return a channel name no other run uses."""
    return f"bench:{case}:{uuid.uuid4().hex[:10]}"


# Case 1: awaited publish, one event at a time.


async def ours_publish(url: str, sizes: Sizes) -> Sample:
    """Publish events one by one with ``EventPublisher.publish``."""
    channel = channel_for("publish")
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
    channel = channel_for("publish")
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


# Case 2: batches of BATCH events in one round trip.


async def ours_publish_many(url: str, sizes: Sizes) -> Sample:
    """Publish batches with ``EventPublisher.publish_many``."""
    channel = channel_for("publish_many")
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
    channel = channel_for("publish_many")
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


# Cases 3 and 4: pub/sub end to end, fed by a separate process.


@dataclass(frozen=True)
class Feed:
    """What the feeder process sends: ``count`` events, paced or batched."""

    url: str
    channel: str
    count: int
    rate: int | None = None


def feed(plan: Feed, received: Any, go: ProcessEvent, results: Connection) -> None:
    """Send the events of ``plan``; runs in the feeder process.

    A paced feed carries its send time (``perf_counter_ns``, a clock shared
    by every process on Linux) in each event's ``event_id``.
    """
    client = redis.Redis.from_url(plan.url, protocol=2)
    client.ping()
    template = new_event().model_copy(update={"event_id": "@" * 32})
    head, tail = raw_encode(template).encode().split(b"@" * 32)
    payloads = [raw_encode(new_event()).encode() for _ in range(plan.count)]
    results.send("ready")
    go.wait()
    first = time.perf_counter_ns()
    if plan.rate is None:
        sent = feed_batched(client, plan.channel, payloads, received)
    else:
        sent = feed_paced(client, plan, head, tail)

    results.send((sent, first))
    client.close()


def feed_batched(
    client: redis.Redis, channel: str, payloads: list[bytes], received: Any
) -> int:
    """Send ``payloads`` in pipelines, keeping the flow window."""
    sent = 0
    for begin in range(0, len(payloads), BATCH):
        stalled_at = time.monotonic() + STALL_SECONDS
        while sent - received.value > FLOW_WINDOW and time.monotonic() < stalled_at:
            time.sleep(0.0002)

        pipe = client.pipeline(transaction=False)
        for payload in payloads[begin : begin + BATCH]:
            pipe.publish(channel, payload)

        sent += len(pipe.execute())

    return sent


def feed_paced(client: redis.Redis, plan: Feed, head: bytes, tail: bytes) -> int:
    """Send one event at a time at ``plan.rate`` per second."""
    assert plan.rate is not None
    interval = 1e9 / plan.rate
    start = time.perf_counter_ns()
    for index in range(plan.count):
        due = start + int(index * interval)
        now = time.perf_counter_ns()
        if due > now:
            time.sleep((due - now) / 1e9)

        stamp = f"{time.perf_counter_ns():032d}".encode()
        client.publish(plan.channel, head + stamp + tail)

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
        """Wait until the feeder has connected and built its events."""
        await anyio.to_thread.run_sync(self.results.recv)

    async def run(self, tally: Tally) -> Sample:
        """Start sending, wait for the subscriber, and return the sample."""
        self.go.set()
        sent, first = await anyio.to_thread.run_sync(self.results.recv)
        await tally.drained()
        await anyio.to_thread.run_sync(self.process.join, 10)
        return Sample(
            tally.received,
            (tally.last_ns - first) / 1e9,
            lost=sent - tally.received,
            latencies_ns=tally.latencies,
        )


def pubsub_plan(url: str, sizes: Sizes, *, timed: bool) -> Feed:
    """Return the feed of the end-to-end case, or of the latency case."""
    if timed:
        count = int(sizes.rate * sizes.rate_seconds)
        return Feed(url, channel_for("latency"), count, rate=sizes.rate)

    return Feed(url, channel_for("pubsub"), sizes.pubsub)


async def ours_pubsub(url: str, sizes: Sizes, *, timed: bool = False) -> Sample:
    """Receive the feed with an ``EventSubscriber`` handler."""
    plan = pubsub_plan(url, sizes, timed=timed)
    feeder = Feeder(plan)
    tally = Tally(plan.count, feeder.received)
    record = tally.count_timed if timed else tally.count
    subscriber = EventSubscriber(url)
    subscriber.registry.register(plan.channel, KeySubmitted)

    @subscriber.on(plan.channel)
    async def handle(topic: str, event: KeySubmitted) -> None:
        record(event)

    await feeder.ready()
    async with anyio.create_task_group() as tg:
        await tg.start(subscriber.run)
        sample = await feeder.run(tally)
        await subscriber.stop()

    return sample


async def raw_pubsub(url: str, sizes: Sizes, *, timed: bool = False) -> Sample:
    """Receive the feed with a ``pubsub.listen()`` loop and pydantic."""
    plan = pubsub_plan(url, sizes, timed=timed)
    feeder = Feeder(plan)
    tally = Tally(plan.count, feeder.received)
    record = tally.count_timed if timed else tally.count
    client = raw_client(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(plan.channel)
    while await pubsub.get_message(timeout=5) is None:
        pass  # Only the subscribe confirmation can come before the feed.

    async def consume() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                record(KeySubmitted.model_validate_json(message["data"]))

    await feeder.ready()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        sample = await feeder.run(tally)
        tg.cancel_scope.cancel()

    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped upstream
    await client.aclose()
    return sample


async def ours_latency(url: str, sizes: Sizes) -> Sample:
    """Receive a paced feed with an ``EventSubscriber``; time each event."""
    return await ours_pubsub(url, sizes, timed=True)


async def raw_latency(url: str, sizes: Sizes) -> Sample:
    """Receive a paced feed with a ``listen()`` loop; time each event."""
    return await raw_pubsub(url, sizes, timed=True)


CASES = (
    Case("publish", "publish, awaited", "per publish call", ours_publish, raw_publish),
    Case(
        "publish_many",
        f"publish_many x{BATCH}",
        "per batch",
        ours_publish_many,
        raw_publish_many,
    ),
    Case("pubsub", "pub/sub e2e, validated", None, ours_pubsub, raw_pubsub),
    Case(
        "latency",
        f"pub/sub latency {FULL.rate:,}/s",
        "from send to handler",
        ours_latency,
        raw_latency,
    ),
)


# Memory: the peak resident set of this process during one side of a case.


def status_kb(name: str) -> int:
    """Return a ``/proc/self/status`` field in kB (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except OSError:
        pass

    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False if it can't."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False

    return True


async def measure(side: SideRunner, url: str, sizes: Sizes) -> Sample:
    """Run one side of a case; record its peak RSS and main-thread CPU time."""
    before = status_kb("VmRSS")
    resettable = reset_peak_rss()
    cpu = time.thread_time()
    sample = await side(url, sizes)
    sample.cpu_seconds = time.thread_time() - cpu
    if resettable:
        peak = status_kb("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    sample.peak_rss_mb = peak / 1024
    sample.rss_growth_mb = max(0, peak - before) / 1024
    return sample


# Summaries and the table.


@dataclass
class Summary:
    """One side of one case over all rounds: medians, worst memory, all losses."""

    rate: float
    p50_ms: float | None
    p99_ms: float | None
    lost: int | None
    cpu_us: float
    peak_rss_mb: float
    rss_growth_mb: float
    rates: list[float]
    p99s_ms: list[float]

    @classmethod
    def of(cls, samples: list[Sample]) -> Summary:
        """Summarize the rounds of one side."""
        p50 = [v for s in samples if (v := s.percentile_ms(0.50)) is not None]
        p99 = [v for s in samples if (v := s.percentile_ms(0.99)) is not None]
        losses = [s.lost for s in samples if s.lost is not None]
        return cls(
            rate=statistics.median(s.rate for s in samples),
            p50_ms=statistics.median(p50) if p50 else None,
            p99_ms=statistics.median(p99) if p99 else None,
            lost=sum(losses) if losses else None,
            cpu_us=statistics.median(s.cpu_us for s in samples),
            peak_rss_mb=max(s.peak_rss_mb for s in samples),
            rss_growth_mb=max(s.rss_growth_mb for s in samples),
            rates=[round(s.rate, 1) for s in samples],
            p99s_ms=[round(v, 3) for v in p99],
        )


def ratio(ours: float | None, raw: float | None) -> float | None:
    """Return ``ours / raw`` when both are known."""
    if ours is None or raw is None or raw == 0:
        return None

    return ours / raw


def pair(ours: float | None, raw: float | None, spec: str) -> str:
    """Format an ours/raw pair of numbers."""
    if ours is None or raw is None:
        return "-"

    return f"{ours:{spec}} / {raw:{spec}}"


def table_rows(summaries: dict[str, tuple[Summary, Summary]]) -> list[list[str]]:
    """Return the table, header first."""
    rows = [
        [
            "case",
            "ours ev/s",
            "raw ev/s",
            "ours/raw",
            "p50 ms ours / raw",
            "p99 ms ours / raw",
            "p99 ours/raw",
            "lost ours / raw",
            "CPU us/event ours / raw",
            "peak RSS MB ours / raw",
        ]
    ]
    for name, (ours, raw) in summaries.items():
        rate_ratio = ratio(ours.rate, raw.rate)
        p99_ratio = ratio(ours.p99_ms, raw.p99_ms)
        rows.append(
            [
                name,
                f"{ours.rate:,.0f}",
                f"{raw.rate:,.0f}",
                f"{rate_ratio:.2f}" if rate_ratio is not None else "-",
                pair(ours.p50_ms, raw.p50_ms, ".3f"),
                pair(ours.p99_ms, raw.p99_ms, ".3f"),
                f"{p99_ratio:.2f}" if p99_ratio is not None else "-",
                pair(ours.lost, raw.lost, "d"),
                pair(ours.cpu_us, raw.cpu_us, ".1f"),
                pair(ours.peak_rss_mb, raw.peak_rss_mb, ".1f"),
            ]
        )

    return rows


def render(rows: list[list[str]]) -> str:
    """Lay the rows out as an aligned text table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))

    return "\n".join(lines)


# The server and the run.


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def own_server() -> Iterator[str]:
    """Run a throwaway ``redis-server`` and yield its URL; stop it by pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH; install it or pass --redis-url")

    port = free_port()
    directory = tempfile.mkdtemp(prefix="redis-events-bench-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", directory]
    command += ["--logfile", str(Path(directory) / "redis.log")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_ping(url)
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

        shutil.rmtree(directory, ignore_errors=True)


def wait_for_ping(url: str) -> None:
    """Wait up to 10 s for the server at ``url`` to answer PING."""
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise

            time.sleep(0.05)
        else:
            client.close()
            return


async def run_cases(
    url: str, sizes: Sizes, rounds: int, cases: list[Case]
) -> dict[str, tuple[list[Sample], list[Sample]]]:
    """Run every case ``rounds`` times, ours then raw each time."""
    results: dict[str, tuple[list[Sample], list[Sample]]] = {
        case.name: ([], []) for case in cases
    }
    for number in range(1, rounds + 1):
        for case in cases:
            ours, raw = results[case.name]
            ours.append(await measure(case.ours, url, sizes))
            raw.append(await measure(case.raw, url, sizes))
            print(
                f"round {number}/{rounds}  {case.name:<24} "
                f"ours {ours[-1].rate:>9,.0f}/s  raw {raw[-1].rate:>9,.0f}/s",
                file=sys.stderr,
            )

    return results


def describe(url: str, sizes: Sizes, rounds: int, own: bool) -> dict[str, Any]:
    """Return what the reader needs to reproduce the run."""
    client = redis.Redis.from_url(url)
    server = client.info("server")
    client.close()
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "redis_server": server.get("redis_version"),
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "pydantic": version("pydantic"),
        "redis_events": version("redis-events"),
        "server": "own, --save '' --appendonly no" if own else "given by --redis-url",
        "rounds": rounds,
        "sizes": asdict(sizes),
        "event_bytes": len(raw_encode(new_event())),
        "notes": [
            "both sides: RESP2 (protocol=2), hiredis, the library's KeySubmitted",
            "raw publish: KeySubmitted(...).model_dump_json() then PUBLISH",
            "raw subscribe: pubsub.listen() + KeySubmitted.model_validate_json",
            FEEDER_NOTE,
            "latency: send time in event_id, measured when the handler runs",
            "ratios, latencies and CPU are medians over rounds; lost is the sum",
            "CPU us/event: main-thread CPU time of this process per event "
            "(the feeder process is not counted)",
        ],
    }


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this server instead of our own")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--case",
        action="append",
        choices=[case.key for case in CASES],
        help="run only this case (repeatable)",
    )
    return parser.parse_args()


def main() -> int:
    """Run the benchmarks and print the table."""
    arguments = parse_arguments()
    sizes = QUICK if arguments.quick else FULL
    rounds = arguments.rounds or (1 if arguments.quick else 3)
    cases = [c for c in CASES if not arguments.case or c.key in arguments.case]
    with ExitStack() as stack:
        url = arguments.redis_url or stack.enter_context(own_server())
        meta = describe(url, sizes, rounds, own=not arguments.redis_url)
        results = anyio.run(run_cases, url, sizes, rounds, cases)

    summaries = {
        name: (Summary.of(ours), Summary.of(raw))
        for name, (ours, raw) in results.items()
    }
    print(render(table_rows(summaries)))
    for note in meta["notes"]:
        print(f"- {note}")

    timed = "; ".join(f"{c.name}: {c.latency_of}" for c in cases if c.latency_of)
    print(f"- latency is measured {timed}")
    print(
        f"- {meta['machine']}, Python {meta['python']}, "
        f"Redis {meta['redis_server']}, redis-py {meta['redis_py']}, "
        f"hiredis {meta['hiredis']}, pydantic {meta['pydantic']}, "
        f"{meta['event_bytes']}-byte events, {rounds} round(s)"
    )
    if arguments.json:
        document = {
            "meta": meta,
            "cases": {
                name: {
                    "ours": asdict(ours),
                    "raw": asdict(raw),
                    "rate_ratio": ratio(ours.rate, raw.rate),
                    "p99_ratio": ratio(ours.p99_ms, raw.p99_ms),
                }
                for name, (ours, raw) in summaries.items()
            },
        }
        arguments.json.write_text(json.dumps(document, indent=2) + "\n")

    lost = sum(s.lost or 0 for pair_ in summaries.values() for s in pair_)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
