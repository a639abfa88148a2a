"""Settings: defaults, environment, the keyword form, and masked passwords."""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from redis_events import (
    ConfigurationError,
    EventProcessor,
    EventPublisher,
    EventSubscriber,
    Settings,
)
from redis_events.config import mask_url

PASSWORD = "s3cret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without REDIS_URL or REDIS_EVENTS_* in the environment."""
    for name in list(os.environ):
        if name.upper() == "REDIS_URL" or name.upper().startswith("REDIS_EVENTS_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()

    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.client_name == "redis-events"
    assert settings.socket_connect_timeout == 5.0
    assert settings.socket_timeout == 5.0
    assert settings.health_check_interval == 10.0
    assert settings.max_connections == 32
    assert settings.protocol == 2
    assert settings.publish_retry_timeout == 5.0
    assert settings.reconnect_backoff_base == 0.25
    assert settings.reconnect_backoff_cap == 5.0
    assert settings.max_concurrency == 64
    assert settings.handler_timeout == 60.0
    assert settings.shutdown_timeout == 10.0
    assert settings.max_event_bytes == 1024 * 1024
    assert settings.scheme == "redis"


def test_from_arguments_without_arguments_gives_the_defaults() -> None:
    assert Settings.from_arguments() == Settings()


def test_redis_url_from_the_conventional_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://envhost:6380/3")

    assert Settings().redis_url == "redis://envhost:6380/3"
    assert Settings.from_arguments().redis_url == "redis://envhost:6380/3"
    assert EventPublisher().settings.redis_url == "redis://envhost:6380/3"


def test_redis_url_from_the_prefixed_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_EVENTS_REDIS_URL", "redis://prefixed:6381/1")

    assert Settings().redis_url == "redis://prefixed:6381/1"


def test_prefixed_url_variable_beats_the_conventional_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # REDIS_URL is often set for some other program on the same machine;
    # the variable named for this library is the more specific choice.
    monkeypatch.setenv("REDIS_URL", "redis://generic:6379/0")
    monkeypatch.setenv("REDIS_EVENTS_REDIS_URL", "redis://specific:6379/0")

    assert Settings().redis_url == "redis://specific:6379/0"


def test_options_from_prefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_EVENTS_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("REDIS_EVENTS_HANDLER_TIMEOUT", "0")
    monkeypatch.setenv("REDIS_EVENTS_CLIENT_NAME", "billing")

    settings = Settings()

    assert settings.max_concurrency == 7
    assert settings.handler_timeout == 0
    assert settings.client_name == "billing"


def test_protocol_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every option can come from the environment, where values are text.
    monkeypatch.setenv("REDIS_EVENTS_PROTOCOL", "3")

    assert Settings().protocol == 3


def test_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://envhost:6379/0")
    monkeypatch.setenv("REDIS_EVENTS_REDIS_URL", "redis://envhost:6379/0")
    monkeypatch.setenv("REDIS_EVENTS_MAX_CONCURRENCY", "7")

    settings = Settings.from_arguments("redis://arghost:6379/0", max_concurrency=3)

    assert settings.redis_url == "redis://arghost:6379/0"
    assert settings.max_concurrency == 3
    assert Settings(redis_url="redis://arghost:6379/0").redis_url == (
        "redis://arghost:6379/0"
    )


def test_keyword_form_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://envhost:6379/0")

    settings = Settings.from_arguments(host="kwhost", port=6390)

    assert settings.redis_url == "redis://kwhost:6390/0"


def test_given_settings_supply_the_options_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = Settings(redis_url="redis://base:6379/0", max_concurrency=5)
    monkeypatch.setenv("REDIS_URL", "redis://envhost:6379/0")
    monkeypatch.setenv("REDIS_EVENTS_MAX_CONCURRENCY", "7")

    settings = Settings.from_arguments(settings=base, handler_timeout=2)

    assert settings.redis_url == "redis://base:6379/0"
    assert settings.max_concurrency == 5
    assert settings.handler_timeout == 2
    assert base.handler_timeout == 60.0


def test_every_class_takes_setting_overrides_as_keywords() -> None:
    subscriber = EventSubscriber("memory://cfg", max_concurrency=4)
    publisher = EventPublisher("memory://cfg", publish_retry_timeout=0)
    processor = EventProcessor("memory://cfg", handler_timeout=1)

    assert subscriber.settings.max_concurrency == 4
    assert publisher.settings.publish_retry_timeout == 0
    assert processor.settings.handler_timeout == 1
    assert processor.subscriber.settings.handler_timeout == 1


def test_keyword_form_builds_a_url() -> None:
    settings = Settings.from_arguments(
        host="192.168.1.100", port=6380, db=1, username="app", password=PASSWORD
    )

    assert settings.redis_url == f"redis://app:{PASSWORD}@192.168.1.100:6380/1"


def test_keyword_form_defaults_to_localhost_6379_db_0() -> None:
    assert Settings.from_arguments(db=0).redis_url == "redis://localhost:6379/0"
    assert Settings.from_arguments(host="h").redis_url == "redis://h:6379/0"


def test_keyword_form_quotes_the_password() -> None:
    password = "p@ss:w/rd?#%"

    url = Settings.from_arguments(host="h", password=password).redis_url

    parts = urlsplit(url)
    assert parts.hostname == "h"
    assert parts.port == 6379
    assert parts.password is not None
    assert unquote(parts.password) == password
    assert password not in url


def test_keyword_form_with_username_only() -> None:
    url = Settings.from_arguments(host="h", username="reader").redis_url

    assert url == "redis://reader@h:6379/0"


def test_keyword_form_brackets_an_ipv6_host() -> None:
    url = Settings.from_arguments(host="::1", port=6380).redis_url

    assert url == "redis://[::1]:6380/0"
    assert urlsplit(url).hostname == "::1"


def test_publisher_takes_the_original_keyword_form() -> None:
    publisher = EventPublisher(host="192.168.1.100", port=6380, db=1)

    assert publisher.settings.redis_url == "redis://192.168.1.100:6380/1"


def test_credentials_alone_apply_to_the_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6390/2")

    settings = Settings.from_arguments(username="u", password="s3cret")

    assert settings.redis_url == "redis://elsewhere:6390/2"
    assert settings.username == "u"
    assert settings.password is not None
    assert settings.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_credentials_may_go_with_a_url() -> None:
    settings = Settings.from_arguments("redis://x:6379/0", username="u", password="p")

    assert settings.redis_url == "redis://x:6379/0"
    assert settings.username == "u"


@pytest.mark.parametrize("keywords", [{"host": "h"}, {"port": 1}, {"db": 0}])
def test_url_and_keyword_form_together_is_a_configuration_error(
    keywords: dict[str, str | int],
) -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_arguments("redis://x:6379/0", **keywords)  # type: ignore[arg-type]  # values vary by case


def test_unsupported_scheme_is_an_error_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_arguments(f"http://u:{PASSWORD}@h")

    message = str(caught.value)
    assert "http" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(caught.value)
    assert caught.value.__cause__ is None


def test_unsupported_scheme_from_a_class_is_an_error_without_the_password() -> None:
    for build in (EventPublisher, EventSubscriber, EventProcessor):
        with pytest.raises(ConfigurationError) as caught:
            build(f"http://u:{PASSWORD}@h")

        assert PASSWORD not in str(caught.value)


def test_unsupported_scheme_in_the_environment_is_an_error_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://u:{PASSWORD}@h")

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_arguments()

    assert PASSWORD not in str(caught.value)


def test_settings_built_directly_never_echo_a_rejected_url() -> None:
    with pytest.raises(ValueError, match="unsupported Redis URL scheme") as caught:
        Settings(redis_url=f"http://u:{PASSWORD}@h")

    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [f"redis://u:{PASSWORD}@h:notaport/0", f"redis://u:{PASSWORD}@h:99999/0"],
    ids=["not a number", "out of range"],
)
def test_url_with_a_bad_port_is_a_configuration_error(url: str) -> None:
    # Accepted, such a URL makes repr(), masked_url and every connection
    # attempt raise a bare ValueError instead of ConfigurationError.
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_arguments(url)

    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "part"),
    [
        (f"redis://u:{PASSWORD}@localhost:6379/abc", "path must be a non-negative"),
        (f"redis://u:{PASSWORD}@localhost:6379/0:x", "not '/0:x'"),
        (f"rediss://u:{PASSWORD}@localhost:6379/-1", "not '/-1'"),
        # redis-py would join the digits and connect to database 12.
        (f"redis://u:{PASSWORD}@localhost:6379/1/2", "not '/1/2'"),
        (f"redis://u:{PASSWORD}@localhost:6379/0?db=x", "db= parameter"),
        (f"unix:///tmp/redis.sock?password={PASSWORD}&db=one", "not 'one'"),
    ],
    ids=["letters", "colon", "negative", "two-segments", "query", "unix-query"],
)
def test_a_database_that_is_not_a_number_is_refused_naming_the_part(
    url: str, part: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_arguments(url)

    assert "invalid settings: redis_url: " in str(caught.value)
    assert part in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "part"),
    [
        (f"redis+sentinel://u:{PASSWORD}@s1:26379,s2:26379/events/-1", "not '-1'"),
        (f"rediss+sentinel://u:{PASSWORD}@s1:26379/events/abc", "not 'abc'"),
        ("redis+sentinel://s1:26379/events/%2D1", "not '%2D1'"),
        # Other scripts' digits: int() reads them, Redis's SELECT does not.
        ("redis+sentinel://s1:26379/events/\u0663", "not '\u0663'"),
        ("redis+sentinel://s1:26379/events/1/2", "not '1/2'"),
    ],
    ids=["negative", "letters", "encoded-minus", "arabic-digit", "two-segments"],
)
def test_a_sentinel_database_that_is_not_a_number_is_refused_like_a_plain_one(
    url: str, part: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_arguments(url)

    message = str(caught.value)
    assert message.startswith(
        "invalid settings: redis_url: the database in the Redis URL's path "
        "must be a non-negative integer"
    )
    assert "redis+sentinel://host:26379/service/0" in message
    assert part in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379/events",
        "redis+sentinel://s1:26379/events/",
        "redis+sentinel://s1:26379,s2:26380/events/15",
    ],
)
def test_a_sentinel_database_number_or_none_is_accepted(url: str) -> None:
    assert Settings.from_arguments(url).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379",
        "redis://localhost:6379/",
        "redis://localhost:6379/15",
        "redis://localhost:6379/3/",
        "rediss://localhost:6380/0?ssl_cert_reqs=none",
        "unix:///tmp/redis.sock?db=2",
    ],
)
def test_a_database_number_or_none_is_accepted(url: str) -> None:
    assert Settings.from_arguments(url).redis_url == url


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"handler_timeout": -1}, "handler_timeout"),
        ({"protocol": 4}, "protocol"),
        ({"client_name": "has space"}, "client_name"),
        ({"max_event_bytes": 10}, "max_event_bytes"),
    ],
)
def test_invalid_option_is_a_configuration_error_naming_it(
    options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Settings.from_arguments("redis://h", **options)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        (
            "REDIS_EVENTS_TRANSPORT",
            "kafka",
            "transport (from REDIS_EVENTS_TRANSPORT): ",
        ),
        ("redis_events_max_concurrency", "0", "max_concurrency (from "),
        ("REDIS_URL", f"ftp://u:{PASSWORD}@h", "redis_url (from REDIS_URL): "),
        (
            "REDIS_EVENTS_REDIS_URL",
            f"ftp://u:{PASSWORD}@h",
            "redis_url (from REDIS_EVENTS_REDIS_URL): ",
        ),
    ],
)
def test_an_invalid_value_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_arguments()

    assert named in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_an_invalid_argument_is_named_as_the_option_even_with_the_variable_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_EVENTS_TRANSPORT", "stream")

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_arguments("redis://h", transport="kafka")

    assert "invalid settings: transport: Input should be" in str(caught.value)
    assert "REDIS_EVENTS_TRANSPORT" not in str(caught.value)


def test_repr_and_str_of_settings_mask_the_password() -> None:
    settings = Settings(redis_url=f"redis://app:{PASSWORD}@h:6379/0")

    for text in (repr(settings), str(settings), settings.masked_url):
        assert PASSWORD not in text
        assert "redis://app:***@h:6379/0" in text

    assert settings.redis_url == f"redis://app:{PASSWORD}@h:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://h:6379/0?password={PASSWORD}",
        f"unix:///run/redis.sock?db=0&password={PASSWORD}",
    ],
)
def test_repr_masks_a_password_given_in_the_query(url: str) -> None:
    # redis-py takes ?password= from the query string (it is the only way
    # to give one in a unix:// URL), so it is as secret as user:pass@.
    settings = Settings(redis_url=url)

    assert PASSWORD not in repr(settings)
    assert PASSWORD not in settings.masked_url


def test_repr_of_every_class_masks_the_password() -> None:
    url = f"memory://u:{PASSWORD}@cfg-repr"

    for thing in (EventPublisher(url), EventSubscriber(url), EventProcessor(url)):
        assert PASSWORD not in repr(thing)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://reader@h:6379/0", "redis://reader@h:6379/0"),
        (f"redis://u:{PASSWORD}@h:6379/0", "redis://u:***@h:6379/0"),
        (f"redis://:{PASSWORD}@h", "redis://:***@h"),
        (f"rediss://u:{PASSWORD}@h:6380/2", "rediss://u:***@h:6380/2"),
        (f"redis://u:{PASSWORD}@[::1]:6380/2", "redis://u:***@[::1]:6380/2"),
        (f"redis://u:{PASSWORD}@[::1]/2", "redis://u:***@[::1]/2"),
        ("redis://[::1]:6380/2", "redis://[::1]:6380/2"),
        (f"memory://u:{PASSWORD}@a", "memory://u:***@a"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_keeps_an_encoded_username_as_it_was() -> None:
    assert mask_url(f"redis://us%20er:{PASSWORD}@h") == "redis://us%20er:***@h"


def test_mask_url_hides_a_password_that_contains_at_signs() -> None:
    url = Settings.from_arguments(host="h", username="u", password="a@b@c").redis_url

    masked = mask_url(url)

    assert masked == "redis://u:***@h:6379/0"
    assert "a@b@c" not in masked
    assert "a%40b" not in masked


@pytest.mark.parametrize(
    ("reqs", "expected"),
    [
        ("required", ssl.CERT_REQUIRED),
        ("optional", ssl.CERT_OPTIONAL),
        ("none", ssl.CERT_NONE),
    ],
)
def test_ssl_options_map_cert_reqs(reqs: str, expected: ssl.VerifyMode) -> None:
    settings = Settings.from_arguments("rediss://h:6380/0", ssl_cert_reqs=reqs)

    assert settings.ssl_options() == {"ssl_cert_reqs": expected}


def test_ssl_options_default_to_required_without_files() -> None:
    assert Settings().ssl_options() == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_ssl_options_pass_the_files_given() -> None:
    settings = Settings.from_arguments(
        "rediss://h:6380/0",
        ssl_ca_certs="/etc/ca.pem",
        ssl_certfile="/etc/client.pem",
        ssl_keyfile="/etc/client.key",
    )

    assert settings.ssl_options() == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "ssl_keyfile": "/etc/client.key",
    }


def test_ssl_cert_reqs_refuses_other_values() -> None:
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs"):
        Settings.from_arguments("rediss://h", ssl_cert_reqs="maybe")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis://h", "redis"),
        ("rediss://h", "rediss"),
        ("unix:///run/redis.sock", "unix"),
        ("memory://x", "memory"),
    ],
)
def test_scheme_selects_the_connection_kind(url: str, scheme: str) -> None:
    assert Settings.from_arguments(url).scheme == scheme


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(ValueError, match="frozen"):
        settings.max_concurrency = 1  # type: ignore[misc]  # the point: frozen
