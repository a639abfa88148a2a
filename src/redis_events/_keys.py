"""Redis key names of the streams transport: the one place that builds them.

For a topic ``orders``:

- ``redis-events:{orders}``       the stream of events
- ``redis-events:{orders}:dead``  its dead letters

The braces are a Redis Cluster hash tag: both keys of a topic always live in
the same slot, so a dead-letter write and its acknowledgement can share one
MULTI/EXEC.
"""

from __future__ import annotations

from redis_events import _constants as c
from redis_events.codec import validate_topic
from redis_events.exceptions import ConfigurationError

__all__ = ["DATA_FIELD", "dead_letter_key", "stream_key"]

# The field of a stream entry that holds the event's JSON.
DATA_FIELD = b"data"


def stream_key(topic: str) -> str:
    """Return the stream key of ``topic``.

    Raises:
        ConfigurationError: The topic is not usable as part of a key.
    """
    return f"{c.STREAM_KEY_PREFIX}:{{{_checked(topic)}}}"


def dead_letter_key(topic: str) -> str:
    """Return the dead-letter stream key of ``topic``."""
    return f"{stream_key(topic)}:dead"


def _checked(topic: str) -> str:
    validate_topic(topic)
    if "{" in topic or "}" in topic:
        # A brace would change which part of the key Redis Cluster hashes.
        msg = f"a topic on the streams transport cannot contain braces: {topic!r}"
        raise ConfigurationError(msg)

    return topic
