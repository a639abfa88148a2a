"""Settings: one object, from arguments or the environment.

Every option can be given as a keyword argument or as an environment
variable named ``REDIS_EVENTS_<OPTION>``; the Redis URL may also come from the
conventional ``REDIS_URL``. Arguments win over the environment, and nothing
else in the library reads the environment.
"""

from __future__ import annotations

import os
import re
import ssl
from typing import Annotated, Any, Literal, Self
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from redis_events import _constants as c
from redis_events._positions import check_position
from redis_events._topology import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    Topology,
    parse_topology,
)
from redis_events.exceptions import ConfigurationError

__all__ = ["Settings", "mask_url"]

SUPPORTED_SCHEMES = frozenset(
    {"redis", "rediss", "unix", "memory", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES}
)

PositiveFloat = Annotated[float, Field(gt=0)]
# A redis:// path: nothing, "/", or one database number. ASCII digits only:
# redis-py's int() takes other scripts' digits too, Redis's SELECT does not.
_DB_PATH = re.compile(r"/?(?:[0-9]+/?)?")
_DB_NUMBER = re.compile(r"[0-9]+")
# Where redis_url may come from, in the order the environment is read.
_URL_VARIABLES = ("REDIS_EVENTS_REDIS_URL", "REDIS_URL")


class Settings(BaseSettings):
    """Connection and runtime options shared by publishers and subscribers.

    Note:
        ``repr()`` and ``str()`` show the URL with its password masked, and
        validation errors never echo the rejected value.
    """

    model_config = SettingsConfigDict(
        env_prefix="REDIS_EVENTS_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    redis_url: str = Field(
        default=c.DEFAULT_REDIS_URL,
        # The prefixed variable wins over the conventional one; the field
        # name itself still works as a keyword (populate_by_name).
        validation_alias=AliasChoices("REDIS_EVENTS_REDIS_URL", "REDIS_URL"),
        repr=False,
        description="redis://, rediss://, unix://, memory://, "
        "redis+cluster:// or redis+sentinel:// URL.",
    )
    topology: Literal["auto", "standalone", "cluster", "sentinel"] = Field(
        default="auto",
        description="auto: from the URL scheme; cluster or sentinel make a "
        "redis:// URL's host the seed node or the sentinel.",
    )
    sentinel_service: str | None = Field(
        default=None,
        pattern=r"^[!-~]{1,128}$",
        description="Sentinel service name, when not in the URL's path.",
    )
    client_name: str = Field(
        default=c.DEFAULT_CLIENT_NAME,
        pattern=r"^[!-~]{1,64}$",
        description="Prefix of the CLIENT SETNAME of every connection.",
    )
    socket_connect_timeout: PositiveFloat = c.DEFAULT_SOCKET_CONNECT_TIMEOUT
    socket_timeout: PositiveFloat = Field(
        default=c.DEFAULT_SOCKET_TIMEOUT,
        description="Read timeout of request/reply commands (not of waits).",
    )
    health_check_interval: PositiveFloat = Field(
        default=c.DEFAULT_HEALTH_CHECK_INTERVAL,
        description="An idle subscriber PINGs after half of this and gives "
        "the connection up when no reply came within it.",
    )
    max_connections: int = Field(default=c.DEFAULT_MAX_CONNECTIONS, ge=1)
    protocol: int = Field(
        default=2, ge=2, le=3, description="RESP version spoken to Redis."
    )
    publish_retry_timeout: float = Field(
        default=c.DEFAULT_PUBLISH_RETRY_TIMEOUT,
        ge=0,
        description="How long a publish keeps retrying a lost connection.",
    )
    reconnect_backoff_base: PositiveFloat = c.DEFAULT_RECONNECT_BACKOFF_BASE
    reconnect_backoff_cap: PositiveFloat = c.DEFAULT_RECONNECT_BACKOFF_CAP
    max_concurrency: int = Field(default=c.DEFAULT_MAX_CONCURRENCY, ge=1)
    handler_timeout: float = Field(
        default=60.0, ge=0, description="Seconds per handler call; 0 = no limit."
    )
    shutdown_timeout: float = Field(default=c.DEFAULT_SHUTDOWN_TIMEOUT, ge=0)
    max_event_bytes: int = Field(default=c.DEFAULT_MAX_EVENT_BYTES, ge=64)
    username: str | None = Field(
        default=None, description="Redis ACL user, when not in the URL."
    )
    password: SecretStr | None = Field(
        default=None, repr=False, description="Redis password, when not in the URL."
    )
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    transport: Literal["pubsub", "stream"] = Field(
        default="pubsub",
        description="pubsub: fire-and-forget; stream: consumer groups, at-least-once.",
    )
    group: str = Field(default=c.DEFAULT_GROUP, pattern=r"^[!-~]{1,128}$")
    consumer: str | None = Field(
        default=None,
        pattern=r"^[!-~]{1,128}$",
        description="Consumer name in the group; default <host>-<pid>-<random>.",
    )
    start_from: str = Field(
        default="new",
        description="Where a new group starts: new, all, an entry id or an "
        "ISO 8601 time.",
    )
    stream_maxlen: int = Field(default=c.DEFAULT_STREAM_MAXLEN, ge=0)
    block_seconds: PositiveFloat = c.DEFAULT_BLOCK_SECONDS
    read_count: int = Field(default=c.DEFAULT_READ_COUNT, ge=1)
    claim_min_idle: PositiveFloat = c.DEFAULT_CLAIM_MIN_IDLE
    claim_interval: PositiveFloat = c.DEFAULT_CLAIM_INTERVAL
    retry_backoff: float = Field(default=c.DEFAULT_RETRY_BACKOFF, ge=0)
    max_deliveries: int = Field(default=c.DEFAULT_MAX_DELIVERIES, ge=1)
    tracing: bool = Field(
        default=False,
        description="Carry OpenTelemetry trace context from publish to handler "
        "and trace both (needs the otel extra).",
    )
    instance_stats_interval: float = Field(
        default=c.DEFAULT_INSTANCE_STATS_INTERVAL,
        ge=0,
        description="Seconds between writes of a running subscriber's stats "
        "to its instance hash; 0 = no writes.",
    )
    instance_stats_ttl: int = Field(
        default=c.DEFAULT_INSTANCE_STATS_TTL,
        ge=1,
        description="Seconds an instance hash outlives its last write; keep "
        "it above the interval.",
    )

    @field_validator("start_from")
    @classmethod
    def _check_start(cls, value: str) -> str:
        return check_position(value)

    @model_validator(mode="after")
    def _check_instance_stats(self) -> Self:
        interval = self.instance_stats_interval
        if interval and self.instance_stats_ttl <= interval:
            # The hash would expire between two writes and the instance
            # would flicker in and out of view.
            msg = "instance_stats_ttl must be longer than instance_stats_interval"
            raise ValueError(msg)

        return self

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            if "," not in parts.netloc:
                _ = parts.port
        except ValueError:
            msg = "the port in the Redis URL must be a number from 0 to 65535"
            raise ValueError(msg) from None

        if "@" in parts.path + parts.query + parts.fragment:
            # An unescaped "/", "?" or "#" in a password moves it out of the
            # network location, where neither redis-py nor the masking finds
            # it. The message must not quote the URL.
            msg = (
                "the Redis URL has an '@' after the host part: percent-encode "
                "'/', '?', '#' and '@' in the username and password"
            )
            raise ValueError(msg)

        scheme = parts.scheme
        if scheme in SENTINEL_SCHEMES:
            _check_sentinel_database(parts)
            return value

        if scheme in CLUSTER_SCHEMES:
            return value

        if scheme not in SUPPORTED_SCHEMES:
            supported = ", ".join(f"{s}://" for s in sorted(SUPPORTED_SCHEMES))
            msg = f"unsupported Redis URL scheme {scheme!r}; use one of {supported}"
            raise ValueError(msg)

        _check_database(parts)
        return value

    @model_validator(mode="after")
    def _check_topology(self) -> Settings:
        self.deployment  # noqa: B018  # parsed here so that a bad URL fails early
        return self

    @property
    def deployment(self) -> Topology:
        """The deployment the URL and ``topology`` name.

        Raises:
            ValueError: They do not name a usable deployment.
        """
        return parse_topology(
            self.redis_url,
            topology=self.topology,
            sentinel_service=self.sentinel_service,
        )

    @property
    def masked_url(self) -> str:
        """The Redis URL with any password replaced by ``***``."""
        return mask_url(self.redis_url)

    @property
    def scheme(self) -> str:
        """The URL scheme, which selects the kind of connection."""
        return urlsplit(self.redis_url).scheme

    def ssl_options(self) -> dict[str, Any]:
        """Return the redis-py keyword arguments for a ``rediss://`` URL."""
        reqs = {
            "required": ssl.CERT_REQUIRED,
            "optional": ssl.CERT_OPTIONAL,
            "none": ssl.CERT_NONE,
        }[self.ssl_cert_reqs]
        options: dict[str, Any] = {"ssl_cert_reqs": reqs}
        if self.ssl_ca_certs:
            options["ssl_ca_certs"] = self.ssl_ca_certs

        if self.ssl_certfile:
            options["ssl_certfile"] = self.ssl_certfile

        if self.ssl_keyfile:
            options["ssl_keyfile"] = self.ssl_keyfile

        return options

    def __repr_args__(self) -> Any:
        yield "redis_url", self.masked_url
        yield from super().__repr_args__()

    @classmethod
    def from_arguments(
        cls,
        redis_url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        username: str | None = None,
        password: str | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> Settings:
        """Build settings from a URL, the original keyword form, or both.

        ``host``/``port``/``db``/``username``/``password`` are the keyword
        form of the original design (``EventPublisher(host=..., port=...)``)
        and build a ``redis://`` URL. Options left out come from ``settings``
        when given, else from the environment.

        Raises:
            ConfigurationError: The URL and the keyword form were both given,
                or a value is not valid.
        """
        keyword_form = any(v is not None for v in (host, port, db))
        if redis_url is not None and keyword_form:
            msg = "give either redis_url or host/port/db, not both"
            raise ConfigurationError(msg)

        if keyword_form:
            redis_url = _url_from_parts(host, port, db, username, password)
        else:
            # Credentials alone apply to whatever URL is used, given or
            # from the environment; a password in the URL itself wins.
            if username is not None:
                options["username"] = username

            if password is not None:
                options["password"] = password

        if redis_url is not None:
            options["redis_url"] = redis_url

        try:
            if settings is not None:
                merged = settings.model_dump() | options
                if settings.password is not None and "password" not in options:
                    merged["password"] = settings.password
                return cls.model_validate(merged)

            return cls(**options)
        except ValueError as exc:
            # Only without a settings object do the other options come from
            # the environment; an error there names the variable.
            reason = _describe_validation_error(
                exc, given=set(options), environment=settings is None
            )
            raise ConfigurationError(reason) from None


def _check_database(parts: SplitResult) -> None:
    """Refuse a database number that is not a non-negative integer.

    redis-py ignores a path it cannot read as a number (``/abc`` connects
    to database 0) and joins the digits of several segments (``/1/2`` is
    database 12). The messages quote the path or the parameter, never the
    network location, where a password is.
    """
    if parts.scheme in ("redis", "rediss") and not _DB_PATH.fullmatch(
        unquote(parts.path)
    ):
        raise ValueError(_database_message("redis://host:6379/0", parts.path))

    for name, number in parse_qsl(parts.query, keep_blank_values=True):
        if name == "db" and not _DB_NUMBER.fullmatch(number):
            msg = (
                "the db= parameter of the Redis URL must be a non-negative "
                f"integer, not {number[:40]!r}"
            )
            raise ValueError(msg)


def _check_sentinel_database(parts: SplitResult) -> None:
    """Refuse a Sentinel URL's database that is not a non-negative integer.

    The path is ``/service[/db]``; empty segments are skipped, as the
    topology parser skips them. The message quotes the part after the
    service only.
    """
    _service, _, rest = parts.path.lstrip("/").partition("/")
    database = "/".join(segment for segment in rest.split("/") if segment)
    if database and not _DB_NUMBER.fullmatch(database):
        example = "redis+sentinel://host:26379/service/0"
        raise ValueError(_database_message(example, database))


def _database_message(example: str, shown: str) -> str:
    return (
        "the database in the Redis URL's path must be a non-negative "
        f"integer, as in {example}, not {shown[:40]!r}"
    )


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``.

    Masks both forms redis-py reads: ``user:password@host`` and a
    ``password=`` query parameter (the only form a ``unix://`` URL has). The
    user part is taken up to the last ``@``, so a password with unescaped
    ``/`` or ``?`` is masked too.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url

    masked = rest
    at = rest.rfind("@")
    if at != -1:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            masked = f"{user}:***{rest[at:]}"

    location, question, query = masked.partition("?")
    if question:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name == "password" for name, _ in pairs):
            hidden = [(k, "***" if k == "password" else v) for k, v in pairs]
            masked = f"{location}?{urlencode(hidden, safe='*')}"

    return f"{scheme}://{masked}"


def _url_from_parts(
    host: str | None,
    port: int | None,
    db: int | None,
    username: str | None,
    password: str | None,
) -> str:
    auth = ""
    if password is not None:
        auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    elif username is not None:
        auth = f"{quote(username, safe='')}@"

    host = host or "localhost"
    if ":" in host:
        host = f"[{host}]"

    return f"redis://{auth}{host}:{port or 6379}/{db or 0}"


def _describe_validation_error(
    exc: ValueError, *, given: set[str], environment: bool
) -> str:
    """Return what is wrong, naming the variable of a value from the environment.

    ``given`` are the options passed as arguments; any other value that
    fails came from the environment when ``environment`` is true.
    """
    errors = getattr(exc, "errors", None)
    if errors is None:
        return "invalid settings"

    present = {name.upper() for name in os.environ}
    parts = []
    for error in errors(include_url=False, include_input=False):
        location = [str(p) for p in error["loc"]]
        if location and location[0] in _URL_VARIABLES:
            # pydantic names the field by its first alias.
            location[0] = "redis_url"

        field = ".".join(location) or "settings"
        variable = None
        if environment and location and location[0] not in given:
            variable = _variable(location[0], present)

        message = error["msg"].removeprefix("Value error, ")
        if variable is not None:
            field = f"{field} (from {variable})"

        parts.append(f"{field}: {message}")

    return "invalid settings: " + "; ".join(parts)


def _variable(field: str, present: set[str]) -> str | None:
    """Return the environment variable ``field`` was read from, if any."""
    names = _URL_VARIABLES if field == "redis_url" else (f"REDIS_EVENTS_{field}",)
    for name in names:
        if name.upper() in present:
            return name.upper()

    return None
