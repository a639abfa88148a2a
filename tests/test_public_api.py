"""The public surface: ``redis_events.__all__`` stays sorted, true and complete."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import redis_events
import redis_events.processor
from redis_events import codec, config, dispatcher, events, exceptions
from redis_events import publisher as publisher_module
from redis_events import subscriber as subscriber_module

if TYPE_CHECKING:
    from types import ModuleType

SCREAMING = re.compile(r"[A-Z][A-Z0-9_]*")


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 enforces: CONSTANTS, then Classes, then others.
    if SCREAMING.fullmatch(name):
        return (0, name)

    if name[0].isupper():
        return (1, name)

    return (2, name)


def test_all_is_sorted_without_duplicates() -> None:
    names = list(redis_events.__all__)

    assert names == sorted(names, key=_isort_key)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", redis_events.__all__)
def test_every_exported_name_exists(name: str) -> None:
    assert hasattr(redis_events, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}

    exec("from redis_events import *", namespace)  # a fixed source text

    assert set(namespace) - {"__builtins__"} == set(redis_events.__all__)


@pytest.mark.parametrize("name", exceptions.__all__)
def test_every_exception_is_exported(name: str) -> None:
    assert name in redis_events.__all__
    assert getattr(redis_events, name) is getattr(exceptions, name)


# Functions users have no need to import from the top level.
EVENT_HELPERS = {"new_event_id", "utc_now"}


@pytest.mark.parametrize("name", sorted(set(events.__all__) - EVENT_HELPERS))
def test_every_event_name_is_exported(name: str) -> None:
    assert name in redis_events.__all__
    assert getattr(redis_events, name) is getattr(events, name)


def test_event_helpers_are_plain_functions() -> None:
    # Only functions may be left out of the top level as helpers.
    for name in EVENT_HELPERS:
        assert inspect.isfunction(getattr(events, name))


@pytest.mark.parametrize(
    "module",
    [publisher_module, subscriber_module],
    ids=lambda m: m.__name__,
)
def test_publisher_and_subscriber_names_are_exported(module: ModuleType) -> None:
    for name in module.__all__:
        assert name in redis_events.__all__
        assert getattr(redis_events, name) is getattr(module, name)


def test_registry_settings_and_delivery_are_exported() -> None:
    assert redis_events.EventRegistry is codec.EventRegistry
    assert redis_events.Settings is config.Settings
    assert redis_events.Delivery is dispatcher.Delivery
    assert redis_events.current_delivery is dispatcher.current_delivery


def test_event_admin_is_exported() -> None:
    from redis_events import admin

    assert redis_events.EventAdmin is admin.EventAdmin


@pytest.mark.parametrize(
    "module_name",
    [
        "redis_events.admin",
        "redis_events.codec",
        "redis_events.config",
        "redis_events.dispatcher",
        "redis_events.events",
        "redis_events.exceptions",
        "redis_events.metrics",
        "redis_events.observers",
        "redis_events.publisher",
        "redis_events.subscriber",
        "redis_events.processor",
        "redis_events.tracing",
    ],
)
def test_every_public_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)

    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name}"


def test_processor_package_exposes_processor_serve_and_check_key() -> None:
    processor = redis_events.processor

    assert processor.EventProcessor is redis_events.EventProcessor
    assert inspect.iscoroutinefunction(processor.serve)
    assert processor.check_key("abc123") == (True, None)
    for name in ("EventProcessor", "serve", "check_key"):
        assert name in processor.__all__


def test_exported_classes_and_functions_are_documented() -> None:
    for name in redis_events.__all__:
        value = getattr(redis_events, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_version_is_a_string() -> None:
    assert isinstance(redis_events.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", redis_events.__version__)


def test_importing_the_package_loads_no_fakeredis() -> None:
    # fakeredis backs only memory:// URLs and is imported when one is used.
    code = "import sys, redis_events; print('fakeredis' in sys.modules)"

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.strip() == "False"
