"""Start and stop a Redis Cluster and a Sentinel group of real processes.

``ClusterServers``: three masters with one replica each, built with
``redis-cli --cluster create``. ``SentinelServers``: a master, one replica
and three sentinels watching them. Every process listens on a free loopback
port and is stopped by pid; the machine's shared Redis is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import redis

from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["ClusterServers", "SentinelServers"]

# Short enough for a failover within a few seconds, long enough that a busy
# 2-core machine does not take a slow node for a dead one.
NODE_TIMEOUT_MS = 1000
_READY_TIMEOUT = 30.0
SERVICE = "events"
_CREATE_OPTIONS = ("--cluster-replicas", "1", "--cluster-yes")


def _command(client: redis.Redis, *args: str) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped upstream


def _role(client: redis.Redis) -> str:
    role: str = _command(client, "ROLE")[0]
    return role


def _wait(
    predicate: Callable[[], bool], what: str, timeout: float = _READY_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            pass

        if time.monotonic() > deadline:
            msg = f"{what} within {timeout} s"
            raise RuntimeError(msg)

        time.sleep(0.1)


class ClusterServers:
    """Six ``redis-server`` processes forming a 3-master, 3-replica cluster."""

    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        self.directory = directory
        self.nodes: list[RedisServer] = []
        for _ in range(masters * 2):
            port = free_port()
            node_dir = directory / f"node-{port}"
            args = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                # The bus port, given explicitly: the default (port + 10000)
                # may be taken or above 65535.
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # A replica that lost its master may be promoted at once.
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            )
            self.nodes.append(RedisServer(node_dir, port=port, args=args))

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node as a seed."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{seeds}"

    def client(self) -> redis.RedisCluster:
        """Return a plain synchronous cluster client for looking at state."""
        node = self.running()[0]
        return redis.RedisCluster(
            host="127.0.0.1", port=node.port, socket_timeout=5, decode_responses=True
        )

    def start(self) -> Self:
        """Start every node, create the cluster and wait until it is ok."""
        try:
            for node in self.nodes:
                node.start()

            redis_cli = shutil.which("redis-cli")
            assert redis_cli is not None, "redis-cli is not installed"
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [redis_cli, "--cluster", "create", *addresses, *_CREATE_OPTIONS],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=_READY_TIMEOUT,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

        return self

    def wait_healthy(self, timeout: float = _READY_TIMEOUT) -> None:
        """Wait until every running node reports ``cluster_state:ok``.

        Raises:
            RuntimeError: Some node did not within ``timeout``.
        """
        for node in self.running():
            client = node.client()
            try:
                _wait(
                    partial(_cluster_ok, client, len(self.nodes)),
                    f"node {node.port} did not report cluster_state:ok",
                    timeout,
                )
            finally:
                client.close()

    def running(self) -> list[RedisServer]:
        """The nodes whose process is alive."""
        return [n for n in self.nodes if n.process and n.process.poll() is None]

    def master_of(self, key: str) -> RedisServer:
        """Return the running node that serves ``key``'s slot as master.

        Raises:
            RuntimeError: No running node claims the slot.
        """
        by_port = {node.port: node for node in self.running()}
        for node in by_port.values():
            client = node.client()
            try:
                slot = client.cluster("keyslot", key)
                for low, high, master, *_ in _command(client, "CLUSTER", "SLOTS"):
                    port = int(master[1])
                    if low <= slot <= high and port in by_port:
                        return by_port[port]
            except redis.ConnectionError:
                continue
            finally:
                client.close()

        msg = f"no running master serves the slot of {key!r}"
        raise RuntimeError(msg)

    def spread(
        self, prefix: str, count: int, *, key: Callable[[str], str] = str
    ) -> list[str]:
        """Return ``count`` names whose ``key`` is spread evenly over the masters.

        Names that differ in one character often hash to nearby slots
        (CRC16), so they are picked rather than simply numbered.
        """
        masters = {n.port for n in self.running() if _role_of(n) == "master"}
        by_master: dict[int, list[str]] = {port: [] for port in masters}
        for n in range(10_000):
            name = f"{prefix}-{n}"
            by_master[self.master_of(key(name)).port].append(name)
            if min(map(len, by_master.values())) * len(masters) >= count:
                break

        columns = list(by_master.values())
        return [columns[i % len(columns)][i // len(columns)] for i in range(count)]

    def move_slot(self, key: str, target: RedisServer) -> None:
        """Move ``key``'s slot (and its keys) to the master ``target``.

        The steps of a live resharding: IMPORTING on the target, MIGRATING
        on the source, MIGRATE of every key, then SETSLOT NODE everywhere.
        """
        source = self.master_of(key)
        clients = {node.port: node.client() for node in self.running()}
        try:
            src, dst = clients[source.port], clients[target.port]
            slot = str(src.cluster("keyslot", key))
            src_id: str = _command(src, "CLUSTER", "MYID")
            dst_id: str = _command(dst, "CLUSTER", "MYID")
            _command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            _command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := _command(src, "CLUSTER", "GETKEYSINSLOT", slot, "100"):
                _command(
                    src,
                    *("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000"),
                    *("KEYS", *keys),
                )

            for client in [dst, src, *clients.values()]:
                if _role(client) == "master":
                    _command(client, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        finally:
            for client in clients.values():
                client.close()

        _wait(
            lambda: self.master_of(key) is target,
            f"the slot of {key!r} did not move",
        )

    def wait_promoted(self, key: str, dead: RedisServer) -> RedisServer:
        """Wait until a running node other than ``dead`` is master for ``key``.

        Raises:
            RuntimeError: No replica was promoted in time.
        """
        promoted: list[RedisServer] = []

        def done() -> bool:
            try:
                node = self.master_of(key)
            except RuntimeError:
                return False

            client = node.client()
            try:
                if node is dead or _role(client) != "master":
                    return False
            finally:
                client.close()

            promoted[:] = [node]
            return True

        _wait(done, f"no replica took over the slot of {key!r}")
        self.wait_healthy()
        return promoted[0]

    def stop(self) -> None:
        """Stop every node by pid and remove their files."""
        for node in self.nodes:
            node.stop()

        shutil.rmtree(self.directory, ignore_errors=True)


class _Sentinel(RedisServer):
    """A ``redis-server --sentinel`` process with its own config file."""

    def __init__(self, directory: Path, master_port: int) -> None:
        super().__init__(directory, args=())
        self.master_port = master_port

    def start(self) -> Self:
        """Write the config, start the sentinel and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"logfile {self.log_path}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.process = subprocess.Popen(
            [self.binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL
        )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

        return self


class SentinelServers:
    """A master, one replica and three sentinels (quorum 2) watching them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.master = RedisServer(directory / "master")
        self.replica = RedisServer(
            directory / "replica",
            args=(
                "--save",
                "",
                "--appendonly",
                "no",
                "--replicaof",
                "127.0.0.1",
                str(self.master.port),
            ),
        )
        self.sentinels = [
            _Sentinel(directory / f"sentinel-{i}", self.master.port) for i in range(3)
        ]

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL naming the sentinels and the service."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def start(self) -> Self:
        """Start everything and wait until the sentinels know the replica."""
        try:
            self.master.start()
            self.replica.start()
            for sentinel in self.sentinels:
                sentinel.start()

            self.wait_ready()
        except BaseException:
            self.stop()
            raise

        return self

    def wait_ready(self) -> None:
        """Wait until the replica is in sync and every sentinel sees it all.

        Raises:
            RuntimeError: The group did not settle in time.
        """
        replica = self.replica.client()
        try:
            _wait(
                lambda: (
                    _command(replica, "INFO", "replication").get("master_link_status")
                    == "up"
                ),
                "the replica did not sync with its master",
            )
        finally:
            replica.close()

        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                _wait(
                    partial(_sentinel_ready, client),
                    f"sentinel {sentinel.port} did not see the replica and peers",
                )
            finally:
                client.close()

    def current_master_port(self) -> int:
        """Return the master's port as the first sentinel reports it."""
        client = self.sentinels[0].client()
        try:
            host_port = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(host_port[1])
        finally:
            client.close()

    def wait_failover(self) -> None:
        """Wait until the sentinels promoted the replica.

        Raises:
            RuntimeError: No failover happened in time.
        """
        client = self.replica.client()
        try:
            _wait(
                lambda: (
                    self.current_master_port() == self.replica.port
                    and _role(client) == "master"
                ),
                "the sentinels did not promote the replica",
            )
        finally:
            client.close()

    def stop(self) -> None:
        """Stop every process by pid and remove their files."""
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()

        shutil.rmtree(self.directory, ignore_errors=True)


def _role_of(node: RedisServer) -> str:
    client = node.client()
    try:
        return _role(client)
    finally:
        client.close()


def _cluster_ok(client: redis.Redis, nodes: int) -> bool:
    # Every node must also know every other one, or it may still answer
    # CLUSTERDOWN or redirect to a node it has not met; and a replica must
    # have its master's data, or a failover loses what was written before.
    info: str = _command(client, "CLUSTER", "INFO")
    if not (
        "cluster_state:ok" in info
        and f"cluster_known_nodes:{nodes}" in info
        and "cluster_slots_ok:16384" in info
    ):
        return False

    if _role(client) != "slave":
        return True

    replication: dict[str, Any] = _command(client, "INFO", "replication")
    return replication.get("master_link_status") == "up"


def _sentinel_ready(client: redis.Redis) -> bool:
    state = _command(client, "SENTINEL MASTER", SERVICE)
    return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2
