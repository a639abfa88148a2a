"""Build redis-py clients from settings and translate their errors.

This is the one place that knows redis-py's exception classes: everything
above it sees only ``redis_events.exceptions``.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from redis_events._topology import cluster_client, sentinel_client
from redis_events.exceptions import (
    ConfigurationError,
    PermissionDeniedError,
    RedisEventsError,
    RedisUnavailableError,
)

if TYPE_CHECKING:
    from redis_events.config import Settings

__all__ = [
    "REDIS_ERRORS",
    "RETRYABLE_ERRORS",
    "Backoff",
    "create_client",
    "translate_error",
]

logger = logging.getLogger(__name__)

# Errors after which the same command may succeed on a new connection. An
# AuthenticationError is a ConnectionError in redis-py but never heals by
# itself, so it is checked first wherever these are caught.
RETRYABLE_ERRORS: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    # A cluster during a failover: the slot's master is down (CLUSTERDOWN),
    # not yet known to the client (slot not covered), or moving (TRYAGAIN);
    # or redirections did not settle within the client's TTL (ClusterError);
    # or no node at all answered (the whole cluster is down or unreachable).
    redis_errors.ClusterError,
    redis_errors.SlotNotCoveredError,
    redis_errors.TryAgainError,
    # No seed node answered while the client (re)built its slot map: the
    # cluster's form of a refused connection. It derives from neither
    # RedisError nor ConnectionError.
    redis_errors.RedisClusterUnreachableError,
)
# Everything redis-py raises for a failed command, on a server or a cluster.
REDIS_ERRORS: Final = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
)
_PERMANENT_ERRORS: Final = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
)

_CLUSTER_ERRORS: Final = (
    redis_errors.ClusterError,
    redis_errors.SlotNotCoveredError,
    redis_errors.TryAgainError,
)

# One in-process fakeredis server per memory:// URL host, shared by every
# client of that URL in the process: this is the embedded mode's "server".
_memory_servers: dict[str, Any] = {}


def create_client(settings: Settings, *, role: str, blocking: bool = True) -> Redis:
    """Return a client for ``settings.redis_url`` named ``<client_name>-<role>``.

    The client never retries on its own (redis-py's retry is switched off):
    the publisher and the subscriber own their retry policies, so that every
    retry is counted and logged.

    With ``blocking`` (the default), a command waits up to ``socket_timeout``
    for a free pooled connection when ``max_connections`` are busy. Without
    it a standalone server's pool fails at once instead, which costs less per
    command: for callers that bound their own use of the pool.

    Raises:
        ConfigurationError: The URL cannot be used.
    """
    name = f"{settings.client_name}-{role}"
    if settings.scheme == "memory":
        return _memory_client(settings, name)

    options: dict[str, Any] = {
        "client_name": name,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "socket_timeout": settings.socket_timeout,
        # No supported errors at all: with retries=0 alone, redis-py still
        # runs its failure callback once, and for a PubSub that callback
        # reconnects and resubscribes on a connection we then throw away.
        "retry": Retry(NoBackoff(), 0, supported_errors=()),
        "protocol": settings.protocol,
        "max_connections": settings.max_connections,
        # Wait for a free connection this long rather than failing at once
        # with "Too many connections" when every pooled one is busy.
        "timeout": settings.socket_timeout,
    }
    if settings.username is not None:
        options["username"] = settings.username

    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()

    deployment = settings.deployment
    if settings.scheme == "rediss" or deployment.tls:
        options.update(settings.ssl_options())

    if deployment.kind == "cluster":
        return cluster_client(deployment, options)

    if deployment.kind == "sentinel":
        return sentinel_client(deployment, options)

    try:
        pool: ConnectionPool
        if blocking:
            pool = BlockingConnectionPool.from_url(settings.redis_url, **options)
        else:
            del options["timeout"]
            pool = ConnectionPool.from_url(settings.redis_url, **options)
    except (ValueError, TypeError) as exc:
        msg = f"cannot use Redis URL {settings.masked_url}: {exc}"
        raise ConfigurationError(msg) from None

    return Redis.from_pool(pool)


def _memory_client(settings: Settings, name: str) -> Redis:
    # fakeredis runs the dead-letter script (EVALSHA) with lupa, which the
    # fakeredis[lua] dependency brings. Imported here so that fakeredis is
    # loaded only by memory:// users.
    import fakeredis

    key = urlsplit(settings.redis_url).netloc or "default"
    server = _memory_servers.get(key)
    if server is None:
        server = _memory_servers[key] = fakeredis.FakeServer()

    client: Redis = fakeredis.FakeAsyncRedis(server=server, client_name=name)
    return client


def translate_error(
    exc: BaseException,
    *,
    operation: str,
    settings: Settings,
    topic: str | None = None,
) -> RedisEventsError:
    """Return the library error that stands for a redis-py error.

    The message names the operation, the topic and the masked address; it
    never contains a payload or a password.
    """
    where = f" on topic {topic!r}" if topic is not None else ""
    address = settings.masked_url
    kind = type(exc).__name__
    if isinstance(exc, redis_errors.NoPermissionError):
        # Redis's NOPERM text names the refused command, key or channel; it
        # never holds a payload or a password.
        return PermissionDeniedError(
            f"{operation}{where} was refused by Redis at {address}: the user "
            f"lacks the ACL right for it ({kind}: {exc}); grant it or use "
            "another user"
        )

    if isinstance(exc, _PERMANENT_ERRORS):
        return PermissionDeniedError(
            f"Redis at {address} refused the credentials while running "
            f"{operation}{where} ({kind}); check the username and password"
        )

    refused = _refused_certificate(exc)
    if refused is not None:
        return ConfigurationError(
            f"{operation}{where} failed: the TLS certificate of Redis at {address} "
            f"did not pass verification ({refused.verify_message}); set "
            "ssl_ca_certs to the CA that signed it, and connect by a name the "
            "certificate was issued for"
        )

    if isinstance(exc, redis_errors.RedisClusterUnreachableError):
        return RedisUnavailableError(
            f"{operation}{where} failed: no node of the Redis Cluster at {address} "
            f"answered ({kind}: {exc})"
        )

    if isinstance(exc, _CLUSTER_ERRORS):
        return RedisUnavailableError(
            f"{operation}{where} failed: the Redis Cluster at {address} has no "
            f"reachable master for the slot now ({kind}: {exc}); a failover may "
            "be in progress, retry later"
        )

    if isinstance(exc, RETRYABLE_ERRORS):
        return RedisUnavailableError(
            f"{operation}{where} failed: Redis at {address} is unavailable "
            f"({kind}: {exc})"
        )

    return RedisEventsError(f"{operation}{where} failed at {address} ({kind}: {exc})")


def is_retryable(exc: BaseException) -> bool:
    """Tell whether ``exc`` may heal on a new connection."""
    return (
        isinstance(exc, RETRYABLE_ERRORS)
        and not isinstance(exc, _PERMANENT_ERRORS)
        and _refused_certificate(exc) is None
    )


def _refused_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """Return the TLS verification failure behind ``exc``, if it is one.

    redis-py raises a ConnectionError from the OSError of the handshake; a
    certificate the client does not trust stays untrusted on every retry.
    """
    for error in (exc, exc.__cause__):
        if isinstance(error, ssl.SSLCertVerificationError):
            return error

    return None


class Backoff:
    """Capped exponential backoff with full jitter, reset after a success."""

    def __init__(self, *, base: float, cap: float) -> None:
        self._policy = ExponentialWithJitterBackoff(cap=cap, base=base)
        self._base = base
        self.failures = 0

    def next_delay(self) -> float:
        """Count a failure and return how long to wait before the next try."""
        self.failures += 1
        # Full jitter may pick a delay near zero; a floor of half the base
        # keeps a dead server from being hammered.
        return max(self._base / 2, self._policy.compute(self.failures))

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.failures = 0
