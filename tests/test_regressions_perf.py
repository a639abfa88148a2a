"""Regressions of the break-it review of the performance rewrite.

One test per defect found by attacking the dispatcher, the packed pub/sub
batches and the leaner readers merged with the ``perf`` branch; each failed
on the merge (e95a4b4) and passes since. The defect is in the docstring.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel, ConfigDict

from redis_events import EventSubscriber, current_delivery
from redis_events._envelope import add_to_json
from redis_events.observers import EventObserver
from tests.helpers import wait_until

if TYPE_CHECKING:
    import redis

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Strict(BaseModel):
    """A model that refuses unknown fields, such as a trace member left in."""

    model_config = ConfigDict(extra="forbid")

    n: int


class Arrivals(EventObserver):
    """Record the topic of every ``received`` call."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def received(self, topic: str) -> None:
        """Record ``topic``."""
        self.topics.append(topic)


@pytest.mark.redis
@pytest.mark.parametrize("with_pattern", [False, True], ids=["direct", "grouped"])
async def test_both_pubsub_routes_take_off_the_trace_and_tell_observers(
    redis_url: str, r: redis.Redis, uid: str, with_pattern: bool
) -> None:
    """The route for subscribers without patterns skipped two steps.

    It decoded the message with the publisher's ``_trace`` member still in
    it, so a model that forbids unknown fields rejected every traced event
    and no handler got the trace context; and it never called the
    observers' ``received``, so ``redis_events_events_received_total``
    stayed at 0. Both routes now decode in one place.
    """
    topic = f"route-{uid}"
    subscriber = EventSubscriber(redis_url)
    subscriber.registry.register(topic, Strict)
    arrivals = Arrivals()
    subscriber.add_observer(arrivals)
    got: list[tuple[int, dict[str, str] | None]] = []

    @subscriber.on(topic)
    async def handle(_: str, event: Strict) -> None:
        got.append((event.n, current_delivery().trace_context))

    if with_pattern:
        subscriber.on_pattern(f"other-{uid}-*")(handle)

    async with subscriber:
        for n in range(3):
            data = json.dumps({"n": n}).encode()
            r.publish(topic, add_to_json(data, {"traceparent": TRACEPARENT}))

        await wait_until(lambda: len(got) == 3)

    assert got == [(n, {"traceparent": TRACEPARENT}) for n in range(3)]
    assert arrivals.topics == [topic] * 3
    assert subscriber.get_stats()["invalid_events"] == 0
