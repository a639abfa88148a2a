"""Shared fixtures: a real redis-server for the session, and one per fault test."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from tests.cluster_servers import ClusterServers, SentinelServers
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by the session; tests isolate their own names."""
    server = RedisServer(tmp_path_factory.mktemp("redis-session")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server owned by one test, free to be stopped or frozen."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client (``R`` in the cases) for inspecting state."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def uid() -> str:
    """A short unique suffix so tests sharing a server never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    """A 3-master, 3-replica Redis Cluster shared by the session."""
    cluster = ClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[ClusterServers]:
    """A Redis Cluster owned by one test, free to lose nodes."""
    cluster = ClusterServers(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_sentinel_group(tmp_path: Path) -> Iterator[SentinelServers]:
    """A master, a replica and three sentinels owned by one test."""
    group = SentinelServers(tmp_path / "sentinel").start()
    yield group
    group.stop()
