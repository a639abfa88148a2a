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
are observers. The calls sit on the per-event path: keep them short. An
exception out of one is logged (with its traceback once per hook) and goes
no further: the event is handled all the same.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis_events.dispatcher import Delivery, Outcome

__all__ = ["EventObserver", "combine"]

logger = logging.getLogger(__name__)


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
    """Pass every call on to each of several observers, in order.

    An observer's exception is logged and goes no further: the event, and
    the other observers, go on. A hook that failed is logged with its
    traceback at ERROR once, then at DEBUG, so that a broken observer does
    not flood the log with one line per event.
    """

    def __init__(self, observers: tuple[EventObserver, ...]) -> None:
        self.observers = observers
        self._reported: set[tuple[int, str]] = set()

    def received(self, topic: str) -> None:
        for observer in self.observers:
            try:
                observer.received(topic)
            except Exception as exc:
                self._failed(observer, "received", exc)

    def rejected(self, topic: str | None) -> None:
        for observer in self.observers:
            try:
                observer.rejected(topic)
            except Exception as exc:
                self._failed(observer, "rejected", exc)

    def started(self, delivery: Delivery) -> object:
        tokens: list[object] = []
        for observer in self.observers:
            try:
                tokens.append(observer.started(delivery))
            except Exception as exc:
                # Not told of the end of a call it did not see start.
                tokens.append(_NOT_STARTED)
                self._failed(observer, "started", exc)

        return tokens

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        assert isinstance(token, list), "a token of started()"
        # Last started, first finished: a span opened by one observer closes
        # after the observers that started inside it.
        for observer, own in reversed(list(zip(self.observers, token, strict=True))):
            if own is _NOT_STARTED:
                continue

            try:
                observer.finished(delivery, outcome, own)
            except Exception as exc:
                self._failed(observer, "finished", exc)

    def dead_lettered(self, topic: str) -> None:
        for observer in self.observers:
            try:
                observer.dead_lettered(topic)
            except Exception as exc:
                self._failed(observer, "dead_lettered", exc)

    def _failed(self, observer: EventObserver, hook: str, exc: Exception) -> None:
        key = (id(observer), hook)
        level = logging.DEBUG if key in self._reported else logging.ERROR
        self._reported.add(key)
        logger.log(
            level,
            "Observer %s failed in %s(); the event goes on without it",
            type(observer).__qualname__,
            hook,
            exc_info=exc,
        )


_NOT_STARTED = object()


def combine(current: EventObserver | None, added: EventObserver) -> EventObserver:
    """Return an observer that calls ``current`` (if any), then ``added``.

    The result contains their exceptions (see ``_Several``).
    """
    if current is None:
        return _Several((added,))

    if isinstance(current, _Several):
        return _Several((*current.observers, added))

    return _Several((current, added))
