"""Commands that move events: ``publish``, ``replay`` and ``processor``."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from redis_events._connection import REDIS_ERRORS, create_client, translate_error
from redis_events._keys import stream_key
from redis_events._positions import position_to_id
from redis_events._stream_session import ReplayedEntry, replay_entries
from redis_events.cli._common import (
    EXIT_USAGE,
    build_settings,
    events,
    fail,
    redis_url_option,
    run,
    say,
    transport_option,
)
from redis_events.cli._output import EventPrinter
from redis_events.codec import EventRegistry, validate_topic
from redis_events.exceptions import ConfigurationError, EventEncodeError, EventError
from redis_events.publisher import EventPublisher

if TYPE_CHECKING:
    from redis_events.config import Settings

__all__ = ["processor", "publish", "replay"]


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
        # The encoded form, decoded again, is exactly what subscribers will
        # get; one they cannot decode (nested too deeply) is not sent.
        published = registry.decode(topic, data)
    except ConfigurationError as exc:
        fail(str(exc), EXIT_USAGE)
    except EventError as exc:
        fail(f"{exc}; fix the event and publish again", EXIT_USAGE)

    result = run(_publish, settings, registry, topic, published)

    printer = EventPrinter(json_lines=json_lines)
    if settings.transport == "stream":
        printer.event(
            topic,
            published,
            entry_id=str(result),
            note=f"stream {where}",
            fields={"transport": "stream", "stream": where},
        )
    else:
        printer.event(
            topic,
            published,
            note=f"received by {result} subscriber{'' if result == 1 else 's'}",
            fields={"transport": "pubsub", "receivers": result},
        )


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
    except RecursionError:
        fail(f"{source} is nested too deeply to be an event", EXIT_USAGE)

    if not isinstance(value, dict):
        fail(
            f"{source} must be a JSON object ({{...}}), not a {type(value).__name__}",
            EXIT_USAGE,
        )

    return value


@click.command()
@click.argument("topic")
@click.option(
    "--from",
    "start",
    required=True,
    metavar="ID|TIME|all",
    help="First entry: an entry id (1700000000000-0), an ISO 8601 time "
    "(2024-01-01T10:00:00Z) or all.",
)
@click.option(
    "--to",
    "end",
    metavar="ID|TIME",
    help="Last entry to include (default: the newest entry when replay starts).",
)
@click.option(
    "--republish",
    is_flag=True,
    help="Publish each event again instead of only printing it.",
)
@click.option(
    "--into",
    metavar="TOPIC",
    help="With --republish: publish to this topic instead of TOPIC.",
)
@transport_option("with --republish: publish on pub/sub or append to a stream")
@click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="One JSON object per event and line, for piping.",
)
@redis_url_option
def replay(
    topic: str,
    start: str,
    end: str | None,
    republish: bool,
    into: str | None,
    transport: str | None,
    json_lines: bool,
    redis_url: str | None,
) -> None:
    """Print the history of TOPIC's stream, or publish it again.

    Reads redis-events:{TOPIC} with XRANGE, oldest first: no consumer group
    is read from or changed. Each event is printed with its entry id,
    secrets redacted. Entries that are not valid events are skipped and
    reported on stderr.

    A republished event is the stored JSON sent again byte for byte: it
    keeps its secret and its event_id, so consumers can tell a copy. It is
    still checked against the model of the topic it goes to (and the size
    limit); one that does not fit is reported on stderr and not sent.

    \b
    Examples:
      redis-events replay key_submission --from 2024-01-01T00:00:00Z
      redis-events replay profile_events --from all --republish --transport pubsub
    """
    if into is not None and not republish:
        fail("--into only works with --republish; add --republish", EXIT_USAGE)

    try:
        if start == "new":
            msg = "--from must be all, an entry id or a time: new has no history"
            raise ConfigurationError(msg)

        position_to_id(start, edge="first", name="--from")
        if end is not None:
            position_to_id(end, edge="last", name="--to")

        stream_key(topic)
        if into is not None:
            validate_topic(into)
    except ConfigurationError as exc:
        fail(str(exc), EXIT_USAGE)

    settings = build_settings(redis_url, transport=transport)
    registry = EventRegistry(max_event_bytes=settings.max_event_bytes)
    target = (into or topic) if republish else None
    printer = EventPrinter(json_lines=json_lines)
    done = run(_replay, settings, registry, topic, start, end, printer, target)

    if target is None:
        say(f"Replayed {events(done.given)} of {topic}.")
    else:
        refused = f"; {done.refused} refused by {target}" if done.refused else ""
        say(
            f"Re-published {events(done.given - done.refused)} of {topic} to "
            f"{target} ({settings.transport}){refused}."
        )


@dataclass
class _Replayed:
    """What a replay did: entries given, and copies refused by the target."""

    given: int = 0
    refused: int = 0


async def _replay(
    settings: Settings,
    registry: EventRegistry,
    topic: str,
    start: str,
    end: str | None,
    printer: EventPrinter,
    target: str | None,
) -> _Replayed:
    done = _Replayed()
    if end is None:
        # Pinned at the start, so that re-publishing into the same stream
        # does not replay its own copies forever.
        end = await _newest_entry(settings, topic)
        if end is None:
            say(
                f"The stream {stream_key(topic)} is empty or missing: only "
                "events published with --transport stream are kept."
            )
            return done

    if target is None:

        async def show(entry: ReplayedEntry) -> None:
            printer.event(entry.topic, entry.event, entry_id=entry.entry_id)

        done.given = await replay_entries(
            settings, registry, topic, show, start=start, end=end
        )
        return done

    publisher = EventPublisher(settings=settings, registry=registry)
    await publisher.connect()

    async def republish(entry: ReplayedEntry) -> None:
        try:
            # The stored bytes as they are, not the event encoded again: a
            # copy keeps its secrets and event_id whatever the target topic.
            result = await publisher._publish_encoded(target, entry.data)
        except EventEncodeError as exc:
            done.refused += 1
            say(
                f"Entry {entry.entry_id} not re-published: {exc}",
                level=logging.WARNING,
                prefix=f"{_command_path()}: warning: ",
            )
            return

        if settings.transport == "stream":
            note, fields = f"entry {result}", {"new_entry_id": result}
        else:
            note, fields = f"received by {result}", {"receivers": result}

        printer.event(
            target,
            entry.event,
            entry_id=entry.entry_id,
            note=f"re-published from {entry.topic}: {note}",
            fields={"republished_from": entry.topic, "transport": settings.transport}
            | fields,
        )

    try:
        done.given = await replay_entries(
            settings, registry, topic, republish, start=start, end=end
        )
    finally:
        await publisher.close()

    return done


def _command_path() -> str:
    context = click.get_current_context(silent=True)
    return context.command_path if context is not None else "redis-events"


async def _newest_entry(settings: Settings, topic: str) -> str | None:
    client = create_client(settings, role="replay")
    try:
        newest: Any = await client.xrevrange(stream_key(topic), count=1)
    except REDIS_ERRORS as exc:
        raise translate_error(
            exc, operation="XREVRANGE", settings=settings, topic=topic
        ) from exc
    finally:
        await client.aclose()

    if not newest:
        return None

    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    short_help="Run the event processor service (see processor --help).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def processor(context: click.Context, args: tuple[str, ...]) -> None:
    """Run the event processor service (redis-events processor --help).

    The same as python -m redis_events.processor: every argument is passed
    on, and --help lists the processor's own options. --log-level and
    --log-format given before the command are passed on too, unless given
    again after it.
    """
    # Imported here: the other commands need none of the service's modules.
    from redis_events.processor._cli import main as processor_main

    flags = [*_group_log_flags(context, args), *args]
    sys.exit(processor_main(flags, prog=context.command_path))


def _group_log_flags(context: click.Context, args: tuple[str, ...]) -> list[str]:
    """Return the group's log flags that were typed, for the processor.

    Values from the environment are left out: the processor reads the same
    variables itself, with its own default level (INFO).
    """
    group = context.find_root()
    flags = []
    for name in ("log_level", "log_format"):
        flag = "--" + name.replace("_", "-")
        typed = group.get_parameter_source(name) is ParameterSource.COMMANDLINE
        if typed and not any(a == flag or a.startswith(f"{flag}=") for a in args):
            flags += [flag, str(group.params[name])]

    return flags
