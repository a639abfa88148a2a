"""``EventProcessor``: the original design's business rules, async.

``EventProcessor`` subscribes to ``key_submission``, ``profile_events`` and
``processing_results``; it validates submitted keys, processes profile events,
and publishes a ``key_processed`` or ``profile_processed`` result to
``processing_results`` for each. It reads its own results back and counts
them, but never republishes them.

Key rule: a key is valid when it has 6 to 512 characters, each an ASCII
letter, a digit, ``.``, ``_`` or ``-``. The result carries the validity, the
length, the token name and a reason; never the key.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Literal

import anyio

from redis_events import _constants as c
from redis_events.config import Settings
from redis_events.events import (
    KeyProcessed,
    KeyResult,
    KeySubmitted,
    ProfileCreated,
    ProfileDeleted,
    ProfileProcessed,
    ProfileResult,
    ProfileUpdated,
)
from redis_events.publisher import EventPublisher
from redis_events.subscriber import EventSubscriber

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import TaskStatus

__all__ = ["EventProcessor", "check_key"]

logger = logging.getLogger(__name__)

KEY_MIN_LENGTH = 6
KEY_MAX_LENGTH = 512
_KEY_CHARACTERS = re.compile(r"[A-Za-z0-9._-]*")
_PROFILE_ACTIONS: dict[str, Literal["created", "updated", "deleted"]] = {
    "profile_created": "created",
    "profile_updated": "updated",
    "profile_deleted": "deleted",
}


def check_key(key: str) -> tuple[bool, str | None]:
    """Apply the key rule; return validity and, if invalid, why (no key)."""
    if len(key) < KEY_MIN_LENGTH:
        return False, f"shorter than {KEY_MIN_LENGTH} characters"

    if len(key) > KEY_MAX_LENGTH:
        return False, f"longer than {KEY_MAX_LENGTH} characters"

    if not _KEY_CHARACTERS.fullmatch(key):
        return False, "contains characters other than A-Z a-z 0-9 . _ -"

    return True, None


class EventProcessor:
    """Process key and profile events and publish their results.

    Note:
        On the pub/sub transport a result is published at most once per
        received event; events that arrive while the processor is
        disconnected are not seen at all. Events of one profile are processed
        one at a time, in the order they arrived.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        topics: Sequence[str] = c.DEFAULT_PROCESSOR_TOPICS,
        **options: Any,
    ) -> None:
        """Configure the processor; nothing connects until ``run()``.

        Topics other than the three default ones are subscribed too, and
        their events are logged and counted as ``other_events``.

        Raises:
            ConfigurationError: The URL, a topic or an option is not valid.
        """
        self.settings = Settings.from_arguments(redis_url, settings=settings, **options)
        self.subscriber = EventSubscriber(settings=self.settings)
        self.publisher = EventPublisher(
            settings=self.settings, registry=self.subscriber.registry
        )
        self.topics = tuple(dict.fromkeys(topics))
        self._connected = False
        self._counts = {
            "keys_processed": 0,
            "profiles_processed": 0,
            "results_received": 0,
            "other_events": 0,
        }
        handlers = {
            c.KEY_SUBMISSION_TOPIC: self.handle_key_submission,
            c.PROFILE_EVENTS_TOPIC: self.handle_profile_event,
            c.PROCESSING_RESULTS_TOPIC: self.handle_result,
        }
        self._handlers = {
            topic: handlers.get(topic, self.handle_other) for topic in self.topics
        }
        for topic, handler in self._handlers.items():
            self.subscriber.on(topic)(handler)

        # A profile's created/updated/deleted must not overtake each other;
        # different profiles are still processed concurrently.
        self.subscriber.order_by(c.PROFILE_EVENTS_TOPIC, "profile_id")
        self.subscriber.report_stats_with(self.get_stats)

    def __repr__(self) -> str:
        return f"EventProcessor({self.settings.masked_url!r}, topics={self.topics})"

    async def connect(self) -> None:
        """Check that Redis answers before running.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: Redis refused the credentials.
        """
        await self.publisher.connect()
        self._connected = True

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Process events until ``stop()`` or cancellation.

        Note:
            Shutdown behaves as ``EventSubscriber.run``: handlers in flight
            finish (and publish their results) before the connections close.

        Raises:
            RedisUnavailableError: Redis could not be reached at start.
        """
        try:
            if not self._connected:
                await self.connect()

            logger.info(
                "Processor listening on %s: %s",
                self.settings.masked_url,
                ", ".join(self.topics),
            )
            await self.subscriber.run(task_status=task_status)
        finally:
            self._connected = False
            with anyio.CancelScope(shield=True):
                await self.publisher.close()

    async def stop(self) -> None:
        """Stop taking events and wait for the ones in flight."""
        await self.subscriber.stop()

    async def replay(self, *, start: str, end: str | None = None) -> dict[str, int]:
        """Feed each topic's stream history to its handler, oldest first.

        Results are published as usual; no consumer group is touched.

        Returns:
            How many events were replayed, per topic.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
        """
        counts = {}
        async with self.publisher:
            for topic, handler in self._handlers.items():
                counts[topic] = await self.subscriber.replay(
                    topic, handler, start=start, end=end
                )

        return counts

    def get_stats(self) -> dict[str, int]:
        """Return business counters, publisher and subscriber counters."""
        return (
            dict(self._counts)
            | self.publisher.get_stats()
            | self.subscriber.get_stats()
        )

    async def handle_key_submission(self, topic: str, event: object) -> None:
        """Validate a submitted key and publish a ``key_processed`` result."""
        if not isinstance(event, KeySubmitted):
            self._unexpected(topic, event)
            return

        valid, reason = check_key(event.key_value.get_secret_value())
        result = KeyProcessed(
            original_event=event.model_dump(mode="json"),
            result=KeyResult(
                valid=valid,
                length=len(event.key_value.get_secret_value()),
                token_name=event.token_name,
                reason=reason,
            ),
        )
        await self.publisher.publish(c.PROCESSING_RESULTS_TOPIC, result)
        self._counts["keys_processed"] += 1
        logger.info(
            "Processed key for token %r (event %s): valid=%s",
            event.token_name,
            event.event_id,
            valid,
            extra=_log_fields(topic, event),
        )

    async def handle_profile_event(self, topic: str, event: object) -> None:
        """Process a profile event and publish a ``profile_processed`` result."""
        if not isinstance(event, ProfileCreated | ProfileUpdated | ProfileDeleted):
            self._unexpected(topic, event)
            return

        action = _PROFILE_ACTIONS[event.event_type]
        result = ProfileProcessed(
            original_event=event.model_dump(mode="json"),
            result=ProfileResult(profile_id=event.profile_id, action=action),
        )
        await self.publisher.publish(c.PROCESSING_RESULTS_TOPIC, result)
        self._counts["profiles_processed"] += 1
        logger.info(
            "Processed profile %s %s (event %s)",
            event.profile_id,
            action,
            event.event_id,
            extra=_log_fields(topic, event),
        )

    async def handle_result(self, topic: str, event: object) -> None:
        """Count a result read back from ``processing_results``."""
        self._counts["results_received"] += 1
        logger.debug(
            "Result %s received",
            getattr(event, "event_type", None),
            extra=_log_fields(topic, event),
        )

    async def handle_other(self, topic: str, event: object) -> None:
        """Count and log an event on a topic without business rules."""
        self._counts["other_events"] += 1
        logger.info("Event on %s received", topic, extra=_log_fields(topic, event))

    def _unexpected(self, topic: str, event: object) -> None:
        self._counts["other_events"] += 1
        logger.warning(
            "Ignored a %s on %s: not the model this processor handles",
            type(event).__name__,
            topic,
            extra=_log_fields(topic, event),
        )


def _log_fields(topic: str, event: object) -> dict[str, str]:
    """Return the topic and the event's id and type where known, for ``extra=``."""
    fields = {"topic": topic}
    for name in ("event_id", "event_type"):
        value = (
            event.get(name) if isinstance(event, dict) else getattr(event, name, None)
        )
        if isinstance(value, str):
            fields[name] = value

    return fields
