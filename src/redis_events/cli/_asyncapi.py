"""``asyncapi``: an AsyncAPI 3.0 document of the registered topics.

Each topic gets two channels, one per transport: the pub/sub channel named
like the topic, and the topic's stream. Each model is a message whose payload
is the model's JSON Schema (pydantic's ``model_json_schema``, validation
mode: what a publisher must send). A topic that carries a union of models
lists them all in its channels' ``messages``, which AsyncAPI 3.0 reads as
"exactly one of"; the union itself is also kept as a ``oneOf`` schema.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click
import yaml

import redis_events
from redis_events._keys import dead_letter_key, stream_key
from redis_events.cli._common import (
    EXIT_USAGE,
    build_settings,
    fail,
    redis_url_option,
    say,
)
from redis_events.codec import EventRegistry

if TYPE_CHECKING:
    from redis_events.config import Settings

__all__ = ["asyncapi", "asyncapi_document"]

ASYNCAPI_VERSION = "3.0.0"
_SCHEMAS = "#/components/schemas/"
_MESSAGES = "#/components/messages/"
# Component and channel keys of AsyncAPI must match ^[a-zA-Z0-9.\-_]+$.
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9._-]")
# Schema keywords that could carry a sample value of a secret field.
_SAMPLE_KEYWORDS = ("examples", "example", "default", "const", "enum")


def asyncapi_document(
    registry: EventRegistry, settings: Settings | None = None
) -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document of ``registry``'s topics as plain data."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in registry.topics():
        names = _add_schemas(topic, registry, schemas)
        for name in names:
            messages[name] = _message(name, schemas[name])

        refs = {name: {"$ref": _MESSAGES + name} for name in names}
        for channel_id, channel in _channels(topic, refs).items():
            channels[channel_id] = channel
            operations.update(_operations(channel_id, topic, names))

    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "redis-events",
            "version": redis_events.__version__,
            "description": "Domain events on Redis. Every topic is a pub/sub "
            "channel (at most once) and a stream read by consumer groups (at "
            "least once); the payload is the same JSON event on both.",
        },
        "defaultContentType": "application/json",
    }
    servers = _servers(settings)
    if servers:
        document["servers"] = servers

    document |= {
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
    return document


def _add_schemas(
    topic: str, registry: EventRegistry, schemas: dict[str, Any]
) -> list[str]:
    """Add the topic's schemas; return the names of its message schemas."""
    schema = registry.json_schema(topic, ref_template=_SCHEMAS + "{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas[_key(name)] = _without_secret_samples(definition)

    if "oneOf" in schema and all("$ref" in item for item in schema["oneOf"]):
        names = [item["$ref"].removeprefix(_SCHEMAS) for item in schema["oneOf"]]
        discriminator = schema.get("discriminator")
        union: dict[str, Any] = {
            "title": f"Any event of {topic}",
            "oneOf": schema["oneOf"],
        }
        if isinstance(discriminator, dict) and "propertyName" in discriminator:
            # AsyncAPI's Schema Object names the property; the mapping of
            # OpenAPI has no place there, and each model's const tells it.
            union["discriminator"] = discriminator["propertyName"]

        schemas[f"{_key(topic)}.payload"] = union
        return names

    name = _key(str(schema.get("title") or f"{topic}.payload"))
    schemas[name] = _without_secret_samples(schema)
    return [name]


def _message(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": schema.get("title", name),
        "contentType": "application/json",
        "payload": {"$ref": _SCHEMAS + name},
    }
    description = schema.get("description")
    if description:
        # Docstrings mark code with reStructuredText's ``; AsyncAPI reads
        # CommonMark.
        message["summary"] = description.splitlines()[0].replace("``", "`")

    return message


def _channels(topic: str, refs: dict[str, Any]) -> dict[str, Any]:
    key = _key(topic)
    pubsub: dict[str, Any] = {
        "address": topic,
        "title": f"{topic} (pub/sub)",
        "description": f"Redis pub/sub channel {topic!r}: PUBLISH and "
        "SUBSCRIBE, at most once; an event published while no one is "
        "subscribed is lost.",
        "messages": refs,
    }
    if "{" in topic:
        # Braces in an address are AsyncAPI parameters; this one has none.
        pubsub |= {"address": None, "x-redis-channel": topic}

    stream: dict[str, Any] = {
        # The stream key's braces are a Redis Cluster hash tag, not an
        # AsyncAPI parameter, so the key is given as an extension field.
        "address": None,
        "x-redis-stream-key": stream_key(topic),
        "title": f"{topic} (stream)",
        "description": f"Redis stream {stream_key(topic)}: each entry has "
        "one field, data, holding the JSON event. Consumer groups read it "
        "at least once; entries that keep failing move to "
        f"{dead_letter_key(topic)}.",
        "messages": refs,
    }
    return {f"{key}.pubsub": pubsub, f"{key}.stream": stream}


def _operations(channel_id: str, topic: str, names: list[str]) -> dict[str, Any]:
    channel = {"$ref": f"#/channels/{channel_id}"}
    messages = [{"$ref": f"#/channels/{channel_id}/messages/{n}"} for n in names]
    on_stream = channel_id.endswith(".stream")
    send = "XADD to the stream" if on_stream else "PUBLISH to the channel"
    receive = "XREADGROUP in a consumer group" if on_stream else "SUBSCRIBE"
    return {
        f"{channel_id}.send": {
            "action": "send",
            "channel": channel,
            "summary": f"Publish an event of {topic} ({send}).",
            "messages": messages,
        },
        f"{channel_id}.receive": {
            "action": "receive",
            "channel": channel,
            "summary": f"Handle the events of {topic} ({receive}).",
            "messages": messages,
        },
    }


def _servers(settings: Settings | None) -> dict[str, Any]:
    if settings is None or settings.scheme not in {"redis", "rediss"}:
        return {}

    # Host, port and database only: the URL's credentials stay out.
    parts = urlsplit(settings.redis_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"

    server: dict[str, Any] = {
        "host": f"{host}:{parts.port or 6379}",
        "protocol": settings.scheme,
        "description": "The Redis that carries the events.",
    }
    if parts.path.strip("/"):
        server["pathname"] = parts.path

    return {"redis": server}


def _without_secret_samples(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop sample values from secret properties (format password)."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return schema

    for name, field in properties.items():
        if isinstance(field, dict) and field.get("format") == "password":
            clean = {k: v for k, v in field.items() if k not in _SAMPLE_KEYWORDS}
            clean["description"] = "A secret: redis-events never logs or prints it."
            properties[name] = clean

    return schema


def _key(name: str) -> str:
    return _NOT_IN_KEY.sub("_", name)


class _Dumper(yaml.SafeDumper):
    """Write shared objects out in full: no YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@click.command()
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "yaml"]),
    help="Document format (default: yaml for an --output ending in .yaml or "
    ".yml, else json).",
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    help="Write the document to FILE instead of standard output.",
)
@redis_url_option
def asyncapi(
    output_format: str | None, output: str | None, redis_url: str | None
) -> None:
    """Write an AsyncAPI 3.0 document of the registered topics.

    Covers key_submission, profile_events and processing_results, on both
    transports (pub/sub channel and stream), with each event's JSON Schema
    from its pydantic model. Nothing connects to Redis; --redis-url only
    fills in the document's server (without credentials).

    \b
    Examples:
      redis-events asyncapi --format yaml --output asyncapi.yaml
      redis-events asyncapi | jq '.channels | keys'
    """
    settings = build_settings(redis_url)
    document = asyncapi_document(
        EventRegistry(max_event_bytes=settings.max_event_bytes), settings
    )
    if output_format is None:
        yaml_name = output is not None and output.endswith((".yaml", ".yml"))
        output_format = "yaml" if yaml_name else "json"

    if output_format == "yaml":
        text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"

    try:
        with click.open_file(output or "-", "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE)

    if output is not None:
        say(f"Wrote the AsyncAPI {ASYNCAPI_VERSION} document to {output}.")
