"""The demo runs unchanged on a cluster and behind Sentinel: only the URL differs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.test_examples import run_python

if TYPE_CHECKING:
    from tests.cluster_servers import ClusterServers, SentinelServers

pytestmark = pytest.mark.cluster


def test_demo_on_a_cluster_sees_every_expected_event(
    redis_cluster: ClusterServers,
) -> None:
    result = run_python("-m", "redis_events.demo", "--redis-url", redis_cluster.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 7 expected events seen" in result.stdout
    assert "keys_processed=3 profiles_processed=3" in result.stdout
    assert "my_secret_key_12345" not in result.stdout + result.stderr


def test_demo_behind_sentinel_sees_every_expected_event(
    own_sentinel_group: SentinelServers,
) -> None:
    result = run_python(
        "-m", "redis_events.demo", "--redis-url", own_sentinel_group.url
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 7 expected events seen" in result.stdout
    assert "keys_processed=3 profiles_processed=3" in result.stdout
