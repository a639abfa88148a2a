"""Chaos run: the streams transport under cut connections, kills and restarts.

Two consumer processes in one group record every event they handle with
``HINCRBY handled <event_id> 1`` on a connection of their own; a publisher
sends N events with ``publish_many`` in batches of 100 (paced, and never far
ahead of the consumers), and counts an event as published only once Redis
acknowledged its XADD. Meanwhile faults are injected at seeded random
intervals:

- ``CLIENT KILL`` of every connection of the library (client names start
  with ``redis-events``), and, for a few seconds after each consumer kill,
  of the connection of every XAUTOCLAIM as MONITOR shows it ("claim cuts");
- SIGKILL of one consumer, restarted under the same consumer name 0.1-3 s
  later, in the background;
- restarts of Redis on the same port, by SIGTERM, SHUTDOWN and SIGKILL in
  turn, with AOF and ``appendfsync always``, so that acknowledged XADDs,
  XACKs and the ``handled`` hash survive;
- and the handler fails the first delivery of 1 event in 100.

When the faults have stopped and the group has drained (or the drain limit
passed), it prints one line::

    published=N handled=H lost=L duplicates=D faults=F (kills=K
    client_kills=C restarts=R) wall=S.s

``lost`` counts published events never handled; ``duplicates`` counts
handler runs beyond the first per event; ``client_kills`` includes the
claim cuts. It exits 1 when an event was lost or not all N were published.
Details (entries still pending, dead letters, acknowledged XADDs missing
after a restart, publisher retries, consumer counters) go to stderr, and
the logs are kept when the run failed. Usage::

    .venv/bin/python benchmarks/chaos.py                # 100,000 events
    .venv/bin/python benchmarks/chaos.py --quick        # 10,000 events
    .venv/bin/python benchmarks/chaos.py --seed 7 --events 50000
    .venv/bin/python benchmarks/chaos.py --redis-url redis://127.0.0.1:6380/0

With ``--redis-url`` the server is not ours: it is never restarted, and only
this run's keys and connections are touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from redis_events import EventPublisher, EventSubscriber, current_delivery
from redis_events._keys import dead_letter_key, stream_key
from redis_events.exceptions import RedisUnavailableError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from anyio.abc import Process, SocketStream, TaskGroup

BATCH = 100
GROUP = "chaos"
BOOK_CLIENT = "chaos-book"
CONSUMERS = ("chaos-c1", "chaos-c2")
# Short claim settings, so that what a killed consumer held comes back fast.
CONSUMER_SETTINGS = {
    "REDIS_EVENTS_TRANSPORT": "stream",
    "REDIS_EVENTS_GROUP": GROUP,
    "REDIS_EVENTS_START_FROM": "all",
    "REDIS_EVENTS_CLAIM_MIN_IDLE": "2",
    "REDIS_EVENTS_CLAIM_INTERVAL": "0.5",
    "REDIS_EVENTS_RETRY_BACKOFF": "0.2",
    "REDIS_EVENTS_RECONNECT_BACKOFF_CAP": "1",
    "REDIS_EVENTS_STREAM_MAXLEN": "0",
}
RECORD_PATIENCE = 30.0
STOP_TIMEOUT = 30.0
SCRIPT = Path(__file__).resolve()
# Connections cut right after an XAUTOCLAIM, per consumer kill.
CLAIM_CUTS = 8
# +<time> [<db> <addr>] "<command>" ...: a line of MONITOR's output.
_MONITOR_LINE = re.compile(rb'\+[\d.]+ \[\d+ (?P<addr>[^\]]+)\] "(?P<command>[^"]+)"')
# How Redis is stopped for each restart, in turn.
RESTARTS = ("SIGTERM", "SHUTDOWN", "SIGKILL")


@dataclass(frozen=True)
class Plan:
    """How much work and how many faults, and the time limits."""

    events: int
    seed: int
    restarts: int
    min_kills: int
    gap: tuple[float, float]
    rate: float
    window: int
    fail_every: int
    time_limit: float
    drain_limit: float


@dataclass(frozen=True)
class Names:
    """This run's topic, keys and client-name prefix."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def topic(self) -> str:
        return f"chaos-{self.run}"

    @property
    def handled(self) -> str:
        return f"chaos:{self.run}:handled"

    @property
    def client_name(self) -> str:
        return f"redis-events-chaos-{self.run}"


@dataclass
class Tally:
    """What happened: published events and injected faults."""

    published: set[str] = field(default_factory=set)
    entry_ids: set[str] = field(default_factory=set)
    batch_retries: int = 0
    publisher: dict[str, int] = field(default_factory=dict)
    publisher_done: bool = False
    kills: int = 0
    client_kills: int = 0
    connections_killed: int = 0
    claim_cuts: int = 0
    restarts: int = 0
    restarted_by: list[str] = field(default_factory=list)


class Server:
    """A redis-server with AOF on every write, restartable on its port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (see scripts/ensure-redis-server)")

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]

        self.command = [
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--dir", str(directory), "--logfile", str(directory / "redis.log")),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
        ]
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server and wait until it answers PING (AOF loaded)."""
        self.process = await anyio.open_process(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = Redis.from_url(self.url, client_name=BOOK_CLIENT)
        try:
            with anyio.fail_after(30):
                await _poll(lambda: _answers(client), 0.05)
        finally:
            await client.aclose()

    async def restart(self, how: str, downtime: float) -> None:
        """Stop (SIGTERM, SHUTDOWN or SIGKILL), stay down ``downtime`` s, start."""
        assert self.process is not None
        if how == "SHUTDOWN":
            client = Redis.from_url(self.url, client_name=BOOK_CLIENT)
            try:
                await client.shutdown()
            finally:
                await client.aclose()
        elif how == "SIGKILL":
            # A crash: only what appendfsync always already wrote survives.
            self.process.kill()
        else:
            self.process.terminate()

        with anyio.fail_after(30):
            await self.process.wait()

        await anyio.sleep(downtime)
        await self.start()

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return

        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
            return

        process.kill()
        await process.wait()


class Consumer:
    """One consumer process, started again under the same name after a kill."""

    def __init__(self, name: str, directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.directory = directory
        self.env = env | {"REDIS_EVENTS_CONSUMER": name}
        self.process: Process | None = None
        self.runs = 0

    @property
    def stdout_path(self) -> Path:
        return self.directory / f"{self.name}-{self.runs}.out"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, delay: float = 0.0) -> None:
        """Start the process (again) after ``delay`` seconds."""
        await anyio.sleep(delay)
        self.runs += 1
        stdout, stderr = self._files()
        try:
            self.process = await anyio.open_process(
                [sys.executable, str(SCRIPT), "--worker"],
                stdout=stdout,
                stderr=stderr,
                env=self.env,
            )
        finally:
            stdout.close()
            stderr.close()

    async def kill(self) -> None:
        """SIGKILL the process, as a crash would, and reap it."""
        if self.process is not None and self.running:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> dict[str, int]:
        """SIGTERM; return the stats it printed ({} when it had to be killed)."""
        if self.process is None or self.process.returncode is not None:
            return {}

        self.process.terminate()
        with anyio.move_on_after(STOP_TIMEOUT):
            await self.process.wait()

        if self.process.returncode is None:
            await self.kill()
            return {}

        lines = (await anyio.Path(self.stdout_path).read_text()).splitlines()
        stats: dict[str, int] = json.loads(lines[-1]) if lines else {}
        return stats

    def _files(self) -> tuple[IO[bytes], IO[bytes]]:
        log = self.directory / f"{self.name}-{self.runs}.log"
        return self.stdout_path.open("wb"), log.open("wb")


async def _answers(client: Redis) -> bool:
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False


async def _poll(check: Callable[[], Awaitable[bool]], interval: float) -> None:
    """Wait until ``check()`` is true, asking every ``interval`` seconds."""
    # Server state, not a local change: there is no event to wait on.
    while not await check():  # noqa: ASYNC110  # polls Redis, see above
        await anyio.sleep(interval)


async def _may_publish(book: Redis, names: Names, tally: Tally, window: int) -> bool:
    # Unknown during a restart: then the publish goes ahead into the outage.
    handled = await _count_handled(book, names)
    return handled is None or len(tally.published) - handled <= window


async def _count_handled(book: Redis, names: Names) -> int | None:
    try:
        return int(await book.hlen(names.handled))
    except (RedisError, OSError):
        return None


async def publish(plan: Plan, names: Names, url: str, tally: Tally) -> None:
    """Publish ``plan.events`` events; retry a batch until Redis takes it.

    At most ``plan.rate`` events a second (0: no limit), and no more than
    ``plan.window`` ahead of those handled, so that the faults are spread
    over the whole run and meet the consumers with work in hand.
    """
    book = Redis.from_url(url, client_name=BOOK_CLIENT)
    publisher = EventPublisher(
        url, transport="stream", client_name=names.client_name, stream_maxlen=0
    )
    started = anyio.current_time()
    deadline = started + plan.time_limit
    try:
        for first in range(0, plan.events, BATCH):
            if plan.rate:
                await anyio.sleep_until(started + first / plan.rate)

            ids = [f"e{n:07d}" for n in range(first, min(first + BATCH, plan.events))]
            await _poll(lambda: _may_publish(book, names, tally, plan.window), 0.05)

            events = [{"event_type": "chaos", "event_id": i} for i in ids]
            while True:
                try:
                    entries = await publisher.publish_many(names.topic, events)
                    break
                except RedisUnavailableError:
                    tally.batch_retries += 1
                    if anyio.current_time() > deadline:
                        return

                    await anyio.sleep(0.2)

            tally.published.update(ids)
            tally.entry_ids.update(str(entry) for entry in entries)
    finally:
        tally.publisher = publisher.get_stats()
        tally.publisher_done = True
        await publisher.close()
        await book.aclose()


class Injector:
    """Inject faults at seeded random intervals until the work is nearly done."""

    tasks: TaskGroup

    def __init__(
        self,
        plan: Plan,
        names: Names,
        server: Server | None,
        consumers: list[Consumer],
        tally: Tally,
        url: str,
    ) -> None:
        self.plan, self.names, self.server = plan, names, server
        self.consumers, self.tally = consumers, tally
        self.rng = random.Random(plan.seed)
        self.url = url
        self.cutting = False
        self.client = Redis.from_url(url, client_name=BOOK_CLIENT)
        restarts = plan.restarts if server is not None else 0
        # Redis restarts at spread-out, jittered points of the handled count.
        self.restart_at = sorted(
            plan.events * (k + self.rng.uniform(0.2, 0.8)) / restarts
            for k in range(restarts)
        )

    async def run(self) -> None:
        """Inject until the publisher is done and 90% is handled, then the rest.

        A killed consumer is started again in the background, so other
        faults (and the other consumer's kill) may happen while it is down.
        """
        deadline = anyio.current_time() + self.plan.time_limit
        try:
            async with anyio.create_task_group() as self.tasks:
                while anyio.current_time() < deadline:
                    if await self._nearly_done():
                        break

                    await anyio.sleep(self.rng.uniform(*self.plan.gap))
                    await self._inject()

                # Faults the run asked for and did not get to yet.
                while self.restart_at:
                    self.restart_at.pop(0)
                    await self._restart()

                while self.tally.kills < self.plan.min_kills:
                    await self._kill_consumer()
                    await anyio.sleep(0.1)
        finally:
            await self.client.aclose()

    async def _inject(self) -> None:
        handled = await _count_handled(self.client, self.names) or 0
        if self.restart_at and handled >= self.restart_at[0]:
            self.restart_at.pop(0)
            await self._restart()
        elif self.rng.random() < 0.3 or self._kill_due(handled):
            await self._kill_consumer()
        else:
            await self._client_kill()

    def _kill_due(self, handled: int) -> bool:
        # The kills asked for, spread over the run rather than all at its end.
        kills, wanted = self.tally.kills, self.plan.min_kills
        return kills < wanted and handled >= self.plan.events * (kills + 1) / (
            wanted + 2
        )

    async def _nearly_done(self) -> bool:
        handled = await _count_handled(self.client, self.names) or 0
        published = len(self.tally.published)
        return self.tally.publisher_done and handled >= 0.9 * published

    async def _restart(self) -> None:
        assert self.server is not None
        how = RESTARTS[self.tally.restarts % len(RESTARTS)]
        await self.server.restart(how, self.rng.uniform(0.2, 1.5))
        self.tally.restarts += 1
        self.tally.restarted_by.append(how)

    async def _kill_consumer(self) -> None:
        running = [c for c in self.consumers if c.running]
        if not running:
            return

        consumer = self.rng.choice(running)
        await consumer.kill()
        self.tally.kills += 1
        # Sometimes back before claim_min_idle, sometimes after the other
        # consumer may have claimed what this one held.
        self.tasks.start_soon(consumer.start, self.rng.uniform(0.1, 3.0))
        if not self.cutting:
            self.cutting = True
            self.tasks.start_soon(self._cut_claims)

    async def _cut_claims(self) -> None:
        """Cut the connection of the XAUTOCLAIMs that take over the kill's work.

        From 1.4 to 3.6 s after a kill, when the entries the killed consumer
        held become claimable (claim_min_idle 2 s after their last refresh),
        each XAUTOCLAIM on this run's stream is seen in MONITOR and its
        connection is killed at once: between the claim and the claimer's
        next command. Raw sockets, so that the cut usually wins that race.
        """
        cuts = 0
        try:
            await anyio.sleep(1.4)
            with anyio.move_on_after(2.2):
                async with await _raw(self.url) as watch, await _raw(self.url) as kill:
                    await watch.send(b"MONITOR\r\n")
                    async with aclosing(_claimers(watch, self.names)) as claimers:
                        async for addr in claimers:
                            await kill.send(_command(b"CLIENT", b"KILL", b"ADDR", addr))
                            await kill.receive()
                            cuts += 1
                            if cuts == CLAIM_CUTS:
                                break
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        finally:
            self.cutting = False
            self.tally.claim_cuts += cuts
            self.tally.client_kills += cuts

    async def _client_kill(self) -> None:
        try:
            clients: list[dict[str, Any]] = await self.client.client_list()
            victims = [
                c["id"]
                for c in clients
                if str(c.get("name", "")).startswith(self.names.client_name)
            ]
            for client_id in victims:
                await self.client.client_kill_filter(_id=client_id)
        except (RedisError, OSError):
            return

        self.tally.client_kills += 1
        self.tally.connections_killed += len(victims)


async def _raw(url: str) -> SocketStream:
    """Open a plain TCP connection to Redis, authenticated as the URL says."""
    parts = urlsplit(url)
    stream = await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 6379)
    if parts.password:
        user = [unquote(parts.username).encode()] if parts.username else []
        await stream.send(_command(b"AUTH", *user, unquote(parts.password).encode()))
        await stream.receive()

    return stream


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


async def _claimers(watch: SocketStream, names: Names) -> AsyncGenerator[bytes, None]:
    """Yield the client address of each XAUTOCLAIM on this run's stream."""
    # Only this run's claims: the server may be shared (--redis-url).
    key = stream_key(names.topic).encode()
    buffer = b""
    while True:
        buffer += await watch.receive()
        *lines, buffer = buffer.split(b"\r\n")
        for line in lines:
            seen = _MONITOR_LINE.match(line)
            if seen and seen["command"].upper() == b"XAUTOCLAIM" and key in line:
                yield seen["addr"]


async def drain(plan: Plan, names: Names, url: str, tally: Tally) -> None:
    """Wait until every published event is handled and nothing is pending."""
    client = Redis.from_url(url, client_name=BOOK_CLIENT, decode_responses=True)
    try:
        with anyio.move_on_after(plan.drain_limit):
            await _poll(lambda: _settled(client, names, len(tally.published)), 0.2)
    finally:
        await client.aclose()


async def _settled(client: Redis, names: Names, published: int) -> bool:
    key = stream_key(names.topic)
    try:
        if int(await client.hlen(names.handled)) < published:
            return False

        groups = await client.xinfo_groups(key)
        last = (await client.xinfo_stream(key))["last-generated-id"]
    except (RedisError, OSError):
        return False

    group = next((g for g in groups if g["name"] == GROUP), None)
    if group is None:
        return False

    return int(group["pending"]) == 0 and group["last-delivered-id"] == last


@dataclass
class Outcome:
    """The final counts."""

    published: int
    handled: int
    lost: int
    duplicates: int
    details: dict[str, Any]


async def count(plan: Plan, names: Names, url: str, tally: Tally) -> Outcome:
    """Read the ``handled`` hash, the stream and the dead letters."""
    client = Redis.from_url(url, client_name=BOOK_CLIENT, decode_responses=True)
    try:
        handled = {k: int(v) for k, v in (await client.hgetall(names.handled)).items()}
        key = stream_key(names.topic)
        in_stream: set[str] = set()
        cursor = "-"
        while entries := await _entry_ids(client, key, cursor):
            in_stream.update(entries)
            cursor = "(" + entries[-1]

        dead = int(await client.xlen(dead_letter_key(names.topic)))
        deliveries = await client.hgetall(f"{names.handled}:deliveries")
        pending = await client.xpending(key, GROUP)
    finally:
        await client.aclose()

    lost = tally.published - handled.keys()
    return Outcome(
        published=len(tally.published),
        handled=len(handled.keys() & tally.published),
        lost=len(lost),
        duplicates=sum(handled.values()) - len(handled),
        details={
            "stream_entries": len(in_stream),
            "acknowledged_xadds_missing": len(tally.entry_ids - in_stream),
            "dead_letters": dead,
            "pending_at_end": {
                c["name"]: int(c["pending"]) for c in pending["consumers"] or []
            },
            "first_deliveries_failed_on_purpose": sum(
                fails(event_id, plan.fail_every) for event_id in tally.published
            ),
            "handled_at_delivery_count": dict(sorted(deliveries.items())),
            "lost_examples": sorted(lost)[:10],
            "batch_retries": tally.batch_retries,
            "connections_killed": tally.connections_killed,
            "claim_cuts": tally.claim_cuts,
            **{f"publisher_{k}": v for k, v in tally.publisher.items()},
        },
    )


async def _entry_ids(client: Redis, key: str, cursor: str) -> list[str]:
    entries: list[Any] = await client.xrange(key, cursor, "+", count=10_000) or []
    return [str(entry_id) for entry_id, _ in entries]


def consumer_environment(plan: Plan, names: Names, url: str) -> dict[str, str]:
    """The environment of a consumer process, without inherited Redis settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "REDIS_URL" and not name.startswith("REDIS_EVENTS_")
    }
    return (
        env
        | CONSUMER_SETTINGS
        | {
            "PYTHONUNBUFFERED": "1",
            "REDIS_EVENTS_REDIS_URL": url,
            "REDIS_EVENTS_CLIENT_NAME": names.client_name,
            "CHAOS_TOPIC": names.topic,
            "CHAOS_HANDLED": names.handled,
            "CHAOS_FAIL_EVERY": str(plan.fail_every),
        }
    )


async def chaos(plan: Plan, url: str | None, directory: Path) -> Outcome:
    """Run the whole chaos run against ``url``, or a server of its own."""
    names = Names()
    server = None if url is not None else Server(directory)
    if server is not None:
        await server.start()
        url = server.url

    assert url is not None
    env = consumer_environment(plan, names, url)
    consumers = [Consumer(name, directory, env) for name in CONSUMERS]
    tally = Tally()
    try:
        for consumer in consumers:
            await consumer.start()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish, plan, names, url, tally)
            tasks.start_soon(Injector(plan, names, server, consumers, tally, url).run)

        await drain(plan, names, url, tally)
        stats = [await consumer.stop() for consumer in consumers]
        outcome = await count(plan, names, url, tally)
        outcome.details["last_consumer_runs"] = _summed(stats)
        outcome.details |= {
            "kills": tally.kills,
            "client_kills": tally.client_kills,
            "restarts": tally.restarts,
            "restarted_by": tally.restarted_by,
        }
        return outcome
    finally:
        with anyio.CancelScope(shield=True):
            for consumer in consumers:
                await consumer.kill()

            if server is not None:
                await server.stop()
            else:
                await _forget(names, url)


def _summed(stats: list[dict[str, int]]) -> dict[str, int]:
    keys = ("events_handled", "handler_errors", "acked", "retries", "reclaimed")
    more = ("dead_lettered", "missing_entries", "groups_recreated", "reconnects")
    return {k: sum(s.get(k, 0) for s in stats) for k in (*keys, *more)}


async def _forget(names: Names, url: str) -> None:
    client = Redis.from_url(url, client_name=BOOK_CLIENT)
    try:
        key = stream_key(names.topic)
        deliveries = f"{names.handled}:deliveries"
        await client.delete(
            key, dead_letter_key(names.topic), names.handled, deliveries
        )
    finally:
        await client.aclose()


def fails(event_id: str, every: int) -> bool:
    """Tell whether the handler fails ``event_id`` at its first delivery."""
    return every > 0 and zlib.crc32(event_id.encode()) % every == 0


async def consume() -> dict[str, int]:
    """Be one consumer: record each handled event until SIGTERM."""
    topic, handled = os.environ["CHAOS_TOPIC"], os.environ["CHAOS_HANDLED"]
    every = int(os.environ["CHAOS_FAIL_EVERY"])
    subscriber = EventSubscriber()
    book = Redis.from_url(subscriber.settings.redis_url, client_name=BOOK_CLIENT)

    async def record(topic: str, event: object) -> None:
        delivery = current_delivery()
        if delivery.delivery_count == 1 and fails(delivery.event_id or "", every):
            msg = "injected failure of a first delivery"
            raise RuntimeError(msg)

        deadline = anyio.current_time() + RECORD_PATIENCE
        while True:
            try:
                async with book.pipeline(transaction=False) as pipe:
                    pipe.hincrby(handled, delivery.event_id or "?", 1)
                    pipe.hincrby(f"{handled}:deliveries", delivery.delivery_count)
                    await pipe.execute()

                return
            except (RedisError, OSError):
                # Redis is restarting: retry here, so that the handler fails
                # (and the entry is retried) only for a long outage.
                if anyio.current_time() > deadline:
                    raise

                await anyio.sleep(0.1)

    subscriber.on(topic)(record)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tasks:
            stopping = anyio.Event()

            async def stop_on_signal() -> None:
                async for _ in signals:
                    stopping.set()
                    await subscriber.stop()

            tasks.start_soon(stop_on_signal)
            await _run_until_stopped(subscriber, stopping)
            tasks.cancel_scope.cancel()

    await book.aclose()
    return subscriber.get_stats()


async def _run_until_stopped(
    subscriber: EventSubscriber, stopping: anyio.Event
) -> None:
    # run() raises when Redis is unreachable at start (a restart under way).
    while not stopping.is_set():
        try:
            await subscriber.run()
            return
        except RedisUnavailableError:
            await anyio.sleep(0.2)


def parse_plan(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="events to publish (100000)")
    parser.add_argument("--quick", action="store_true", help="10,000 events")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--restarts",
        type=int,
        help="Redis restarts, by SIGTERM, SHUTDOWN, SIGKILL in turn (3; quick 1)",
    )
    parser.add_argument("--kills", type=int, help="consumer kills at least (2)")
    parser.add_argument("--rate", type=float, help="events/s (2000; quick 1000)")
    parser.add_argument(
        "--gap",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="seconds between faults (0.5 2; quick 0.3 1)",
    )
    parser.add_argument(
        "--fail-every",
        type=int,
        default=100,
        metavar="N",
        help="the handler fails the first delivery of 1 event in N (0: never)",
    )
    parser.add_argument("--redis-url", help="a server to use instead of our own")
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--drain-limit", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = Plan(
        events=args.events or (10_000 if args.quick else 100_000),
        seed=args.seed,
        restarts=args.restarts if args.restarts is not None else 3 - 2 * args.quick,
        min_kills=args.kills if args.kills is not None else 2,
        gap=tuple(args.gap or ((0.3, 1.0) if args.quick else (0.5, 2.0))),
        rate=args.rate if args.rate is not None else 2_000 - 1_000 * args.quick,
        window=5_000 if args.quick else 20_000,
        fail_every=args.fail_every,
        time_limit=args.time_limit,
        drain_limit=args.drain_limit,
    )
    return plan, args


def main() -> int:
    """Run the chaos run, print its line; 1 when an event was lost."""
    plan, args = parse_plan()
    if args.worker:
        logging.basicConfig(
            level=logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        print(json.dumps(anyio.run(consume)), flush=True)
        return 0

    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="redis-events-chaos-"))
    # The publisher's retry warnings go to a file, not into the one line.
    logging.basicConfig(
        filename=directory / "chaos.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    outcome = anyio.run(chaos, plan, args.redis_url, directory)
    wall = time.monotonic() - started
    d = outcome.details
    faults = d["kills"] + d["client_kills"] + d["restarts"]
    print(
        f"published={outcome.published} handled={outcome.handled} "
        f"lost={outcome.lost} duplicates={outcome.duplicates} faults={faults} "
        f"(kills={d['kills']} client_kills={d['client_kills']} "
        f"restarts={d['restarts']}) wall={wall:.1f}s",
        flush=True,
    )
    print(f"details: {json.dumps(d)}", file=sys.stderr)
    incomplete = outcome.published < plan.events
    if outcome.lost or incomplete or args.keep:
        print(f"logs kept in {directory}", file=sys.stderr)
    else:
        shutil.rmtree(directory, ignore_errors=True)

    return 1 if outcome.lost or incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
