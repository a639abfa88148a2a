"""Commands that move events: ``publish``, ``replay`` and ``processor``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from redis_events._keys import stream_key
from redis_events.cli._common import (
    EXIT_USAGE,
    build_settings,
    fail,
    redis_url_option,
    run,
    transport_option,
)
from redis_events.cli._output import EventPrinter
from redis_events.codec import EventRegistry, validate_topic
from redis_events.exceptions import ConfigurationError, EventError
from redis_events.publisher import EventPublisher

if TYPE_CHECKING:
    from redis_events.config import Settings

__all__ = ["publish"]


@click.command()
@click.argument("topic")
@click.argument("event", metavar="JSON|@FILE")
@redis_url_option
@transport_option("pubsub publishes to the channel TOPIC; stream appends to its stream")
@click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="Print the result as one JSON object instead of a pretty view.",
)
def publish(
    topic: str,
    event: str,
    redis_url: str | None,
    transport: str | None,
    json_lines: bool,
) -> None:
    """Publish one event to TOPIC.

    The event is a JSON object given inline, or read from a file with
    @FILE (@- reads standard input). On a topic with a model (key_submission,
    profile_events, processing_results) it is validated first and nothing is
    sent when it does not fit; missing event_id and timestamp are filled in.

    Prints the event as published, secrets redacted, with the stream entry
    id or the number of pub/sub receivers.

    \b
    Example:
      redis-events publish profile_events \\
        '{"event_type": "profile_deleted", "profile_id": 7}'

    Exit codes: 0 published, 1 Redis unreachable or refused, 2 bad input.
    """
    settings = build_settings(redis_url, transport=transport)
    registry = EventRegistry(max_event_bytes=settings.max_event_bytes)
    body = _parse_event(event)
    try:
        # Validate before connecting: a bad event fails the same way whether
        # or not Redis is reachable, and nothing is sent.
        data = registry.encode(validate_topic(topic), body)
        where = stream_key(topic) if settings.transport == "stream" else topic
    except ConfigurationError as exc:
        fail(str(exc), EXIT_USAGE)
    except EventError as exc:
        fail(f"{exc}; fix the event and publish again", EXIT_USAGE)

    # The encoded form, decoded again, is exactly what subscribers will get.
    published = registry.decode(topic, data)
    result = run(_publish, settings, registry, topic, published)
    printer = EventPrinter(json_lines=json_lines)
    if settings.transport == "stream":
        printer.event(topic, published, entry_id=str(result), note=f"stream {where}")
    else:
        printer.event(topic, published, note=f"received by {result} subscribers")


async def _publish(
    settings: Settings, registry: EventRegistry, topic: str, event: Any
) -> int | str:
    publisher = EventPublisher(settings=settings, registry=registry)
    try:
        # Connect first: an unreachable Redis fails at once instead of after
        # the publish retry window.
        await publisher.connect()
        return await publisher.publish(topic, event)
    finally:
        await publisher.close()


def _parse_event(argument: str) -> dict[str, Any]:
    """Return the JSON object of an inline argument or an @FILE."""
    source = "the event argument"
    text = argument
    if argument.startswith("@"):
        source = argument[1:] or "-"
        try:
            with click.open_file(source, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            fail(f"cannot read {source}: {exc.strerror or exc}", EXIT_USAGE)
        except UnicodeDecodeError:
            fail(f"{source} is not UTF-8 text", EXIT_USAGE)

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # The position only: the text itself may hold a secret.
        fail(
            f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); give a JSON object, or @FILE to read one from a file",
            EXIT_USAGE,
        )

    if not isinstance(value, dict):
        fail(
            f"{source} must be a JSON object ({{...}}), not a {type(value).__name__}",
            EXIT_USAGE,
        )

    return value
