"""The exception tree: one root, honest names, payload-free messages."""

from __future__ import annotations

import builtins
import inspect

import pytest

from redis_events import exceptions
from redis_events.exceptions import (
    ConfigurationError,
    EventDecodeError,
    EventEncodeError,
    EventError,
    EventTooLargeError,
    PermissionDeniedError,
    RedisEventsError,
    RedisUnavailableError,
)

EXCEPTION_CLASSES = [
    obj
    for _, obj in inspect.getmembers(exceptions, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == exceptions.__name__
]


def test_the_module_defines_the_documented_exceptions() -> None:
    names = {cls.__name__ for cls in EXCEPTION_CLASSES}

    assert names == set(exceptions.__all__)
    assert names == {
        "ConfigurationError",
        "EventDecodeError",
        "EventEncodeError",
        "EventError",
        "EventTooLargeError",
        "PermissionDeniedError",
        "RedisEventsError",
        "RedisUnavailableError",
    }


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_exception_derives_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, RedisEventsError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_exception_name_ends_in_error(cls: type[BaseException]) -> None:
    assert cls.__name__.endswith("Error")


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES, ids=lambda c: c.__name__)
def test_no_exception_shadows_a_builtin_name(cls: type[BaseException]) -> None:
    assert cls.__name__ not in dir(builtins)


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_exception_has_a_docstring(cls: type[BaseException]) -> None:
    assert cls.__doc__
    assert cls.__doc__.strip()


def test_tree_matches_the_module_docstring() -> None:
    direct = {
        ConfigurationError: RedisEventsError,
        RedisUnavailableError: RedisEventsError,
        PermissionDeniedError: RedisEventsError,
        EventError: RedisEventsError,
        EventEncodeError: EventError,
        EventDecodeError: EventError,
    }
    for cls, parent in direct.items():
        assert parent in cls.__bases__

    assert issubclass(EventTooLargeError, EventEncodeError)
    assert issubclass(EventTooLargeError, EventDecodeError)


def test_configuration_error_is_also_a_value_error() -> None:
    # Code that catches ValueError around option parsing keeps working.
    assert issubclass(ConfigurationError, ValueError)


def test_event_error_message_includes_topic_and_reason() -> None:
    error = EventDecodeError("event_type: Field required", topic="profile_events")

    assert "profile_events" in str(error)
    assert "event_type: Field required" in str(error)
    assert error.topic == "profile_events"
    assert error.reason == "event_type: Field required"


def test_event_error_message_without_a_topic_still_has_the_reason() -> None:
    error = EventEncodeError("not JSON-serializable")

    assert error.topic is None
    assert "not JSON-serializable" in str(error)
    assert "topic" not in str(error)


@pytest.mark.parametrize(
    ("cls", "summary"),
    [
        (EventError, "invalid event"),
        (EventEncodeError, "cannot encode event"),
        (EventDecodeError, "cannot decode event"),
        (EventTooLargeError, "event too large"),
    ],
)
def test_each_event_error_says_what_failed(cls: type[EventError], summary: str) -> None:
    error = cls("why", topic="t")

    assert str(error) == f"{summary} on topic 't': why"


def test_event_too_large_is_caught_by_both_encode_and_decode_handlers() -> None:
    for handler in (EventEncodeError, EventDecodeError, EventError, RedisEventsError):
        with pytest.raises(handler):
            raise EventTooLargeError("2000 bytes is above the limit of 1000")
