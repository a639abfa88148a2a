"""One regression test per defect of the break-it review (D1..D20).

Each test is derived from the reviewer's repro script (``/tmp/breakit``),
failed on the code before the fixes (5b168f5) and passes since. The defect
each one guards is in its docstring; the review's repro is named in brackets.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import redis
from pydantic import ValidationError

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    PROFILE_EVENTS_TOPIC,
    ConfigurationError,
    Event,
    EventEncodeError,
    EventProcessor,
    EventPublisher,
    EventRegistry,
    EventSubscriber,
    KeySubmitted,
    PermissionDeniedError,
    ProfileProcessed,
    RedisUnavailableError,
    Settings,
)
from redis_events.config import mask_url
from tests.helpers import client_names, poll_until, pubsub_channels, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from anyio.abc import SocketStream, TaskStatus
    from pydantic import BaseModel

    from tests.redis_server import RedisServer

PROCESSOR = (sys.executable, "-m", "redis_events.processor")
ACL_PASSWORD = "acl-Pa55-word-9f3c"
EXIT_TIMEOUT = 30.0


async def _ignore(topic: str, event: object) -> None:
    """A handler that does nothing."""


def _connections(client: redis.Redis, name: str) -> int:
    return sum(1 for n in client_names(client, name) if n == name)


def _numsub(client: redis.Redis, channel: str) -> int:
    reply: list[tuple[str, int]] = client.pubsub_numsub(channel)  # type: ignore[assignment]  # sync client
    return int(reply[0][1])


def _acl_url(server: RedisServer, *channel_rules: str) -> str:
    """Create user ``u`` that may run any command but use only these channels."""
    admin = server.client()
    try:
        admin.execute_command(  # type: ignore[no-untyped-call]  # untyped upstream
            "ACL",
            "SETUSER",
            "u",
            "on",
            f">{ACL_PASSWORD}",
            "+@all",
            "~*",
            "resetchannels",
            *channel_rules,
        )
    finally:
        admin.close()

    return f"redis://u:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"


def _processor_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "REDIS_URL" and not name.startswith("REDIS_EVENTS_")
    }
    return env | {"PYTHONUNBUFFERED": "1"} | extra


class FlappingProxy:
    """A TCP proxy to Redis that drops each connection once SUBSCRIBE is confirmed.

    Every connection therefore looks successful (handshake done, subscription
    confirmed) and dies at once: a sick server behind a load balancer, or a
    client output-buffer kill loop.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0

    async def serve(self, *, task_status: TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
        except OSError:
            await client.aclose()
            return

        async with client, upstream, anyio.create_task_group() as task_group:
            scope = task_group.cancel_scope
            task_group.start_soon(self._pump, client, upstream, scope, False)
            task_group.start_soon(self._pump, upstream, client, scope, True)

    @staticmethod
    async def _pump(
        source: SocketStream,
        sink: SocketStream,
        scope: anyio.CancelScope,
        drop_after_confirmation: bool,
    ) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
                if drop_after_confirmation and b"subscribe" in chunk:
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

        scope.cancel()


class BlackHole:
    """A TCP listener that accepts connections and never answers: a frozen Redis."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def accepted(self) -> int:
        return len(self._accepted)

    def __enter__(self) -> BlackHole:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        for connection in self._accepted:
            connection.close()

        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue

            self._accepted.append(connection)


@pytest.mark.redis
async def test_d01_subscribe_while_run_is_starting_reaches_redis(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    """D1: subscribe() made while run() connects was never sent [r01]."""
    first, late = f"first-{uid}", f"late-{uid}"
    sub = EventSubscriber(redis_url)
    got: list[object] = []

    async def on_late(topic: str, event: object) -> None:
        got.append(event)

    sub.on(first)(_ignore)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(sub.run)
        # Let run() begin connecting; nothing is confirmed yet.
        await anyio.lowlevel.checkpoint()
        await sub.subscribe(late, on_late)
        await wait_until(lambda: sub.connected, timeout=10)
        assert _numsub(r, late) == 1
        async with EventPublisher(redis_url) as pub:
            assert await pub.publish(late, {"x": 1}) == 1

        await wait_until(lambda: len(got) == 1, timeout=5)
        await sub.stop()

    assert sub.get_stats()["events_handled"] == 1


@pytest.mark.redis
async def test_d02_async_with_subscriber_lets_the_blocks_exception_through(
    redis_url: str, uid: str
) -> None:
    """D2: an error raised in ``async with subscriber:`` came out as a group [r02]."""
    sub = EventSubscriber(redis_url)
    sub.on(f"t-{uid}")(_ignore)
    error = KeyError("user bug")

    with pytest.raises(KeyError) as caught:
        async with sub:
            raise error

    assert caught.value is error
    assert not sub.connected


@pytest.mark.redis
async def test_d03_a_second_concurrent_run_is_refused(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    """D3: two run() calls both connected, each with its own connection [r24 B]."""
    name = f"re-{uid}"
    sub = EventSubscriber(redis_url, client_name=name)
    sub.on(f"t-{uid}")(_ignore)
    refused: list[RuntimeError] = []

    async def runner() -> None:
        try:
            await sub.run()
        except RuntimeError as exc:
            refused.append(exc)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(runner)
        task_group.start_soon(runner)
        try:
            await wait_until(lambda: sub.connected and len(refused) == 1, timeout=5)
            assert _connections(r, f"{name}-sub") == 1
        finally:
            await sub.stop()
            task_group.cancel_scope.cancel()

    assert len(refused) == 1


@pytest.mark.redis
async def test_d04_subscribe_refused_by_acl_raises_and_the_subscriber_goes_on(
    own_redis_server: RedisServer,
) -> None:
    """D4: NOPERM on a runtime subscribe() crashed the whole subscriber [r03]."""
    url = _acl_url(own_redis_server, "&allowed*")
    admin = own_redis_server.client()
    sub = EventSubscriber(url)
    got: list[str] = []

    async def handler(topic: str, event: object) -> None:
        got.append(topic)

    sub.on("allowed_a")(handler)
    try:
        async with sub:
            with pytest.raises(PermissionDeniedError) as refused, anyio.fail_after(10):
                await sub.subscribe("forbidden", handler)

            message = str(refused.value)
            assert "SUBSCRIBE" in message
            assert "forbidden" in message
            assert ACL_PASSWORD not in message
            assert sub.running
            assert sub.connected

            await sub.subscribe("allowed_b", handler)
            assert admin.publish("allowed_a", json.dumps({"n": 1})) == 1
            assert admin.publish("allowed_b", json.dumps({"n": 2})) == 1
            await wait_until(lambda: len(got) == 2, timeout=5)
            assert "forbidden" not in pubsub_channels(admin, "*")
    finally:
        admin.close()

    assert got == ["allowed_a", "allowed_b"]
    assert sub.get_stats()["reconnects"] == 0


@pytest.mark.redis
async def test_d04_run_with_a_refused_channel_raises_permission_denied(
    own_redis_server: RedisServer,
) -> None:
    """D4: run() 'started' on a refused channel, then died with a raw error [r03]."""
    url = _acl_url(own_redis_server, "&allowed*")
    admin = own_redis_server.client()
    sub = EventSubscriber(url)
    sub.on("allowed_a")(_ignore)
    sub.on("forbidden")(_ignore)
    try:
        with pytest.raises(PermissionDeniedError) as refused, anyio.fail_after(10):
            await sub.run()

        assert "SUBSCRIBE" in str(refused.value)
        assert ACL_PASSWORD not in str(refused.value)
        assert not sub.running
        await wait_until(lambda: _connections(admin, "redis-events-sub") == 0)
    finally:
        admin.close()


@pytest.mark.redis
async def test_d05_a_cancelled_error_from_a_handler_is_a_handler_error(
    redis_url: str, uid: str
) -> None:
    """D5: a stray CancelledError from a handler silently stopped run() [r07]."""
    topic = f"t-{uid}"
    sub = EventSubscriber(redis_url)
    calls: list[int] = []

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        calls.append(event["n"])
        if event["n"] == 1:
            raise anyio.get_cancelled_exc_class()

    def called(times: int) -> Callable[[], bool]:
        return lambda: len(calls) == times

    async with anyio.create_task_group() as task_group:
        await task_group.start(sub.run)
        async with EventPublisher(redis_url) as pub:
            for n in range(1, 5):
                assert await pub.publish(topic, {"n": n}) == 1
                await wait_until(called(n), timeout=5)

        await wait_until(lambda: sub.get_stats()["events_handled"] == 3, timeout=5)
        assert sub.running
        await sub.stop()

    stats = sub.get_stats()
    assert calls == [1, 2, 3, 4]
    assert stats["handler_errors"] == 1
    assert stats["events_handled"] == 3


@pytest.mark.redis
def test_d06_cli_bad_topic_exits_2_with_one_line(redis_url: str) -> None:
    """D6: a topic with a space gave a 35-line traceback and exit 1 [r04]."""
    done = subprocess.run(
        [*PROCESSOR, "--redis-url", redis_url, "--topic", "a b"],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        env=_processor_env(),
        check=False,
    )

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert len(lines) == 1, done.stderr
    assert "topic" in lines[0]


@pytest.mark.fault
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_d06_cli_signal_during_start_up_ends_without_a_traceback(
    signum: signal.Signals,
) -> None:
    """D6: a signal while the start-up PING hung killed the CLI mid-trace [r05]."""
    with BlackHole() as frozen:
        process = subprocess.Popen(
            [*PROCESSOR, "--redis-url", f"redis://127.0.0.1:{frozen.port}/0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_processor_env(
                REDIS_EVENTS_SOCKET_CONNECT_TIMEOUT="1",
                REDIS_EVENTS_SOCKET_TIMEOUT="1",
            ),
        )
        try:
            poll_until(lambda: frozen.accepted >= 1 or process.poll() is not None)
            process.send_signal(signum)
            output, _ = process.communicate(timeout=EXIT_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)

    assert frozen.accepted >= 1, output
    assert "Traceback" not in output
    assert process.returncode in (0, 2), output


@pytest.mark.redis
def test_d06_cli_refused_subscription_exits_2_with_one_line(
    own_redis_server: RedisServer,
) -> None:
    """D6: NOPERM on key_submission at start gave an 84-line trace, exit 1 [r04]."""
    url = _acl_url(own_redis_server, "&profile_events", "&processing_results")

    done = subprocess.run(
        [*PROCESSOR, "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        env=_processor_env(),
        check=False,
    )

    output = done.stdout + done.stderr
    errors = [
        line
        for line in output.splitlines()
        if line.startswith("python -m redis_events.processor: error: ")
    ]
    assert "Traceback" not in output, output[-3000:]
    assert done.returncode == 2, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    assert ACL_PASSWORD not in output


@pytest.mark.redis
async def test_d07_async_handlers_behind_plain_wrappers_are_awaited(
    redis_url: str, uid: str
) -> None:
    """D7: a coroutine returned by a sync wrapper was never awaited [r08]."""
    decorated, via_lambda = f"dec-{uid}", f"lam-{uid}"
    sub = EventSubscriber(redis_url)
    bodies: list[int] = []

    def logged(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any) -> Any:
            return function(*args)

        return wrapper

    @sub.on(decorated)
    @logged
    async def handler(topic: str, event: dict[str, Any]) -> None:
        bodies.append(event["n"])

    sub.on(via_lambda)(lambda topic, event: handler(topic, event))
    async with sub, EventPublisher(redis_url) as pub:
        await pub.publish(decorated, {"n": 1})
        await pub.publish(via_lambda, {"n": 2})
        await wait_until(lambda: len(bodies) == 2, timeout=5)

    assert sorted(bodies) == [1, 2]
    assert sub.get_stats()["events_handled"] == 2
    assert sub.get_stats()["handler_errors"] == 0


@pytest.mark.redis
async def test_d08_stop_does_not_wait_for_an_iterator_nobody_reads(
    redis_url: str, uid: str
) -> None:
    """D8: stop() waited shutdown_timeout for an unread subscription() [r09]."""
    topic = f"t-{uid}"
    sub = EventSubscriber(redis_url, shutdown_timeout=2)
    sub.on(f"other-{uid}")(_ignore)
    async with sub:
        async with (
            sub.subscription(topic) as deliveries,
            EventPublisher(redis_url) as pub,
        ):
            await pub.publish(topic, {"n": 1})
            await pub.publish(topic, {"n": 2})
            async for delivery in deliveries:
                assert isinstance(delivery.event, dict)
                assert delivery.event["n"] == 1
                break

            # The second delivery now waits for a loop that no longer reads.
            await wait_until(lambda: sub.get_stats()["in_flight"] == 1, timeout=5)
            await sub.stop()

    stats = sub.get_stats()
    assert stats["handlers_cancelled"] == 0
    assert stats["in_flight"] == 0


@pytest.mark.redis
@pytest.mark.fault
async def test_d09_a_connection_that_dies_at_once_is_reopened_with_backoff(
    own_redis_server: RedisServer,
) -> None:
    """D9: backoff was reset by every 'successful' connect: a tight loop [r19]."""
    proxy = FlappingProxy(own_redis_server.port)
    async with anyio.create_task_group() as task_group:
        port = await task_group.start(proxy.serve)
        sub = EventSubscriber(
            f"redis://127.0.0.1:{port}/0", reconnect_backoff_base=0.25
        )
        sub.on("t")(_ignore)
        with anyio.move_on_after(3):  # the observation window, not a speed limit
            await sub.run()

        task_group.cancel_scope.cancel()

    reconnects = sub.get_stats()["reconnects"]
    assert proxy.connections >= 2, "the proxy never dropped a connection"
    assert 1 <= reconnects <= 15
    assert proxy.connections <= 16


@pytest.mark.redis
async def test_d10_subscribe_from_a_handler_with_every_slot_busy_returns(
    redis_url: str, uid: str
) -> None:
    """D10: subscribe() from the only busy slot waited for itself forever [r10]."""
    topic, new_topic = f"t-{uid}", f"new-{uid}"
    sub = EventSubscriber(
        redis_url, max_concurrency=1, socket_timeout=1, shutdown_timeout=1
    )
    calls: list[int] = []
    outcome: list[str] = []

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        calls.append(event["n"])
        if event["n"] != 1:
            return

        # Event 2 is routed and waits for this handler's slot.
        await wait_until(lambda: sub.get_stats()["events_received"] == 2, timeout=5)
        with anyio.move_on_after(8):  # turns the old deadlock into a failure
            await sub.subscribe(new_topic, handler)
            outcome.append("returned")
            return

        outcome.append("still waiting")

    async with sub, EventPublisher(redis_url) as pub:
        await pub.publish(topic, {"n": 1})
        await pub.publish(topic, {"n": 2})
        await wait_until(lambda: len(calls) == 2, timeout=15)
        assert outcome == ["returned"]
        assert await pub.publish(new_topic, {"n": 3}) == 1
        await wait_until(lambda: len(calls) == 3, timeout=5)

    assert calls == [1, 2, 3]


@pytest.mark.redis
async def test_d11_pattern_matched_channel_names_are_checked(
    redis_server: RedisServer, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    """D11: any channel name a pattern matched reached handlers and logs [r11]."""
    prefix = f"ev-{uid}"
    sentinel = f"{prefix}-ok"
    sub = EventSubscriber(redis_server.url)
    topics: list[str] = []

    @sub.on_pattern(f"{prefix}*")
    async def handler(topic: str, event: object) -> None:
        topics.append(topic)

    caplog.set_level(logging.INFO, logger="redis_events")
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5)
    name = prefix.encode()
    try:
        async with sub:
            raw.publish(name + b"\n2026-01-01 CRITICAL redis_events: forged", b"x")
            raw.publish(name + b"\x1b[2J", b'{"a": 1}')
            raw.publish(name + b"\xff\xfe", b'{"a": 2}')
            raw.publish(name + b"x" * 100_000, b"not json")
            raw.publish(sentinel, b'{"a": 3}')
            await wait_until(lambda: sentinel in topics, timeout=5)
    finally:
        raw.close()

    assert topics == [sentinel]
    assert sub.get_stats()["invalid_events"] == 4
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message
        assert "\x1b" not in message
        assert len(message) < 2000


@pytest.mark.redis
@pytest.mark.fault
async def test_d12_close_waits_for_publishes_in_flight_and_leaks_nothing(
    own_redis_server: RedisServer,
) -> None:
    """D12: close() mid-publish left pooled connections open for good [r12]."""
    pub = EventPublisher(
        own_redis_server.url,
        max_connections=4,
        socket_timeout=1,
        publish_retry_timeout=2,
    )
    await pub.connect()
    outcomes: list[str] = []

    async def publish(n: int) -> None:
        try:
            await pub.publish("t", {"n": n})
        except RedisUnavailableError:
            outcomes.append("unavailable")
        else:
            outcomes.append("published")

    admin = own_redis_server.client()
    # The collector would close orphaned sockets in __del__ and so hide a
    # leak; only close() may end these connections here.
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            own_redis_server.freeze()
            try:
                async with anyio.create_task_group() as task_group:
                    for n in range(20):
                        task_group.start_soon(publish, n)

                    await anyio.wait_all_tasks_blocked()
                    await pub.close()
                    own_redis_server.thaw()
            finally:
                own_redis_server.thaw()

            await wait_until(lambda: _connections(admin, "redis-events-pub") == 0)
            gc.enable()
            gc.collect()
    finally:
        gc.enable()
        admin.close()

    assert len(outcomes) == 20
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


class Audit(Event):
    """A user's own event that embeds a key submission."""

    event_type: str = "audit"
    submitted: KeySubmitted


def test_d13_a_secret_is_revealed_only_for_its_own_topics_model() -> None:
    """D13: key_value was written in clear on any topic, nested or not [r15]."""
    secret = "TOP-SECRET-123"
    registry = EventRegistry()
    registry.register("audit_log", Audit)
    submission = KeySubmitted(key_value=secret, token_name="tok")

    def encoded(topic: str, event: BaseModel) -> bytes:
        try:
            return registry.encode(topic, event)
        except EventEncodeError:
            return b""

    assert secret.encode() in registry.encode(KEY_SUBMISSION_TOPIC, submission)
    assert secret.encode() not in encoded("no_model_topic", submission)
    assert secret.encode() not in encoded("audit_log", submission)
    assert secret.encode() not in encoded(PROFILE_EVENTS_TOPIC, submission)
    assert secret.encode() not in encoded("audit_log", Audit(submitted=submission))


@pytest.mark.parametrize("password", ["2024/Zm9vYmFy", "8080#s3cr3t", "6379?x=secret"])
def test_d14_a_password_with_unescaped_separators_never_shows(password: str) -> None:
    """D14: '/', '#' or '?' in a password defeated the URL masking [r17]."""
    url = f"redis://default:{password}@127.0.0.1:1/0"

    try:
        shown = repr(Settings(redis_url=url))
    except (ValidationError, ConfigurationError) as exc:
        shown = str(exc)

    assert password not in shown
    assert password not in mask_url(url)


@pytest.mark.redis
async def test_d15_two_identical_publishes_are_never_merged(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    """D15: moving a handler from channel to pattern merged two publishes [r22]."""
    channel, pattern = f"cache-{uid}.invalidate", f"cache-{uid}.*"
    payload = json.dumps({"all": True})
    sub = EventSubscriber(redis_url)
    calls: list[object] = []

    async def handler(topic: str, event: object) -> None:
        calls.append(event)

    sub.on(channel)(handler)
    async with sub:
        r.publish(channel, payload)
        await wait_until(lambda: len(calls) == 1, timeout=5)
        await sub.psubscribe(pattern, handler)
        await sub.unsubscribe(channel, handler)
        r.publish(channel, payload)
        await wait_until(lambda: len(calls) == 2, timeout=5)

    assert sub.get_stats()["events_received"] == 2
    assert sub.get_stats()["events_handled"] == 2


@pytest.mark.redis
async def test_d16_stop_and_abort_before_run_do_not_poison_the_next_run(
    redis_url: str, uid: str
) -> None:
    """D16: stop() on an idle subscriber made the next run() end at once [r24 A]."""
    topic = f"t-{uid}"
    sub = EventSubscriber(redis_url)
    got: list[object] = []

    async def handler(topic: str, event: object) -> None:
        got.append(event)

    sub.on(topic)(handler)
    await sub.stop()
    sub.abort()
    async with anyio.create_task_group() as task_group:
        await task_group.start(sub.run)
        async with EventPublisher(redis_url) as pub:
            assert await pub.publish(topic, {"n": 1}) == 1

        await wait_until(lambda: len(got) == 1, timeout=5)
        assert sub.connected
        await sub.stop()

    assert sub.get_stats()["events_handled"] == 1


@pytest.mark.redis
async def test_d17_stop_from_another_subscribers_handler_waits_for_the_end(
    redis_url: str, uid: str
) -> None:
    """D17: b.stop() inside a's handler returned before b had finished [r25]."""
    slow_topic, shutdown_topic = f"slow-{uid}", f"shutdown-{uid}"
    b = EventSubscriber(redis_url, shutdown_timeout=5)
    a = EventSubscriber(redis_url)
    b_done = anyio.Event()
    slow_finished: list[bool] = []
    seen: dict[str, bool] = {}

    @b.on(slow_topic)
    async def slow(topic: str, event: object) -> None:
        await anyio.sleep(0.5)
        slow_finished.append(True)

    @a.on(shutdown_topic)
    async def on_shutdown(topic: str, event: object) -> None:
        await b.stop()
        seen["b_finished"] = b_done.is_set()
        seen["slow_finished"] = bool(slow_finished)

    async def run_b(*, task_status: TaskStatus[None]) -> None:
        await b.run(task_status=task_status)
        b_done.set()

    async with anyio.create_task_group() as task_group:
        await task_group.start(a.run)
        await task_group.start(run_b)
        async with EventPublisher(redis_url) as pub:
            await pub.publish(slow_topic, {})
            await wait_until(lambda: b.get_stats()["in_flight"] == 1, timeout=5)
            await pub.publish(shutdown_topic, {})

        await wait_until(lambda: "b_finished" in seen, timeout=10)
        await a.stop()
        await b_done.wait()

    assert seen == {"b_finished": True, "slow_finished": True}
    assert b.get_stats()["handlers_cancelled"] == 0


@pytest.mark.redis
@pytest.mark.fault
async def test_d18_subscribe_in_flight_when_the_connection_is_lost_raises(
    own_redis_server: RedisServer,
) -> None:
    """D18: a lost connection made a pending subscribe() report success [r28]."""
    sub = EventSubscriber(
        own_redis_server.url,
        socket_timeout=3,
        socket_connect_timeout=1,
        health_check_interval=1,
    )
    sub.on("a")(_ignore)
    admin = own_redis_server.client()
    try:
        async with sub:
            own_redis_server.freeze()
            try:
                with pytest.raises(RedisUnavailableError), anyio.fail_after(15):
                    await sub.subscribe("b", _ignore)
            finally:
                own_redis_server.thaw()

            # It stays registered and is restored once Redis answers again.
            await wait_until(lambda: _numsub(admin, "b") == 1, timeout=15)
    finally:
        admin.close()


@pytest.mark.redis
async def test_d19_events_buffered_for_a_dropped_channel_are_counted_unrouted(
    redis_url: str, uid: str
) -> None:
    """D19: frames that reached no handler vanished from every counter [r29]."""
    topic, other = f"t-{uid}", f"other-{uid}"
    sub = EventSubscriber(redis_url, max_concurrency=1)
    gate = anyio.Event()
    calls: list[int] = []

    @sub.on(topic)
    async def slow(topic: str, event: dict[str, Any]) -> None:
        calls.append(event["i"])
        await gate.wait()

    sub.on(other)(_ignore)
    async with sub, EventPublisher(redis_url) as pub:
        for i in range(5):
            await pub.publish(topic, {"i": i})

        await pub.publish(other, {"sentinel": True})
        await wait_until(lambda: len(calls) == 1, timeout=5)
        await sub.unsubscribe(topic)
        gate.set()
        await wait_until(lambda: sub.get_stats()["events_received"] == 6, timeout=5)
        await wait_until(lambda: sub.get_stats()["in_flight"] == 0, timeout=5)

    stats = sub.get_stats()
    assert stats["unrouted_events"] >= 3
    assert stats["events_handled"] + stats["unrouted_events"] == 6
    assert stats["events_handled"] == len(calls) + 1


@pytest.mark.redis
async def test_d20_the_processor_handles_each_profiles_events_in_order(
    own_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D20: with concurrency, a profile's delete could overtake its create."""
    processor = EventProcessor(own_redis_server.url, max_concurrency=8)
    publish = processor.publisher.publish
    # The earlier an event, the longer its result takes, so only an ordering
    # guarantee keeps one profile's results in order.
    delays = {"created": 0.4, "updated": 0.2, "deleted": 0.0}
    results: list[tuple[str, str]] = []

    async def slow_publish(topic: str, event: Any) -> int | str:
        if isinstance(event, ProfileProcessed):
            await anyio.sleep(delays[event.result.action])
            results.append((str(event.result.profile_id), event.result.action))

        return await publish(topic, event)

    monkeypatch.setattr(processor.publisher, "publish", slow_publish)
    async with anyio.create_task_group() as task_group:
        await task_group.start(processor.run)
        async with EventPublisher(own_redis_server.url) as pub:
            for profile in ("p1", "p2"):
                await pub.publish_profile_created(profile, {"v": 1})
                await pub.publish_profile_updated(profile, {"v": 2})
                await pub.publish_profile_deleted(profile)

        await wait_until(lambda: len(results) == 6, timeout=10)
        await processor.stop()

    for profile in ("p1", "p2"):
        actions = [action for pid, action in results if pid == profile]
        assert actions == ["created", "updated", "deleted"], results
