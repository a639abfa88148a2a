"""Processor processes sharing a group on a Redis Cluster, one of them killed.

Two ``python -m redis_events.processor`` processes consume ``profile_events``
in one group on the cluster, with nothing but the URL changed. One is
SIGKILLed mid-way: the other claims what it held, every event gets its
result, and a clean stop leaves nothing pending.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import redis

from redis_events import EventPublisher
from redis_events._keys import stream_key
from redis_events.events import ProfileCreated
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.cluster_servers import ClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.fault]

logger = logging.getLogger("tests.failover")

GROUP = "processors"
EVENTS = 400
INPUT = stream_key("profile_events")
RESULTS = stream_key("processing_results")


def start_processor(url: str, consumer: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "REDIS_URL" and not name.startswith("REDIS_EVENTS_")
    }
    env |= {
        "REDIS_EVENTS_START_FROM": "all",
        "REDIS_EVENTS_CLAIM_MIN_IDLE": "2",
        "REDIS_EVENTS_CLAIM_INTERVAL": "0.5",
        "REDIS_EVENTS_BLOCK_SECONDS": "0.5",
    }
    command = [
        sys.executable,
        "-m",
        "redis_events.processor",
        "--redis-url",
        url,
        "--transport",
        "stream",
        "--group",
        GROUP,
        "--consumer",
        consumer,
        "--topic",
        "profile_events",
        "--stats-interval",
        "0",
    ]
    with log.open("wb") as err:
        return subprocess.Popen(command, stderr=err, stdout=err, env=env)


@pytest.fixture
def rc(own_redis_cluster: ClusterServers) -> Iterator[redis.RedisCluster]:
    """``R`` on the test's own cluster."""
    client = own_redis_cluster.client()
    yield client
    client.close()


def consumers(rc: redis.RedisCluster) -> dict[str, int]:
    try:
        rows: list[dict[str, Any]] = rc.xinfo_consumers(INPUT, GROUP)
    except redis.ResponseError:  # no stream or group yet
        return {}

    return {row["name"]: int(row["pending"]) for row in rows}


def result_ids(rc: redis.RedisCluster) -> list[int]:
    entries: list[Any] = rc.xrange(RESULTS) or []
    return [
        int(json.loads(fields["data"])["result"]["profile_id"]) for _, fields in entries
    ]


async def test_a_killed_processors_entries_are_handled_by_its_peer_on_a_cluster(
    own_redis_cluster: ClusterServers, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    url = own_redis_cluster.url
    processes = {
        name: start_processor(url, name, tmp_path / f"{name}.log")
        for name in ("p1", "p2")
    }
    try:
        await wait_until(lambda: {"p1", "p2"} <= set(consumers(rc)), timeout=20)
        async with EventPublisher(url, transport="stream") as pub:
            for first in range(0, EVENTS, 100):
                batch = [
                    ProfileCreated(profile_id=n, profile_data={"n": n})
                    for n in range(first, first + 100)
                ]
                await pub.publish_many("profile_events", batch)

        await wait_until(lambda: len(result_ids(rc)) >= EVENTS // 4, timeout=20)
        processes["p1"].send_signal(signal.SIGKILL)
        processes["p1"].wait(timeout=10)
        held = consumers(rc).get("p1", 0)
        await wait_until(lambda: set(result_ids(rc)) == set(range(EVENTS)), timeout=30)
        await wait_until(lambda: consumers(rc).get("p1", 0) == 0, timeout=10)
        processes["p2"].send_signal(signal.SIGTERM)
        assert processes["p2"].wait(timeout=20) == 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    results = result_ids(rc)
    summary: dict[str, Any] = rc.xpending(INPUT, GROUP)
    logger.info(
        "cluster processors: %s",
        {
            "published": EVENTS,
            "results": len(results),
            "distinct": len(set(results)),
            "duplicates": len(results) - len(set(results)),
            "held_by_killed": held,
        },
    )
    assert set(results) == set(range(EVENTS))
    assert int(summary["pending"]) == 0
    assert consumers(rc)["p2"] == 0
