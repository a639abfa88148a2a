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
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from chaos_faults import Injector
from chaos_model import (
    BATCH,
    BOOK_CLIENT,
    CONSUMERS,
    GROUP,
    Names,
    Plan,
    Tally,
    fails,
    may_publish,
    poll,
)
from chaos_processes import Consumer, Server, consume, consumer_environment
from redis.asyncio import Redis
from redis.exceptions import RedisError

from redis_events import EventPublisher
from redis_events._keys import dead_letter_key, stream_key
from redis_events.exceptions import RedisUnavailableError


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
            await poll(lambda: may_publish(book, names, tally, plan.window), 0.05)

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


async def drain(plan: Plan, names: Names, url: str, tally: Tally) -> None:
    """Wait until every published event is handled and nothing is pending."""
    client = Redis.from_url(url, client_name=BOOK_CLIENT, decode_responses=True)
    try:
        with anyio.move_on_after(plan.drain_limit):
            await poll(lambda: _settled(client, names, len(tally.published)), 0.2)
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
