"""Streams end to end on a Redis Cluster with 1, 2 and 4 consumer processes.

Run from the project root::

    python benchmarks/cluster_scaling.py            # 20000 events per run
    python benchmarks/cluster_scaling.py --events 5000 --processes 1 2

A 3-master, 3-replica cluster is started on free loopback ports (and stopped
by pid at the end). For each process count, that many consumer processes
(one ``EventSubscriber`` each, one group, a handler that does nothing) are
started and registered on every topic; then the parent publishes the events
over six topics spread across the shards, in ``publish_many`` batches, and
the clock runs until the group has read and acknowledged every one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster_servers import ClusterServers

from redis_events import EventPublisher
from redis_events._keys import stream_key

TOPICS = 6
BATCH = 200

WORKER = """
import sys
import anyio
from redis_events import EventSubscriber

url, group, topics = sys.argv[1], sys.argv[2], sys.argv[3].split(",")


async def main() -> None:
    sub = EventSubscriber(url, transport="stream", group=group, start_from="all")

    async def nothing(topic, event):
        pass

    for topic in topics:
        sub.on(topic)(nothing)

    await sub.run()


anyio.run(main)
"""


def group_done(
    client: redis.RedisCluster, topics: list[str], group: str, n: int
) -> bool:
    """Tell whether ``group`` read and acknowledged ``n`` entries in all."""
    read = pending = 0
    for topic in topics:
        for row in client.xinfo_groups(stream_key(topic)):
            if row["name"] == group:
                read += int(row["entries-read"] or 0)
                pending += int(row["pending"])

    return read >= n and pending == 0


def registered(
    client: redis.RedisCluster, topics: list[str], group: str, n: int
) -> bool:
    """Tell whether ``n`` consumers have joined ``group`` on every topic."""
    try:
        return all(
            len(client.xinfo_consumers(stream_key(topic), group)) >= n
            for topic in topics
        )
    except redis.ResponseError:
        return False


async def publish(url: str, topics: list[str], events: int) -> None:
    async with EventPublisher(url, transport="stream", stream_maxlen=0) as pub:
        per_topic = events // len(topics)
        for first in range(0, per_topic, BATCH):
            count = min(BATCH, per_topic - first)
            for topic in topics:
                await pub.publish_many(topic, [{"n": first + i} for i in range(count)])


def run_once(
    cluster: ClusterServers,
    topics: list[str],
    processes: int,
    events: int,
    script: Path,
) -> dict[str, Any]:
    group = f"bench-{processes}-{os.getpid()}"
    client = cluster.client()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_EVENTS_")}
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), cluster.url, group, ",".join(topics)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    try:
        deadline = time.monotonic() + 60
        while not registered(client, topics, group, processes):
            if time.monotonic() > deadline:
                msg = "consumers did not register"
                raise RuntimeError(msg)

            time.sleep(0.1)

        total = events // len(topics) * len(topics)
        started = time.monotonic()
        anyio.run(publish, cluster.url, topics, events)
        published = time.monotonic() - started
        while not group_done(client, topics, group, total):
            time.sleep(0.02)

        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)

        for worker in workers:
            worker.wait(timeout=30)

        client.close()

    return {
        "processes": processes,
        "events": total,
        "seconds": round(elapsed, 2),
        "publish_seconds": round(published, 2),
        "events_per_s": round(total / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cluster = ClusterServers(Path(directory) / "cluster").start()
        try:
            topics = cluster.spread("bench", TOPICS, key=stream_key)
            script = Path(directory) / "worker.py"
            script.write_text(WORKER)
            rows = [
                run_once(cluster, topics, n, options.events, script)
                for n in options.processes
            ]
        finally:
            cluster.stop()

    base = rows[0]["events_per_s"] / rows[0]["processes"]
    header = ("processes", "events", "seconds", "events/s", "per process vs 1")
    print("{:>9} {:>7} {:>8} {:>9} {:>17}".format(*header))
    for row in rows:
        ratio = row["events_per_s"] / row["processes"] / base
        print(
            f"{row['processes']:>9} {row['events']:>7} {row['seconds']:>8} "
            f"{row['events_per_s']:>9} {ratio:>17.2f}"
        )

    publishing = [row["publish_seconds"] for row in rows]
    print(f"cores: {os.cpu_count()}; publishing took {publishing} s")


if __name__ == "__main__":
    main()
