"""redis-events: asyncio-native domain events on Redis.

The whole public surface is re-exported here; submodules whose names start
with an underscore are private.
"""

from __future__ import annotations

from redis_events._constants import (
    KEY_SUBMISSION_TOPIC,
    PROCESSING_RESULTS_TOPIC,
    PROFILE_EVENTS_TOPIC,
)
from redis_events.admin import EventAdmin
from redis_events.codec import EventRegistry
from redis_events.config import Settings
from redis_events.dispatcher import Delivery, current_delivery
from redis_events.events import (
    REDACTED,
    Event,
    KeyProcessed,
    KeyResult,
    KeySubmitted,
    ProfileCreated,
    ProfileDeleted,
    ProfileEvent,
    ProfileProcessed,
    ProfileResult,
    ProfileUpdated,
    ResultEvent,
)
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
from redis_events.processor import EventProcessor
from redis_events.publisher import EventPublisher, close_shared_publisher, get_publisher
from redis_events.subscriber import EventSubscriber

__version__ = "0.1.0"

__all__ = [
    "KEY_SUBMISSION_TOPIC",
    "PROCESSING_RESULTS_TOPIC",
    "PROFILE_EVENTS_TOPIC",
    "REDACTED",
    "ConfigurationError",
    "Delivery",
    "Event",
    "EventAdmin",
    "EventDecodeError",
    "EventEncodeError",
    "EventError",
    "EventProcessor",
    "EventPublisher",
    "EventRegistry",
    "EventSubscriber",
    "EventTooLargeError",
    "KeyProcessed",
    "KeyResult",
    "KeySubmitted",
    "PermissionDeniedError",
    "ProfileCreated",
    "ProfileDeleted",
    "ProfileEvent",
    "ProfileProcessed",
    "ProfileResult",
    "ProfileUpdated",
    "RedisEventsError",
    "RedisUnavailableError",
    "ResultEvent",
    "Settings",
    "close_shared_publisher",
    "current_delivery",
    "get_publisher",
]
