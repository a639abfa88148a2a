"""Which deployment a URL or the topology option selects, and the client built."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from redis_events import ConfigurationError, EventSubscriber, Settings
from redis_events._connection import create_client
from redis_events._topology import parse_topology


def test_plain_urls_stay_standalone() -> None:
    for url in ("redis://h:1/0", "rediss://h:1", "unix:///tmp/r.sock", "memory://"):
        assert Settings(redis_url=url).deployment.kind == "standalone"


def test_cluster_url_lists_every_seed_node() -> None:
    topology = parse_topology("redis+cluster://u:p%40ss@a:7000,b:7001,[::1]:7002")
    assert topology.kind == "cluster"
    assert topology.addresses == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert (topology.username, topology.password) == ("u", "p@ss")
    assert not topology.tls
    assert "p@ss" not in repr(topology)


def test_sentinel_url_names_the_service_and_database() -> None:
    topology = parse_topology("rediss+sentinel://s1:26379,s2:26380/orders/2")
    assert topology.kind == "sentinel"
    assert topology.addresses == (("s1", 26379), ("s2", 26380))
    assert (topology.service, topology.db, topology.tls) == ("orders", 2, True)


def test_topology_option_turns_a_redis_url_into_a_seed_or_sentinel() -> None:
    cluster = Settings(redis_url="redis://seed:7000", topology="cluster")
    assert cluster.deployment.addresses == (("seed", 7000),)
    sentinel = Settings(
        redis_url="redis://s:26379/1", topology="sentinel", sentinel_service="events"
    )
    assert sentinel.deployment.kind == "sentinel"
    assert (sentinel.deployment.service, sentinel.deployment.db) == ("events", 1)


@pytest.mark.parametrize(
    ("url", "options", "said"),
    [
        ("redis+sentinel://s:26379", {}, "service"),
        ("redis+cluster://a:7000/3", {}, "no path"),
        ("redis+cluster://a:notaport", {}, "port"),
        ("redis+cluster://a:1", {"topology": "sentinel"}, "topology is 'sentinel'"),
        ("memory://", {"topology": "cluster"}, "redis:// or rediss://"),
    ],
)
def test_unusable_topologies_are_refused_clearly(
    url: str, options: dict[str, Any], said: str
) -> None:
    with pytest.raises(ConfigurationError, match=said) as caught:
        Settings.from_arguments(url, **options)

    assert "secret" not in str(caught.value)


def test_password_of_a_cluster_url_is_masked() -> None:
    settings = Settings(redis_url="redis+cluster://u:secret@a:7000,b:7001")
    assert "secret" not in settings.masked_url
    assert "secret" not in repr(settings)


async def test_cluster_url_builds_a_named_cluster_client() -> None:
    settings = Settings(
        redis_url="redis+cluster://u:pw@127.0.0.1:7000,127.0.0.1:7001",
        client_name="shop",
        socket_timeout=3,
    )
    client = create_client(settings, role="pub")
    try:
        assert isinstance(client, RedisCluster)
        kwargs = client.connection_kwargs
        assert kwargs["client_name"] == "shop-pub"
        assert (kwargs["username"], kwargs["password"]) == ("u", "pw")
        assert kwargs["socket_timeout"] == 3
        assert len(client.startup_nodes) == 2
    finally:
        await client.aclose()


async def test_sentinel_url_builds_a_master_client() -> None:
    settings = Settings(redis_url="redis+sentinel://127.0.0.1:26379/events/0")
    client = create_client(settings, role="sub")
    try:
        assert isinstance(client, Redis)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "events"
        assert pool.connection_kwargs["client_name"] == "redis-events-sub"
    finally:
        await client.aclose()


def test_patterns_are_refused_on_a_cluster_at_registration() -> None:
    subscriber = EventSubscriber("redis+cluster://127.0.0.1:7000")

    async def handler(topic: str, event: object) -> None:
        del topic, event

    with pytest.raises(ConfigurationError, match="no sharded PSUBSCRIBE"):
        subscriber.on_pattern("orders.*")(handler)
