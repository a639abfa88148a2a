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


class _Contained(EventObserver):
    """What a wrapper does with an observer's exception: log it, go on.

    A hook that failed is logged with its traceback at ERROR once, then at
    DEBUG, so that a broken observer does not flood the log with one line
    per event.
    """

    def __init__(self) -> None:
        self._reported: set[tuple[int, str]] = set()

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


class _Guarded(_Contained):
    """Pass every call on to one observer; its exceptions go no further.

    One observer (metrics alone, say) is the common case, and a loop over a
    tuple of one would cost a microsecond per event.
    """

    def __init__(self, observer: EventObserver) -> None:
        super().__init__()
        self.observer = observer

    def received(self, topic: str) -> None:
        try:
            self.observer.received(topic)
        except Exception as exc:
            self._failed(self.observer, "received", exc)

    def rejected(self, topic: str | None) -> None:
        try:
            self.observer.rejected(topic)
        except Exception as exc:
            self._failed(self.observer, "rejected", exc)

    def started(self, delivery: Delivery) -> object:
        try:
            return self.observer.started(delivery)
        except Exception as exc:
            self._failed(self.observer, "started", exc)
            return _NOT_STARTED

    def finished(self, delivery: Delivery, outcome: Outcome, token: object) -> None:
        if token is _NOT_STARTED:
            # Not told of the end of a call it did not see start.
            return

        try:
            self.observer.finished(delivery, outcome, token)
        except Exception as exc:
            self._failed(self.observer, "finished", exc)

    def dead_lettered(self, topic: str) -> None:
        try:
            self.observer.dead_lettered(topic)
        except Exception as exc:
            self._failed(self.observer, "dead_lettered", exc)


class _Several(_Contained):
    """Pass every call on to each of several observers, in order.

    An observer's exception is logged and goes no further: the event, and
    the other observers, go on.
    """

    def __init__(self, observers: tuple[EventObserver, ...]) -> None:
        super().__init__()
        self.observers = observers

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


_NOT_STARTED = object()


def combine(current: EventObserver | None, added: EventObserver) -> EventObserver:
    """Return an observer that calls ``current`` (if any), then ``added``.

    The result logs and contains their exceptions (see ``_Contained``).
    """
    if current is None:
        return _Guarded(added)

    if isinstance(current, _Several):
        return _Several((*current.observers, added))

    if isinstance(current, _Guarded):
        return _Several((current.observer, added))

    return _Several((current, added))
