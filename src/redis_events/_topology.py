"""Which Redis deployment a URL names: standalone, a cluster or Sentinel.

- ``redis://`` ``rediss://`` ``unix://`` ``memory://``: one server.
- ``redis+cluster://[user:password@]host:port[,host:port...]``: a Redis
  Cluster; every address is a seed node (``rediss+cluster://`` for TLS). An
  IPv6 address goes in brackets; a missing port is 6379.
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``:
  the master of ``service`` as the sentinels at those addresses report it
  (``rediss+sentinel://`` for TLS to the data nodes).

``Settings.topology`` may also select a cluster or Sentinel for a plain
``redis://`` URL, whose host is then the one seed or sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "Topology",
    "cluster_client",
    "is_cluster",
    "parse_topology",
    "sentinel_client",
]

CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})

Kind = Literal["standalone", "cluster", "sentinel"]

DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class Topology:
    """The parsed deployment: its kind, addresses and what the URL carries."""

    kind: Kind
    addresses: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    service: str | None = None
    db: int = 0
    tls: bool = False

    def __repr__(self) -> str:
        # The password never appears in a repr.
        return (
            f"Topology(kind={self.kind!r}, addresses={self.addresses!r}, "
            f"service={self.service!r}, db={self.db}, tls={self.tls})"
        )


def parse_topology(
    url: str, *, topology: str = "auto", sentinel_service: str | None = None
) -> Topology:
    """Return the deployment ``url`` (and the ``topology`` option) names.

    Raises:
        ValueError: The URL cannot name that deployment; the message never
            quotes the URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    kind: Kind
    if scheme in CLUSTER_SCHEMES:
        kind = "cluster"
    elif scheme in SENTINEL_SCHEMES:
        kind = "sentinel"
    elif topology in ("auto", "standalone"):
        return Topology("standalone")
    elif scheme not in ("redis", "rediss"):
        msg = f"topology {topology!r} needs a redis:// or rediss:// URL"
        raise ValueError(msg)
    else:
        kind = "cluster" if topology == "cluster" else "sentinel"

    if topology not in ("auto", kind):
        msg = f"the URL names a {kind} but topology is {topology!r}"
        raise ValueError(msg)

    if parts.query or parts.fragment:
        # Nothing reads them for a cluster or Sentinel: a ?password= would
        # be dropped without a word, and Redis would refuse the connection.
        msg = (
            f"a {kind} URL takes no ?query or #fragment: give the password "
            "before the '@' or as the password option"
        )
        raise ValueError(msg)

    userinfo, at, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    addresses = tuple(_address(item) for item in hosts.split(","))
    service, db = _service_and_db(
        kind, parts.path, sentinel_service, in_path=scheme in SENTINEL_SCHEMES
    )
    return Topology(
        kind,
        addresses,
        username=username,
        password=password,
        service=service,
        db=db,
        tls=scheme.startswith("rediss"),
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None


def _service_and_db(
    kind: Kind, path: str, sentinel_service: str | None, *, in_path: bool
) -> tuple[str | None, int]:
    # redis+sentinel://.../service/db; a redis:// URL with topology sentinel
    # keeps its usual /db path and takes the service from the option.
    segments = [segment for segment in path.split("/") if segment]
    service = sentinel_service
    if kind == "sentinel":
        if segments and in_path:
            service = unquote(segments.pop(0))

        if not service:
            msg = "a Sentinel URL needs the service: redis+sentinel://host:port/name"
            raise ValueError(msg)

    if not segments:
        return service, 0

    db = segments[0]
    if kind == "cluster" or len(segments) > 1 or not (db.isascii() and db.isdigit()):
        msg = "a cluster URL has no path; a Sentinel URL's path is /service[/db]"
        raise ValueError(msg)

    return service, int(db)


def _address(item: str) -> tuple[str, int]:
    """Return the host and port of ``host[:port]`` or ``[ipv6][:port]``."""
    item = item.strip()
    if item.startswith("["):
        # A bracketed IPv6 address holds colons of its own: the port is
        # only what follows the closing bracket.
        host, bracket, rest = item[1:].partition("]")
        port = rest.removeprefix(":") if rest else str(DEFAULT_PORT)
        valid = bool(bracket) and (not rest or rest.startswith(":"))
    else:
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = port, str(DEFAULT_PORT)

        # An IPv6 address without brackets cannot be told from its port.
        valid = ":" not in host

    # Digits as a URL has them: str.isdigit() takes other scripts' too.
    number = int(port) if port.isascii() and port.isdigit() else 0
    if not valid or not host or not 0 < number < 65536:
        msg = (
            "each address of a cluster or Sentinel URL must be host:port, "
            "with an IPv6 address in brackets"
        )
        raise ValueError(msg)

    # A percent-encoded IPv6 zone (fe80::1%25eth0) as the socket layer
    # wants it.
    return unquote(host), number


def cluster_client(topology: Topology, options: dict[str, Any]) -> Redis:
    """Return a ``RedisCluster`` for ``topology``, typed as the plain client.

    ``options`` are the standalone client's keyword arguments. The cluster
    client follows MOVED and ASK redirections itself; connection errors are
    left to the caller's retry policy, as for a single server.
    """
    kwargs = _shared_options(topology, options)
    kwargs["max_connections"] = options["max_connections"]
    # A lost node is our retry policy's business, like a lost server; the
    # cluster client still refreshes its slot map before the next command.
    kwargs["retry"] = options["retry"]
    kwargs["require_full_coverage"] = True
    if topology.tls:
        kwargs["ssl"] = True

    nodes = [ClusterNode(host, port) for host, port in topology.addresses]
    client = RedisCluster(startup_nodes=nodes, **kwargs)
    # RedisCluster offers the commands we use with the same signatures, but
    # is no subclass of Redis; callers that must tell them apart use
    # is_cluster().
    return cast("Redis", client)


def sentinel_client(topology: Topology, options: dict[str, Any]) -> Redis:
    """Return a client of the current master of ``topology.service``.

    Every new connection asks the sentinels where the master is, so after a
    failover the next connection reaches the promoted replica.
    """
    kwargs = _shared_options(topology, options)
    kwargs["db"] = topology.db
    if topology.tls:
        kwargs["ssl"] = True

    # TODO(sentinel-auth): the sentinels get no credentials; sentinels that
    # require a password (requirepass in sentinel.conf) cannot be used yet.
    sentinel_kwargs = {
        key: options[key] for key in ("socket_connect_timeout", "socket_timeout")
    }
    sentinel = Sentinel(
        list(topology.addresses), sentinel_kwargs=sentinel_kwargs, **kwargs
    )
    assert topology.service is not None, "parse_topology() requires a service"
    client: Redis = sentinel.master_for(
        topology.service,
        redis_class=_SentinelMaster,
        retry=options["retry"],
        max_connections=options["max_connections"],
    )
    return client


class _SentinelMaster(Redis):
    """The master's client, which also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the master's connections and those to the sentinels."""
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


def is_cluster(client: object) -> bool:
    """Tell whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def _shared_options(topology: Topology, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {
        key: options[key]
        for key in (
            "client_name",
            "socket_connect_timeout",
            "socket_timeout",
            "protocol",
        )
    }
    for key in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if key in options:
            kwargs[key] = options[key]

    # Credentials given as options win over the URL's, as for redis://.
    username = options.get("username", topology.username)
    password = options.get("password", topology.password)
    if username is not None:
        kwargs["username"] = username

    if password is not None:
        kwargs["password"] = password

    return kwargs
