"""Observers: be told of each event's arrival, handling and outcome.

A subscriber calls its observers from its transport and its dispatcher, on
the event loop's thread, at these points:

- ``received(topic)``: an event arrived (once per delivery on streams);
- ``rejected(topic)``: it could not be decoded (``topic`` is ``None`` when
  the channel name itself is not a valid topic);
- ``started(delivery)`` and ``finished(delivery, outcome, token)``: around
  one handler call, in the worker task that runs it; ``token`` is what
  ``started`` returned;
- ``dead_lettered(topic)``: an entry was moved to the dead letters.

Metrics (``redis_events.metrics``) and tracing (``redis_events.tracing``)
are observers. The calls sit on the per-event path: keep them short, and let
no exception out of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis_events.dispatcher import Delivery, Outcome

__all__ = ["EventObserver", "combine"]


class EventObserver:
    """Base class of observers: every method does nothing until overridden."""

    def received(self, topic: str) -> None:
        """Take note that an event arrived on ``topic``."""

    def rejected(self, topic: str | None) -> None:
        """Take note that an event on ``topic`` could not be decoded."""

    def started(self, delivery: Delivery) -> object:
        """Take note that a handler call starts; return a token for ``finished``."""
        return None

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        """Take note that the handler call ``token`` came from has ended."""

    def dead_lettered(self, topic: str) -> None:
        """Take note that an entry of ``topic`` went to the dead letters."""


class _Several(EventObserver):
    """Pass every call on to each of several observers, in order."""

    def __init__(self, observers: tuple[EventObserver, ...]) -> None:
        self.observers = observers

    def received(self, topic: str) -> None:
        for observer in self.observers:
            observer.received(topic)

    def rejected(self, topic: str | None) -> None:
        for observer in self.observers:
            observer.rejected(topic)

    def started(self, delivery: Delivery) -> object:
        return [observer.started(delivery) for observer in self.observers]

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        assert isinstance(token, list), "a token of started()"
        # Last started, first finished: a span opened by one observer closes
        # after the observers that started inside it.
        for observer, own in reversed(list(zip(self.observers, token, strict=True))):
            observer.finished(delivery, outcome, own)

    def dead_lettered(self, topic: str) -> None:
        for observer in self.observers:
            observer.dead_lettered(topic)


def combine(current: EventObserver | None, added: EventObserver) -> EventObserver:
    """Return an observer that calls ``current`` (if any), then ``added``."""
    if current is None:
        return added

    if isinstance(current, _Several):
        return _Several((*current.observers, added))

    return _Several((current, added))
