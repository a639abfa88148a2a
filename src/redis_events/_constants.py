"""Names and tunable defaults that more than one module needs.

Topic names are part of the wire contract with the original design; changing
one breaks existing publishers and consumers.
"""

from __future__ import annotations

from typing import Final

KEY_SUBMISSION_TOPIC: Final = "key_submission"
PROFILE_EVENTS_TOPIC: Final = "profile_events"
PROCESSING_RESULTS_TOPIC: Final = "processing_results"
DEFAULT_PROCESSOR_TOPICS: Final = (
    KEY_SUBMISSION_TOPIC,
    PROFILE_EVENTS_TOPIC,
    PROCESSING_RESULTS_TOPIC,
)

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
DEFAULT_CLIENT_NAME: Final = "redis-events"

# Topic names are Redis channel names; these limits keep them printable and
# loggable. Redis itself accepts any binary string.
MAX_TOPIC_LENGTH: Final = 256

DEFAULT_MAX_EVENT_BYTES: Final = 1024 * 1024
DEFAULT_MAX_CONCURRENCY: Final = 64
DEFAULT_MAX_CONNECTIONS: Final = 32
DEFAULT_SOCKET_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_SOCKET_TIMEOUT: Final = 5.0
DEFAULT_HEALTH_CHECK_INTERVAL: Final = 10.0
DEFAULT_PUBLISH_RETRY_TIMEOUT: Final = 5.0
DEFAULT_RECONNECT_BACKOFF_BASE: Final = 0.25
DEFAULT_RECONNECT_BACKOFF_CAP: Final = 5.0
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0

# Streams transport. Every key of one topic shares the hash tag "{<topic>}",
# so that a stream and its dead letters live in one cluster slot.
STREAM_KEY_PREFIX: Final = "redis-events"
DEFAULT_GROUP: Final = "redis-events"
DEFAULT_STREAM_MAXLEN: Final = 1_000_000
DEFAULT_BLOCK_SECONDS: Final = 5.0
DEFAULT_READ_COUNT: Final = 100
DEFAULT_CLAIM_MIN_IDLE: Final = 60.0
DEFAULT_CLAIM_INTERVAL: Final = 5.0
DEFAULT_RETRY_BACKOFF: Final = 1.0
DEFAULT_MAX_DELIVERIES: Final = 5

# Instance stats: each running subscriber writes its counters to a hash this
# often, and the hash lives this long after the last write.
DEFAULT_INSTANCE_STATS_INTERVAL: Final = 5.0
DEFAULT_INSTANCE_STATS_TTL: Final = 15
