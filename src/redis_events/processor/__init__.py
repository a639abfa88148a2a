"""The ready-made processor: business rules, the service runner and its CLI.

``EventProcessor`` holds the original design's rules; ``serve`` runs any
processor as a service with signal handling and stats lines; ``python -m
redis_events.processor`` is the command line around both.
"""

from __future__ import annotations

from redis_events.processor._core import (
    KEY_MAX_LENGTH,
    KEY_MIN_LENGTH,
    EventProcessor,
    check_key,
)
from redis_events.processor._service import (
    EXIT_FORCED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    serve,
)

__all__ = [
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "KEY_MAX_LENGTH",
    "KEY_MIN_LENGTH",
    "EventProcessor",
    "check_key",
    "serve",
]
