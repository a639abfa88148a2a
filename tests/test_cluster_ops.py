"""The operators' side on a 3-master Redis Cluster and on Sentinel.

``redis-events`` groups, dead-letters, top, publish, replay and tail, the
instance stats and the metrics' group lag, each with topics spread over
every master, so that a command that reached only one node would miss some.
Commands that end by themselves run in click's ``CliRunner`` (in a worker
thread from async tests); ``tail`` runs as a subprocess.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from click.testing import CliRunner, Result

from redis_events import EventPublisher, EventSubscriber
from redis_events._keys import dead_letter_key, instance_key, stream_key
from redis_events.admin import EventAdmin
from redis_events.cli import main
from redis_events.metrics import Metrics
from tests.helpers import wait_until
from tests.test_cli_events import Tails
from tests.test_metrics import scrape, value

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import redis

    from redis_events.admin import InstanceInfo
    from tests.cluster_servers import ClusterServers, SentinelServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

FAST: dict[str, Any] = {
    "transport": "stream",
    "start_from": "all",
    "block_seconds": 0.3,
    "retry_backoff": 0.05,
    "max_deliveries": 1,
    "instance_stats_interval": 0.1,
    "instance_stats_ttl": 5,
}


@pytest.fixture
def rc(redis_cluster: ClusterServers) -> Iterator[redis.RedisCluster]:
    """A plain synchronous client of the session's cluster."""
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture
def tails(tmp_path: Path) -> Iterator[Tails]:
    """Start ``tail`` subprocesses; whatever still runs is killed after."""
    starter = Tails(tmp_path)
    yield starter
    starter.kill_all()


def spread_topics(cluster: ClusterServers, prefix: str) -> list[str]:
    """Return three topics whose streams live on three different masters."""
    topics = cluster.spread(prefix, 3, key=stream_key)
    assert len({cluster.master_of(stream_key(t)).port for t in topics}) == 3
    return topics


def invoke(*args: str) -> Result:
    """Run ``redis-events ARGS`` in-process, without Redis settings from env."""
    env: dict[str, str | None] = {
        name: None
        for name in os.environ
        if name == "REDIS_URL" or name.startswith("REDIS_EVENTS_")
    }
    # Wide enough that no table cell is folded.
    env["COLUMNS"] = "250"
    return CliRunner().invoke(main, list(args), env=env, prog_name="redis-events")


async def ainvoke(url: str, *args: str) -> Result:
    """``invoke`` with ``--redis-url url``, in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: invoke(*args, "--redis-url", url))


async def written_instance(url: str, group: str, *, received: int) -> InstanceInfo:
    """Return ``group``'s one instance once its hash counts ``received`` events.

    Raises:
        AssertionError: It did not within 20 s.
    """
    async with EventAdmin(url) as admin:
        with anyio.move_on_after(20):
            while True:
                found = [i for i in await admin.instances() if i.group == group]
                if found and found[0].stats.get("events_received", 0) >= received:
                    [instance] = found
                    return instance

                await anyio.sleep(0.05)

    msg = f"no instance of {group} reported {received} events within 20 s"
    raise AssertionError(msg)


async def test_groups_dead_letters_top_and_instances_cover_every_master(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, uid: str
) -> None:
    url, group, consumer = redis_cluster.url, f"ops-{uid}", f"c-{uid}"
    requeued, purged, kept = spread_topics(redis_cluster, f"ops-{uid}")
    topics = [requeued, purged, kept]
    failed: set[str] = set()
    handled: list[tuple[str, int]] = []
    sub = EventSubscriber(url, group=group, consumer=consumer, **FAST)
    for topic in topics:

        @sub.on(topic)
        async def handle(topic: str, event: dict[str, Any]) -> None:
            # Fails once per event with "fail": a requeued copy succeeds.
            if event.get("fail") and event["event_id"] not in failed:
                failed.add(event["event_id"])
                raise RuntimeError("fails on purpose")

            handled.append((topic, event["n"]))

    async with sub, EventPublisher(url, transport="stream") as pub:
        for topic in topics:
            await pub.publish_many(topic, [{"n": 0, "fail": True}, {"n": 1}])

        await wait_until(
            lambda: (
                all(rc.xlen(dead_letter_key(t)) == 1 for t in topics)
                and sub.get_stats()["acked"] == 3
            ),
            timeout=20,
        )
        # The instance hash has no hash tag; EventAdmin finds it by SCAN.
        instance = await written_instance(url, group, received=6)

        # Without topics: every master is scanned for them.
        every = await ainvoke(url, "groups", "--json")
        top = await ainvoke(url, "top", "--once", "--interval", "0.2", *topics)
        listed = await ainvoke(url, "dead-letters", "list", requeued, "--json")
        [letter] = json.loads(listed.output)
        dead_id = letter["id"]
        shown = await ainvoke(url, "dead-letters", "show", requeued, dead_id, "--json")
        again = await ainvoke(url, "dead-letters", "requeue", requeued, "--id", dead_id)
        await wait_until(lambda: (requeued, 0) in handled, timeout=20)
        purge = await ainvoke(url, "dead-letters", "purge", purged, "--all", "--yes")

    assert (instance.key, instance.consumer) == (
        instance_key(group, consumer),
        consumer,
    )
    assert set(instance.topics) == set(topics)
    assert every.exit_code == 0, every.output
    ours = {g["topic"]: g for g in json.loads(every.output) if g["group"] == group}
    assert set(ours) == set(topics)
    assert all((g["lag"], g["pending"]) == (0, 0) for g in ours.values())
    assert top.exit_code == 0, top.output
    assert all(topic in top.output for topic in topics)
    assert consumer in top.output
    assert listed.exit_code == 0, listed.output
    assert letter["reason"].startswith("handler failed")
    assert json.loads(shown.output)["data"]["n"] == 0
    assert again.exit_code == 0, again.output
    assert "Requeued 1 dead letters" in again.output
    assert purge.exit_code == 0, purge.output
    assert "Deleted 1 dead letters" in purge.output
    assert [rc.xlen(dead_letter_key(t)) for t in topics] == [0, 0, 1]
    assert rc.xlen(stream_key(requeued)) == 3


async def test_metrics_show_group_lag_pending_and_age_of_topics_on_every_master(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, uid: str
) -> None:
    topics = spread_topics(redis_cluster, f"lag-{uid}")
    group = f"lag-{uid}"
    for topic in topics:
        # Entry ids at the start of 1970: the oldest pending one is decades old.
        for n in range(1, 5):
            rc.xadd(stream_key(topic), {"data": json.dumps({"n": n})}, id=f"{n}-0")

    release = anyio.Event()
    started: list[int] = []
    sub = EventSubscriber(
        redis_cluster.url, group=group, **(FAST | {"max_concurrency": 1})
    )
    for topic in topics:

        @sub.on(topic)
        async def handle(topic: str, event: dict[str, Any]) -> None:
            started.append(event["n"])
            await release.wait()

    metrics = Metrics(refresh_interval=0)
    metrics.attach(sub)
    async with metrics.serving(port=0) as port, sub:
        await wait_until(lambda: len(started) == 1, timeout=20)
        _, during = await scrape(port)
        release.set()
        await wait_until(lambda: sub.get_stats()["acked"] == 12, timeout=20)
        _, after = await scrape(port)

    def gauge(text: str, name: str, topic: str) -> float:
        found = value(text, f"redis_events_group_{name}", topic=topic, group=group)
        assert found is not None, f"no {name} of {topic}: {text}"
        return found

    # Nothing is acknowledged while the one handler waits: every entry is
    # either not yet delivered (lag) or delivered and pending.
    assert (
        sum(gauge(during, "lag", t) + gauge(during, "pending", t) for t in topics) == 12
    )
    oldest = max(gauge(during, "oldest_pending_age_seconds", t) for t in topics)
    assert oldest > 50 * 365 * 24 * 3600
    assert value(during, "redis_events_redis_up") == 1
    assert all(
        gauge(after, "lag", t) == gauge(after, "pending", t) == 0 for t in topics
    )


def test_tail_publish_and_replay_on_shard_channels_and_streams(
    redis_cluster: ClusterServers, rc: redis.RedisCluster, tails: Tails, uid: str
) -> None:
    url = redis_cluster.url
    channels = redis_cluster.spread(f"ch-{uid}", 3)
    streams = spread_topics(redis_cluster, f"st-{uid}")
    into = f"into-{uid}"
    on_pubsub = tails.start(*channels, "--json", "--count", "3", "--redis-url", url)
    on_streams = tails.start(
        *streams, "--transport", "stream", "--json", "--count", "3", "--redis-url", url
    )

    sent = [
        invoke("publish", c, json.dumps({"n": 1}), "--redis-url", url) for c in channels
    ]
    appended = [
        invoke("publish", t, '{"n": 2}', "--transport", "stream", "--redis-url", url)
        for t in streams
    ]
    pubsub_code, streams_code = on_pubsub.wait(), on_streams.wait()
    replayed = invoke(
        "replay", streams[0], "--from", "all", "--json", "--redis-url", url
    )
    copied = invoke(
        "replay", streams[1], "--from", "all", "--republish", "--into", into,
        "--transport", "stream", "--redis-url", url,
    )  # fmt: skip
    pattern = invoke("tail", f"ch-{uid}-*", "--redis-url", url)

    assert all(r.exit_code == 0 for r in sent + appended)
    # SPUBLISH counts the shard's subscribers: tail's own on each master.
    assert all("received by 1 subscriber" in r.output for r in sent)
    assert pubsub_code == 0, on_pubsub.stderr
    shown = [json.loads(line) for line in on_pubsub.stdout.splitlines()]
    assert sorted(e["topic"] for e in shown) == sorted(channels)
    assert streams_code == 0, on_streams.stderr
    shown = [json.loads(line) for line in on_streams.stdout.splitlines()]
    assert sorted(e["topic"] for e in shown) == sorted(streams)
    assert "Traceback" not in on_pubsub.stderr + on_streams.stderr
    assert replayed.exit_code == 0, replayed.output
    assert "Replayed 1 event of" in replayed.output
    assert copied.exit_code == 0, copied.output
    assert rc.xlen(stream_key(into)) == 1
    assert pattern.exit_code == 2
    assert "pattern subscriptions do not work on a Redis Cluster" in pattern.output


def test_an_unreachable_cluster_exits_1_naming_it_without_a_traceback() -> None:
    for args in (
        ["groups"],
        ["tail", "--transport", "stream", "t"],
        ["publish", "t", "{}"],
    ):
        result = invoke(*args, "--redis-url", "redis+cluster://127.0.0.1:1")

        assert result.exit_code == 1, result.output
        assert "no node of the Redis Cluster at redis+cluster://127.0.0.1:1" in (
            result.output
        )


def test_groups_publish_and_tail_through_sentinel(
    own_sentinel_group: SentinelServers, tails: Tails, uid: str
) -> None:
    url, topic, group = own_sentinel_group.url, f"sent-{uid}", f"g-{uid}"
    tail = tails.start(topic, "--json", "--count", "1", "--redis-url", url)
    sent = invoke("publish", topic, '{"n": 1}', "--redis-url", url)
    appended = invoke(
        "publish", topic, '{"n": 2}', "--transport", "stream", "--redis-url", url
    )
    master = own_sentinel_group.master.client()
    try:
        master.xgroup_create(stream_key(topic), group, id="0")
    finally:
        master.close()

    groups = invoke("groups", topic, "--json", "--redis-url", url)
    code = tail.wait()

    assert (sent.exit_code, appended.exit_code) == (0, 0), sent.output + appended.output
    assert "received by 1 subscriber" in sent.output
    assert code == 0, tail.stderr
    assert json.loads(tail.stdout)["event"]["n"] == 1
    assert groups.exit_code == 0, groups.output
    [row] = json.loads(groups.output)
    assert (row["topic"], row["group"], row["lag"]) == (topic, group, 1)
