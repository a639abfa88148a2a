"""Redis key names of the streams transport: the one place that builds them.

For a topic ``orders``:

- ``redis-events:{orders}``       the stream of events
- ``redis-events:{orders}:dead``  its dead letters

and, for every running subscriber, ``redis-events:instances:<group>:<consumer>``:
a hash of its stats with a TTL (no braces: it belongs to no topic, and each
write names only this key, so on a cluster it may land on any shard).

The braces are a Redis Cluster hash tag: both keys of a topic always live in
the same slot, so a dead-letter write and its acknowledgement can share one
MULTI/EXEC.
"""

from __future__ import annotations

import re

from redis_events import _constants as c
from redis_events.codec import validate_topic
from redis_events.exceptions import ConfigurationError

__all__ = [
    "DATA_FIELD",
    "GLOB_CHARACTERS",
    "INSTANCE_KEY_PATTERN",
    "TOPIC_KEY_PATTERN",
    "dead_letter_key",
    "instance_key",
    "stream_key",
    "topic_of_key",
]

# Characters of Redis glob patterns: a stream topic may not contain them.
GLOB_CHARACTERS = frozenset("*?[]")

# The field of a stream entry that holds the event's JSON.
DATA_FIELD = b"data"

# SCAN patterns: every stream and dead-letter key, every instance hash.
TOPIC_KEY_PATTERN = f"{c.STREAM_KEY_PREFIX}:{{*}}*"
INSTANCE_KEY_PATTERN = f"{c.STREAM_KEY_PREFIX}:instances:*"
_TOPIC_KEY = re.compile(rf"{re.escape(c.STREAM_KEY_PREFIX)}:\{{([^{{}}]+)\}}(:dead)?")


def stream_key(topic: str) -> str:
    """Return the stream key of ``topic``.

    Raises:
        ConfigurationError: The topic is not usable as part of a key.
    """
    return f"{c.STREAM_KEY_PREFIX}:{{{_checked(topic)}}}"


def dead_letter_key(topic: str) -> str:
    """Return the dead-letter stream key of ``topic``."""
    return f"{stream_key(topic)}:dead"


def instance_key(group: str, consumer: str) -> str:
    """Return the key of the stats hash of one running subscriber."""
    return f"{c.STREAM_KEY_PREFIX}:instances:{group}:{consumer}"


def topic_of_key(key: str) -> str | None:
    """Return the topic of a stream or dead-letter key, else ``None``."""
    match = _TOPIC_KEY.fullmatch(key)
    return match[1] if match is not None else None


def _checked(topic: str) -> str:
    validate_topic(topic)
    if "{" in topic or "}" in topic:
        # A brace would change which part of the key Redis Cluster hashes.
        msg = f"a topic on the streams transport cannot contain braces: {topic!r}"
        raise ConfigurationError(msg)

    if GLOB_CHARACTERS.intersection(topic):
        # A stream is one key: 'profile_*' would be a literal stream that no
        # publisher writes to, not the streams of every profile topic.
        msg = (
            f"{topic!r} looks like a pattern: a topic on the streams transport "
            "cannot contain *, ?, [ or ], and patterns work on the pub/sub "
            "transport only; name each topic"
        )
        raise ConfigurationError(msg)

    return topic
