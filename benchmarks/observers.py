"""What an observer costs per event: the dispatcher alone, with metrics, with tracing.

No Redis: a ``Dispatcher`` runs a handler that does nothing, for
``--events`` deliveries, with no observer, with ``Metrics`` (the per-topic
counters plus the duration histogram), and with ``Metrics`` and tracing
(an OpenTelemetry SDK provider that records spans and exports none). Each
variant runs ``--rounds`` times, alternating; the best round counts::

    .venv/bin/python benchmarks/observers.py --events 200000 --rounds 5
"""

from __future__ import annotations

import argparse
import time

import anyio

from redis_events.dispatcher import Delivery, Dispatcher, Stats
from redis_events.metrics import Metrics
from redis_events.observers import EventObserver, combine


async def noop(topic: str, event: object) -> None:
    """The handler: nothing, so the dispatch itself is what is timed."""


async def run(events: int, observer: EventObserver | None) -> float:
    """Dispatch ``events`` deliveries; return the nanoseconds per event."""
    stats = Stats(observer=observer)
    dispatcher = Dispatcher(
        max_concurrency=64, handler_timeout=None, shutdown_timeout=5, stats=stats
    )
    deliveries = [
        Delivery(topic=f"topic-{n % 4}", event={"event_id": str(n)})
        for n in range(events)
    ]
    start = time.perf_counter_ns()
    async with dispatcher.running():
        for delivery in deliveries:
            if observer is not None:
                observer.received(delivery.topic)

            await dispatcher.submit(noop, delivery)

    elapsed = time.perf_counter_ns() - start
    assert stats.events_handled == events, stats
    return elapsed / events


def tracing_observer() -> EventObserver:
    """Metrics plus tracing, with an SDK provider that exports nothing."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from redis_events.tracing import ConsumerTracing

    trace.set_tracer_provider(TracerProvider())
    return combine(Metrics(), ConsumerTracing())


def main() -> None:
    """Run the variants, alternating, and print the best round of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants: dict[str, EventObserver | None] = {
        "no observer": None,
        "metrics": Metrics(),
        "metrics + tracing": tracing_observer(),
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.rounds):
        for name, observer in variants.items():
            best[name] = min(best[name], anyio.run(run, args.events, observer))

    base = best["no observer"]
    print(f"{args.events} events, best of {args.rounds} rounds")
    for name, ns in best.items():
        print(f"{name:>18}: {ns / 1000:6.2f} µs/event  (+{(ns - base) / 1000:.2f})")


if __name__ == "__main__":
    main()
