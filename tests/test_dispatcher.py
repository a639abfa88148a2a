"""Unit tests of the dispatcher: limits, timeouts, drain and outcomes (no Redis)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from redis_events import ProfileUpdated
from redis_events.dispatcher import (
    Delivery,
    Dispatcher,
    Outcome,
    Stats,
    current_delivery,
)
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus


def _delivery(n: int, topic: str = "t") -> Delivery:
    return Delivery(topic=topic, event={"event_id": f"e{n}", "n": n})


def _dispatcher(
    stats: Stats,
    *,
    max_concurrency: int = 8,
    handler_timeout: float | None = None,
    shutdown_timeout: float = 10.0,
    on_outcome: Callable[[Delivery, Outcome], None] | None = None,
) -> Dispatcher:
    return Dispatcher(
        max_concurrency=max_concurrency,
        handler_timeout=handler_timeout,
        shutdown_timeout=shutdown_timeout,
        stats=stats,
        on_outcome=on_outcome,
    )


async def test_no_more_handlers_run_at_once_than_max_concurrency() -> None:
    stats = Stats()
    gate = anyio.Event()
    running = 0
    peak = 0
    done: list[int] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        done.append(event["n"])

    dispatcher = _dispatcher(stats, max_concurrency=3)
    submitted = 0
    async with dispatcher.running(), anyio.create_task_group() as tg:

        async def submit_all() -> None:
            nonlocal submitted
            for n in range(10):
                await dispatcher.submit(handler, _delivery(n))
                submitted += 1

        tg.start_soon(submit_all)
        await wait_until(lambda: running == 3)
        await anyio.wait_all_tasks_blocked()
        # The fourth submit waits for a slot: that is the backpressure.
        assert submitted == 3
        assert running == 3
        assert stats.in_flight == 3
        gate.set()

    assert sorted(done) == list(range(10))
    assert peak == 3
    assert stats.events_handled == 10
    assert stats.in_flight == 0


async def test_handlers_start_in_submission_order() -> None:
    stats = Stats()
    started: list[int] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        started.append(event["n"])
        await anyio.lowlevel.checkpoint()

    dispatcher = _dispatcher(stats, max_concurrency=4)
    async with dispatcher.running():
        for n in range(50):
            await dispatcher.submit(handler, _delivery(n))

    assert started == list(range(50))


async def test_a_handler_over_its_timeout_is_cut_and_counted() -> None:
    stats = Stats()
    outcomes: list[tuple[str, Outcome]] = []
    finished: list[int] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        if event["n"] == 0:
            await anyio.sleep(30)

        finished.append(event["n"])

    dispatcher = _dispatcher(
        stats,
        handler_timeout=0.2,
        on_outcome=lambda d, o: outcomes.append((str(d.event_id), o)),
    )
    with anyio.fail_after(10):
        async with dispatcher.running():
            for n in range(3):
                await dispatcher.submit(handler, _delivery(n))

    assert sorted(finished) == [1, 2]
    assert stats.handler_timeouts == 1
    assert stats.events_handled == 2
    assert stats.handlers_cancelled == 0
    assert sorted(outcomes, key=lambda x: x[0]) == [
        ("e0", Outcome.TIMED_OUT),
        ("e1", Outcome.HANDLED),
        ("e2", Outcome.HANDLED),
    ]


async def test_a_failing_handler_is_counted_and_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = Stats()
    outcomes: list[Outcome] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        raise ValueError("boom")

    dispatcher = _dispatcher(stats, on_outcome=lambda d, o: outcomes.append(o))
    with caplog.at_level(logging.ERROR, logger="redis_events.dispatcher"):
        async with dispatcher.running():
            await dispatcher.submit(handler, _delivery(7))

    assert outcomes == [Outcome.FAILED]
    assert stats.handler_errors == 1
    assert stats.events_handled == 0
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "e7" in errors[0].getMessage()
    assert errors[0].exc_info is not None


async def test_leaving_running_waits_for_handlers_within_shutdown_timeout() -> None:
    stats = Stats()
    outcomes: list[Outcome] = []
    finished = 0

    async def handler(topic: str, event: dict[str, int]) -> None:
        nonlocal finished
        await anyio.sleep(0.3)
        finished += 1

    dispatcher = _dispatcher(
        stats, shutdown_timeout=10, on_outcome=lambda d, o: outcomes.append(o)
    )
    with anyio.fail_after(10):
        async with dispatcher.running():
            for n in range(4):
                await dispatcher.submit(handler, _delivery(n))

    assert finished == 4
    assert outcomes == [Outcome.HANDLED] * 4
    assert stats.handlers_cancelled == 0


async def test_drain_deadline_cancels_handlers_that_outlive_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = Stats()
    outcomes: list[tuple[str, Outcome]] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        await anyio.sleep(0.05 if event["n"] == 0 else 30)

    dispatcher = _dispatcher(
        stats,
        shutdown_timeout=0.5,
        on_outcome=lambda d, o: outcomes.append((str(d.event_id), o)),
    )
    with (
        caplog.at_level(logging.WARNING, logger="redis_events.dispatcher"),
        anyio.fail_after(10),
    ):
        async with dispatcher.running():
            for n in range(3):
                await dispatcher.submit(handler, _delivery(n))

    assert sorted(outcomes, key=lambda x: x[0]) == [
        ("e0", Outcome.HANDLED),
        ("e1", Outcome.CANCELLED),
        ("e2", Outcome.CANCELLED),
    ]
    assert stats.handlers_cancelled == 2
    assert stats.in_flight == 0
    cancelled_logs = [r for r in caplog.records if "cancelled" in r.getMessage()]
    assert len(cancelled_logs) == 2


async def test_cancelling_the_owner_task_still_lets_handlers_finish() -> None:
    stats = Stats()
    outcomes: list[Outcome] = []
    started = 0

    async def handler(topic: str, event: dict[str, int]) -> None:
        nonlocal started
        started += 1
        await anyio.sleep(0.3)

    dispatcher = _dispatcher(
        stats, shutdown_timeout=10, on_outcome=lambda d, o: outcomes.append(o)
    )

    async def owner(*, task_status: TaskStatus[None]) -> None:
        async with dispatcher.running():
            for n in range(3):
                await dispatcher.submit(handler, _delivery(n))

            task_status.started()
            await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(owner)
            await wait_until(lambda: started == 3)
            tg.cancel_scope.cancel()

    assert outcomes == [Outcome.HANDLED] * 3
    assert stats.handlers_cancelled == 0
    assert stats.events_handled == 3


async def test_drain_zero_cancels_handlers_in_flight_at_once() -> None:
    stats = Stats()
    outcomes: list[Outcome] = []
    started = 0

    async def handler(topic: str, event: dict[str, int]) -> None:
        nonlocal started
        started += 1
        await anyio.sleep(30)

    dispatcher = _dispatcher(
        stats, shutdown_timeout=30, on_outcome=lambda d, o: outcomes.append(o)
    )
    with anyio.fail_after(10):
        async with dispatcher.running():
            await dispatcher.submit(handler, _delivery(0))
            await dispatcher.submit(handler, _delivery(1))
            await wait_until(lambda: started == 2)
            dispatcher.drain(0)

    assert outcomes == [Outcome.CANCELLED] * 2
    assert stats.handlers_cancelled == 2


async def test_a_job_submitted_during_drain_gets_the_same_deadline() -> None:
    stats = Stats()
    outcomes: list[Outcome] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        await anyio.sleep(30)

    dispatcher = _dispatcher(
        stats, shutdown_timeout=30, on_outcome=lambda d, o: outcomes.append(o)
    )
    with anyio.fail_after(10):
        async with dispatcher.running():
            dispatcher.drain(0.2)
            await dispatcher.submit(handler, _delivery(0))

    assert outcomes == [Outcome.CANCELLED]
    assert stats.handlers_cancelled == 1


async def test_submit_outside_running_raises_and_frees_its_slot() -> None:
    stats = Stats()

    async def handler(topic: str, event: object) -> None:
        pass

    dispatcher = _dispatcher(stats, max_concurrency=1)
    with pytest.raises(RuntimeError, match="not running"):
        await dispatcher.submit(handler, _delivery(0))

    with pytest.raises(RuntimeError, match="not running"):
        await dispatcher.submit(handler, _delivery(1))

    async with dispatcher.running():
        with anyio.fail_after(5):
            await dispatcher.submit(handler, _delivery(2))

    assert stats.events_handled == 1
    assert stats.in_flight == 0


async def test_current_delivery_is_the_delivery_being_handled() -> None:
    stats = Stats()
    seen: list[Delivery] = []

    async def handler(topic: str, event: object) -> None:
        seen.append(current_delivery())

    def sync_handler(topic: str, event: object) -> None:
        seen.append(current_delivery())

    first, second = _delivery(1), _delivery(2)
    dispatcher = _dispatcher(stats)
    async with dispatcher.running():
        await dispatcher.submit(handler, first)
        await dispatcher.submit(sync_handler, second)

    assert sorted(seen, key=lambda d: str(d.event_id)) == [first, second]
    with pytest.raises(LookupError):
        current_delivery()


async def test_a_plain_function_runs_in_a_worker_thread() -> None:
    stats = Stats()
    threads: list[int] = []
    outcomes: list[Outcome] = []

    def handler(topic: str, event: object) -> None:
        threads.append(threading.get_ident())

    dispatcher = _dispatcher(stats, on_outcome=lambda d, o: outcomes.append(o))
    async with dispatcher.running():
        await dispatcher.submit(handler, _delivery(0))

    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    assert outcomes == [Outcome.HANDLED]


async def test_a_failing_plain_function_is_counted_as_failed() -> None:
    stats = Stats()
    outcomes: list[Outcome] = []

    def handler(topic: str, event: object) -> None:
        raise RuntimeError("sync boom")

    dispatcher = _dispatcher(stats, on_outcome=lambda d, o: outcomes.append(o))
    async with dispatcher.running():
        await dispatcher.submit(handler, _delivery(0))

    assert outcomes == [Outcome.FAILED]
    assert stats.handler_errors == 1


def test_delivery_event_id_reads_models_and_dicts() -> None:
    model = ProfileUpdated(profile_id=1, event_id="abc")
    assert Delivery(topic="t", event=model).event_id == "abc"
    assert Delivery(topic="t", event={"event_id": "xyz"}).event_id == "xyz"
    assert Delivery(topic="t", event={"event_id": 5}).event_id is None
    assert Delivery(topic="t", event={}).event_id is None


def test_delivery_log_fields_hold_the_topic_and_the_events_id_and_type() -> None:
    model = ProfileUpdated(profile_id=1, event_id="abc")
    from_model = Delivery(topic="t", event=model)
    from_dict = Delivery(topic="u", event={"event_type": "x", "event_id": 5})

    assert from_model.event_type == "profile_updated"
    assert from_model.log_fields() == {
        "topic": "t",
        "event_id": "abc",
        "event_type": "profile_updated",
    }
    assert from_dict.log_fields() == {"topic": "u", "event_type": "x"}
    assert Delivery(topic="v", event={}).log_fields() == {"topic": "v"}


async def test_failure_and_timeout_records_carry_the_events_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(topic: str, event: ProfileUpdated) -> None:
        if event.profile_id == 1:
            raise ValueError("boom")

        await anyio.sleep(30)

    dispatcher = _dispatcher(Stats(), handler_timeout=0.2)
    with caplog.at_level(logging.ERROR, logger="redis_events.dispatcher"):
        async with dispatcher.running():
            for n in (1, 2):
                event = ProfileUpdated(profile_id=n, event_id=f"id-{n}")
                await dispatcher.submit(handler, Delivery(topic="p", event=event))

    fields = sorted(
        (vars(r)["topic"], vars(r)["event_id"], vars(r)["event_type"], bool(r.exc_info))
        for r in caplog.records
    )
    assert fields == [
        ("p", "id-1", "profile_updated", True),
        ("p", "id-2", "profile_updated", False),
    ]


def test_stats_as_dict_lists_every_counter_and_the_extras() -> None:
    stats = Stats(events_received=3, handler_errors=1)
    stats.extra["keys_processed"] = 2
    counters = stats.as_dict()
    assert counters["events_received"] == 3
    assert counters["handler_errors"] == 1
    assert counters["keys_processed"] == 2
    assert "extra" not in counters
    assert set(counters) >= {
        "events_handled",
        "handler_timeouts",
        "handlers_cancelled",
        "invalid_events",
        "unrouted_events",
        "reconnects",
        "reconnect_attempts",
        "in_flight",
    }


async def test_a_burst_of_keyed_jobs_keeps_each_keys_order() -> None:
    stats = Stats()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    async def handler(topic: str, event: dict[str, int]) -> None:
        if event["n"] % 5 == 0:
            await anyio.lowlevel.checkpoint()

        seen[event["n"] % 3].append(event["n"])

    dispatcher = _dispatcher(stats, max_concurrency=4)
    async with dispatcher.running():
        for n in range(300):
            await dispatcher.submit(handler, _delivery(n), key=n % 3)

    for key, numbers in seen.items():
        assert numbers == list(range(key, 300, 3))

    assert stats.events_handled == 300
    assert stats.in_flight == 0


async def test_every_call_over_its_timeout_is_cut_and_workers_go_on() -> None:
    stats = Stats()
    outcomes: dict[str, Outcome] = {}

    async def handler(topic: str, event: dict[str, int]) -> None:
        if event["n"] % 2 == 0:
            await anyio.sleep(30)

    dispatcher = _dispatcher(
        stats,
        max_concurrency=2,
        handler_timeout=0.1,
        on_outcome=lambda d, o: outcomes.update({str(d.event_id): o}),
    )
    with anyio.fail_after(10):
        async with dispatcher.running():
            for n in range(8):
                await dispatcher.submit(handler, _delivery(n))

    assert stats.handler_timeouts == 4
    assert stats.events_handled == 4
    assert stats.handlers_cancelled == 0
    assert outcomes == {
        f"e{n}": Outcome.TIMED_OUT if n % 2 == 0 else Outcome.HANDLED for n in range(8)
    }


async def test_a_timeout_still_cuts_a_call_during_the_shutdown_drain() -> None:
    stats = Stats()
    outcomes: list[Outcome] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        await anyio.sleep(30)

    dispatcher = _dispatcher(
        stats,
        handler_timeout=0.2,
        shutdown_timeout=20,
        on_outcome=lambda d, o: outcomes.append(o),
    )
    with anyio.fail_after(10):
        async with dispatcher.running():
            await dispatcher.submit(handler, _delivery(0))

    assert outcomes == [Outcome.TIMED_OUT]
    assert stats.handler_timeouts == 1
    assert stats.handlers_cancelled == 0


async def test_a_timed_out_keyed_job_lets_the_next_of_its_key_run() -> None:
    stats = Stats()
    finished: list[int] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        if event["n"] == 0:
            await anyio.sleep(30)

        finished.append(event["n"])

    dispatcher = _dispatcher(stats, handler_timeout=0.2)
    with anyio.fail_after(10):
        async with dispatcher.running():
            for n in range(3):
                await dispatcher.submit(handler, _delivery(n), key="same")

    assert finished == [1, 2]
    assert stats.handler_timeouts == 1
    assert stats.events_handled == 2


async def test_backpressure_holds_while_quick_jobs_are_queued() -> None:
    stats = Stats()
    gate = anyio.Event()
    submitted = 0

    async def handler(topic: str, event: dict[str, int]) -> None:
        await gate.wait()

    dispatcher = _dispatcher(stats, max_concurrency=5)
    async with dispatcher.running(), anyio.create_task_group() as tg:

        async def submit_all() -> None:
            nonlocal submitted
            for n in range(20):
                await dispatcher.submit(handler, _delivery(n))
                submitted += 1

        tg.start_soon(submit_all)
        await wait_until(lambda: stats.in_flight == 5)
        await anyio.wait_all_tasks_blocked()
        assert submitted == 5
        assert await _room_now(dispatcher) is None
        gate.set()

    assert stats.events_handled == 20
    assert stats.in_flight == 0


async def test_submit_nowait_accepts_while_there_is_room_and_keeps_key_order() -> None:
    stats = Stats()
    gate = anyio.Event()
    order: list[int] = []

    async def handler(topic: str, event: dict[str, int]) -> None:
        await gate.wait()
        order.append(event["n"])

    dispatcher = _dispatcher(stats, max_concurrency=3)
    with pytest.raises(RuntimeError, match="not running"):
        dispatcher.submit_nowait(handler, _delivery(0))

    async with dispatcher.running():
        accepted = [
            dispatcher.submit_nowait(handler, _delivery(n), key="same")
            for n in range(4)
        ]
        assert accepted == [True, True, True, False]
        gate.set()
        await dispatcher.submit(handler, _delivery(3), key="same")

    assert order == [0, 1, 2, 3]
    assert stats.events_handled == 4


async def _room_now(dispatcher: Dispatcher) -> int | None:
    with anyio.move_on_after(0.05):
        return await dispatcher.room()

    return None


def test_new_delivery_sets_every_field_the_dataclass_has() -> None:
    # new_delivery() bypasses the frozen __init__ for speed; a field added to
    # Delivery and not to new_delivery() would be left unset.
    from dataclasses import fields

    from redis_events._delivery import new_delivery

    values = ("t", {"event_id": "e"}, "t*", "1-0", 3, {"traceparent": "00-x"})
    built = new_delivery(*values)

    assert [f.name for f in fields(Delivery)] == [
        "topic",
        "event",
        "pattern",
        "delivery_id",
        "delivery_count",
        "trace_context",
    ]
    assert built == Delivery(*values)
