"""What every benchmark case shares: sizes, samples, the server and the rounds.

A case is one job done by redis-events ("ours"), by hand-written redis-py
("raw") and, where the ``bench`` extra is installed, by FastStream
("faststream"). ``run_cases`` runs each case's sides alternately, ``measure``
records one side's CPU time and memory, and ``own_server`` gives the run a
throwaway ``redis-server``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import anyio
import redis
from redis.asyncio import Redis

from redis_events.events import REVEAL_SECRETS, KeySubmitted

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from multiprocessing.connection import Connection

# A 35-character key makes a key_submitted event exactly 200 bytes of JSON.
KEY = "k" * 35
TOKEN = "bench-token"
BATCH = 100


@dataclass(frozen=True)
class Sizes:
    """How much work each case does."""

    publish: int
    publish_many: int
    pubsub: int
    streams: int
    backlog: int
    slow: int
    slow_seconds: float
    rate: int
    rate_seconds: float


FULL = Sizes(
    publish=5_000,
    publish_many=20_000,
    pubsub=20_000,
    streams=20_000,
    backlog=100_000,
    slow=100_000,
    slow_seconds=5,
    rate=2_000,
    rate_seconds=3,
)
# The slow-handler case runs 2 s here: at 64 handlers of 10 ms it would get
# through all 20,000 events in a little over 3 s.
QUICK = Sizes(
    publish=2_000,
    publish_many=5_000,
    pubsub=5_000,
    streams=5_000,
    backlog=20_000,
    slow=20_000,
    slow_seconds=2,
    rate=2_000,
    rate_seconds=1,
)


@dataclass
class Sample:
    """One side of one case in one round.

    ``rss_growth_mb`` is left to ``measure`` (peak during the side minus
    the resident set before it) unless the side measures it itself.
    """

    events: int
    seconds: float
    lost: int | None = None
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    peak_rss_mb: float = 0.0
    rss_growth_mb: float | None = None
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """CPU time of the measured process's main thread per event, in us."""
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
    """One benchmark: the same job done by redis-events, raw redis-py, FastStream.

    ``isolated`` runs each side in a fresh process, so that its memory
    figures owe nothing to earlier cases. ``server_config`` is applied with
    CONFIG SET for this case only and needs the bench's own server.
    ``faststream`` is set only where the ``bench`` extra is installed and
    FastStream has a way to do the job (see ``cases_faststream``).
    """

    key: str
    name: str
    ours: SideRunner
    raw: SideRunner
    notes: tuple[str, ...]
    latency_of: str | None = None
    isolated: bool = False
    server_config: dict[str, str] = field(default_factory=dict)
    faststream: SideRunner | None = None

    def sides(self) -> dict[str, SideRunner]:
        """Return the sides to run, by name, in the order they run."""
        sides = {"ours": self.ours, "raw": self.raw}
        if self.faststream is not None:
            sides["faststream"] = self.faststream

        return sides


def new_event() -> KeySubmitted:
    """Return a fresh 200-byte ``key_submitted`` event (new id and time)."""
    return KeySubmitted(key_value=KEY, token_name=TOKEN)


def raw_encode(event: KeySubmitted) -> bytes:
    """Serialize ``event`` the way a hand-written publisher would, key shown."""
    return event.model_dump_json(context={REVEAL_SECRETS: event}).encode()


def raw_client(url: str) -> Redis:
    """Return a plain redis-py client speaking RESP2, like the library's."""
    return Redis.from_url(url, protocol=2)


def unique_name(case: str) -> str:
    """Return a channel, topic or group name no other run uses."""
    return f"bench:{case}:{uuid.uuid4().hex[:10]}"


# Memory and CPU of one side.


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
    if sample.rss_growth_mb is None:
        sample.rss_growth_mb = max(0, peak - before) / 1024

    return sample


def _measure_in_child(
    side: SideRunner, url: str, sizes: Sizes, results: Connection
) -> None:
    results.send(anyio.run(measure, side, url, sizes))
    results.close()


async def measure_isolated(side: SideRunner, url: str, sizes: Sizes) -> Sample:
    """Run ``measure`` in a fresh process and return its sample."""
    context = multiprocessing.get_context("spawn")
    results, child_end = context.Pipe(duplex=False)
    # Not a daemon: the side starts a feeder process of its own.
    process = context.Process(
        target=_measure_in_child, args=(side, url, sizes, child_end)
    )
    process.start()
    child_end.close()
    try:
        sample: Sample = await anyio.to_thread.run_sync(results.recv)
    finally:
        await anyio.to_thread.run_sync(process.join, 30)

    return sample


# The server.


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


@asynccontextmanager
async def server_config(url: str, settings: dict[str, str]) -> AsyncIterator[None]:
    """Apply ``settings`` with CONFIG SET inside the block; restore them after."""
    if not settings:
        yield
        return

    client = Redis.from_url(url, decode_responses=True)
    saved = {}
    for name in settings:
        values = await client.config_get(name)
        saved[name] = str(values[name])

    try:
        for name, value in settings.items():
            await client.config_set(name, value)

        yield
    finally:
        for name, value in saved.items():
            await client.config_set(name, value)

        await client.aclose()


# The rounds.

# Each case's samples by side ("ours", "raw", "faststream"), one per round.
Results: TypeAlias = dict[str, dict[str, list[Sample]]]


async def run_cases(url: str, sizes: Sizes, rounds: int, cases: list[Case]) -> Results:
    """Run every case ``rounds`` times, each side in turn each time."""
    results: Results = {
        case.name: {side: [] for side in case.sides()} for case in cases
    }
    for number in range(1, rounds + 1):
        for case in cases:
            samples = results[case.name]
            run = measure_isolated if case.isolated else measure
            async with server_config(url, case.server_config):
                for side, runner in case.sides().items():
                    samples[side].append(await run(runner, url, sizes))

            rates = "  ".join(
                f"{side} {samples[side][-1].rate:>9,.0f}/s" for side in samples
            )
            print(f"round {number}/{rounds}  {case.name:<30} {rates}", file=sys.stderr)

    return results
