"""Your own topic, your own model, your own coroutine handlers.

Run against any Redis (or ``memory://`` for an in-process one)::

    .venv/bin/python examples/custom_handler.py --redis-url redis://localhost:6379/0

It registers an ``OrderPlaced`` model for the ``orders`` topic, handles orders
with a coroutine, publishes a summary to ``order_results``, watches every
``order*`` topic with a glob pattern, then publishes three orders to itself.
"""

from __future__ import annotations

import argparse
from decimal import Decimal

import anyio

from redis_events import Event, EventPublisher, EventSubscriber, current_delivery

ORDERS = "orders"
ORDER_RESULTS = "order_results"


class OrderPlaced(Event):
    """An order was placed."""

    event_type: str = "order_placed"
    order_id: int
    total: Decimal


async def main(redis_url: str) -> int:
    """Handle three orders and print what each handler saw."""
    subscriber = EventSubscriber(redis_url, max_concurrency=8)
    subscriber.registry.register(ORDERS, OrderPlaced)
    publisher = EventPublisher(redis_url, registry=subscriber.registry)
    summaries: list[dict[str, object]] = []
    finished = anyio.Event()

    @subscriber.on(ORDERS)
    async def place(topic: str, event: object) -> None:
        assert isinstance(event, OrderPlaced)
        print(f"order {event.order_id}: total {event.total}")
        await publisher.publish(
            ORDER_RESULTS, {"order_id": event.order_id, "accepted": event.total > 0}
        )

    @subscriber.on(ORDER_RESULTS)
    async def summarize(topic: str, event: object) -> None:
        assert isinstance(event, dict)  # no model registered: a plain dict
        summaries.append(event)
        if len(summaries) == 3:
            finished.set()

    @subscriber.on_pattern("order*")
    async def audit(topic: str, event: object) -> None:
        print(f"audit: {topic} via pattern {current_delivery().pattern}")

    async with subscriber, publisher:
        for order_id, total in ((1, "9.99"), (2, "0"), (3, "120.50")):
            await publisher.publish(
                ORDERS, OrderPlaced(order_id=order_id, total=Decimal(total))
            )

        with anyio.move_on_after(5):
            await finished.wait()

    for summary in summaries:
        print(f"result: order {summary['order_id']} accepted={summary['accepted']}")

    return 0 if len(summaries) == 3 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="memory://examples")
    raise SystemExit(anyio.run(main, parser.parse_args().redis_url))
