"""What the publisher and the subscriber are both built from."""

from __future__ import annotations

from typing import Any

from redis_events.codec import EventRegistry
from redis_events.config import Settings

__all__ = ["Endpoint"]


class Endpoint:
    """Settings and an event registry, from a URL or the original keyword form.

    Subclasses set up their own state in ``_init_state``.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        username: str | None = None,
        password: str | None = None,
        settings: Settings | None = None,
        registry: EventRegistry | None = None,
        **options: Any,
    ) -> None:
        """Configure; nothing connects until first use.

        ``options`` are ``Settings`` fields (``max_concurrency=8``, ...) that
        override ``settings`` and the environment.

        Raises:
            ConfigurationError: The URL or an option is not valid.
        """
        self.settings = Settings.from_arguments(
            redis_url,
            host=host,
            port=port,
            db=db,
            username=username,
            password=password,
            settings=settings,
            **options,
        )
        self.registry = registry or EventRegistry(
            max_event_bytes=self.settings.max_event_bytes
        )
        self._init_state()

    def _init_state(self) -> None:
        """Set up the subclass's own attributes."""
