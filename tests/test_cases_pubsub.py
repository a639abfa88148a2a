"""Cases BR-07, BR-08 and BR-17 (see /work/shared/cases) as tests of redis-events."""

from __future__ import annotations

import collections
import gc
import io
import json
import logging
import os
import pathlib
import pickle
import sys
import tokenize
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import redis_events
from redis_events import (
    EventPublisher,
    EventRegistry,
    EventSubscriber,
    KeyProcessed,
    KeySubmitted,
    ProfileUpdated,
    current_delivery,
)
from redis_events.events import ProfileEvent
from redis_events.exceptions import EventDecodeError
from tests.helpers import client_names, pubsub_channels, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    import redis

    from redis_events.dispatcher import Handler
    from tests.redis_server import RedisServer

PACKAGE_DIR = pathlib.Path(redis_events.__file__).parent


# BR-07: subscribe/unsubscribe churn leaks connections until the pool is empty.

ROUNDS = 500
POOL_MAX = 10


class _Churn:
    """The state of one BR-07 run: deliveries and connection samples."""

    def __init__(self, r: redis.Redis, name: str) -> None:
        self.r = r
        self.name = name
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.arrived: dict[str, anyio.Event] = {}
        self.peak = 0
        self.samples = 0
        # Closed subscribers are kept alive until the end, so a connection
        # they failed to close is counted rather than closed by the GC.
        self.closed_subscribers: list[EventSubscriber] = []

    def sample(self) -> int:
        count = len(client_names(self.r, self.name))
        self.peak = max(self.peak, count)
        self.samples += 1
        return count

    async def on_session(self, topic: str, event: object) -> None:
        self.deliveries[topic] += 1
        self.arrived[topic].set()


async def _round_with_handler(
    churn: _Churn, sub: EventSubscriber, pub: EventPublisher, topic: str
) -> None:
    churn.arrived[topic] = anyio.Event()
    await sub.subscribe(topic, churn.on_session)
    assert await pub.publish(topic, {"topic": topic}) == 1
    with anyio.fail_after(10):
        await churn.arrived[topic].wait()

    await sub.unsubscribe(topic)


async def _round_with_iterator(
    churn: _Churn, sub: EventSubscriber, pub: EventPublisher, topic: str
) -> None:
    async with sub.subscription(topic) as deliveries:
        assert await pub.publish(topic, {"topic": topic}) == 1
        with anyio.fail_after(10):
            delivery = await deliveries.receive()

    churn.deliveries[delivery.topic] += 1


async def _round_with_extra_subscriber(
    churn: _Churn, redis_url: str, pub: EventPublisher, topic: str
) -> None:
    churn.arrived[topic] = anyio.Event()
    extra = EventSubscriber(redis_url, client_name=churn.name, max_connections=POOL_MAX)
    extra.on(topic)(churn.on_session)
    churn.closed_subscribers.append(extra)
    async with extra:
        churn.sample()
        assert await pub.publish(topic, {"topic": topic}) == 1
        with anyio.fail_after(10):
            await churn.arrived[topic].wait()


async def _abandoned_wait(sub: EventSubscriber, topic: str) -> None:
    with anyio.move_on_after(0.05) as scope:
        async with sub.subscription(topic) as deliveries:
            await deliveries.receive()

    assert scope.cancelled_caught


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.redis
async def test_br07_churn_leaks_no_connection_descriptor_or_channel(
    redis_url: str, uid: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"re-{uid}"
    key_topic = f"{uid}:key_submission"
    churn = _Churn(r, name)
    keys: list[KeySubmitted] = []
    caplog.set_level(logging.WARNING, logger="redis_events")

    async def on_key(topic: str, event: KeySubmitted) -> None:
        keys.append(event)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sub = EventSubscriber(redis_url, client_name=name, max_connections=POOL_MAX)
        sub.registry.register(key_topic, KeySubmitted)
        sub.on(key_topic)(on_key)
        pub = EventPublisher(redis_url, client_name=name, max_connections=POOL_MAX)
        pub.registry.register(key_topic, KeySubmitted)
        async with sub, pub:
            gc.collect()
            baseline = churn.sample()
            baseline_fds = _open_fds()
            for i in range(ROUNDS):
                topic = f"session:{uid}:{i}"
                if i % 2:
                    await _round_with_iterator(churn, sub, pub, topic)
                else:
                    await _round_with_handler(churn, sub, pub, topic)

                if (i + 1) % 50 == 0:
                    extra_topic = f"session:{uid}:extra:{i}"
                    await _round_with_extra_subscriber(
                        churn, redis_url, pub, extra_topic
                    )

                if (i + 1) % 100 == 0:
                    await _abandoned_wait(sub, f"session:never:{uid}:{i}")

                if i % 5 == 0:
                    churn.sample()

            for n in range(20):
                await pub.publish(
                    key_topic, KeySubmitted(key_value=f"k{n}", token_name=f"t{n}")
                )

            await wait_until(lambda: len(keys) == 20)
            gc.collect()
            end = churn.sample()
            end_fds = _open_fds()
            await wait_until(lambda: not pubsub_channels(r, f"session:{uid}:*"))
            await wait_until(lambda: not pubsub_channels(r, f"session:never:{uid}:*"))

        await wait_until(lambda: not client_names(r, name))
        sub_stats = sub.get_stats()
        del sub, pub
        churn.closed_subscribers.clear()
        gc.collect()

    sessions = [t for t in churn.deliveries if ":extra:" not in t]
    extras = [t for t in churn.deliveries if ":extra:" in t]
    assert len(sessions) == ROUNDS
    assert len(extras) == ROUNDS // 50
    assert set(churn.deliveries.values()) == {1}
    assert len({k.event_id for k in keys}) == 20
    assert churn.samples >= ROUNDS // 5
    assert churn.peak <= POOL_MAX + 2, f"peak {churn.peak} connections"
    assert end <= baseline + 2, f"{end} connections at the end, {baseline} before"
    assert end_fds - baseline_fds <= 5, f"{end_fds - baseline_fds} more fds"
    resource_warnings = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert resource_warnings == []
    assert [rec.getMessage() for rec in caplog.records] == []
    assert sub_stats["reconnects"] == 0
    assert sub_stats["invalid_events"] == 0


# BR-08: overlapping channel and pattern subscriptions, and order under load.

PROFILE_EVENTS = 200
NOISE_TASKS = 4


@pytest.mark.redis
async def test_br08_overlap_delivers_once_per_handler_and_in_order(
    redis_url: str, uid: str
) -> None:
    channel = f"{uid}:profile_events"
    pattern = f"{uid}:profile_*"
    sub = EventSubscriber(redis_url)
    sub.registry.register(channel, ProfileEvent)
    seen: dict[str, list[tuple[int, str, str | None]]] = {
        "h1": [],
        "h2": [],
        "h3": [],
    }

    def recorder(key: str) -> Handler:
        async def handler(topic: str, event: object) -> None:
            assert isinstance(event, ProfileUpdated)
            delivery = current_delivery()
            seen[key].append(
                (event.profile_data["n"], delivery.topic, delivery.pattern)
            )

        return handler

    h1, h2, h3 = recorder("h1"), recorder("h2"), recorder("h3")
    sub.on(channel)(h1)
    sub.on_pattern(pattern)(h2)
    sub.on(channel)(h3)
    sub.on_pattern(pattern)(h3)
    noise = [0] * NOISE_TASKS

    async def make_noise(pub: EventPublisher, k: int) -> None:
        while True:
            await pub.publish(f"{uid}:noise:{k}", {"k": k, "i": noise[k]})
            noise[k] += 1

    # One more event after the 200 marks the end: Redis delivers in order, so
    # once every handler saw it, any duplicate of an earlier one would have
    # been seen too.
    last = PROFILE_EVENTS + 1
    async with sub, EventPublisher(redis_url, max_connections=8) as pub:
        pub.registry.register(channel, ProfileEvent)
        async with anyio.create_task_group() as tg:
            for k in range(NOISE_TASKS):
                tg.start_soon(make_noise, pub, k)

            await wait_until(lambda: all(noise))
            for n in range(1, last + 1):
                event = ProfileUpdated(profile_id=f"p-{uid}", profile_data={"n": n})
                assert await pub.publish(channel, event) == 2

            await wait_until(
                lambda: all(s and s[-1][0] == last for s in seen.values()), timeout=30
            )
            tg.cancel_scope.cancel()

    numbers = list(range(1, last + 1))
    assert [n for n, _, _ in seen["h1"]] == numbers
    assert [n for n, _, _ in seen["h2"]] == numbers
    assert [n for n, _, _ in seen["h3"]] == numbers
    assert {(t, p) for _, t, p in seen["h1"]} == {(channel, None)}
    assert {(t, p) for _, t, p in seen["h2"]} == {(channel, pattern)}
    # Documented: once per handler; the channel subscription, reported
    # first by Redis, is the one H3 sees.
    assert {(t, p) for _, t, p in seen["h3"]} == {(channel, None)}
    stats = sub.get_stats()
    assert stats["events_received"] == last
    assert stats["events_handled"] == 3 * last
    assert stats["invalid_events"] == 0
    assert all(count > 0 for count in noise)


# BR-17: subscribers that unpickle payloads run an attacker's code.


class _Exploit:
    """Pickles to bytes whose unpickling creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


def _pickle_bomb(path: Path) -> bytes:
    return pickle.dumps(_Exploit(path))


def test_br17_the_pickle_payload_really_runs_code_when_unpickled(
    tmp_path: Path,
) -> None:
    # Proves the payload used below is a working exploit, so the tests that
    # expect its marker to stay absent can fail.
    marker = tmp_path / "control.pwned"
    pickle.loads(_pickle_bomb(marker))
    assert marker.exists()


@pytest.mark.parametrize("topic", ["processing_results", "no_model_topic"])
def test_br17_the_codec_rejects_pickle_bytes(topic: str, tmp_path: Path) -> None:
    marker = tmp_path / f"{uuid.uuid4().hex}.pwned"
    with pytest.raises(EventDecodeError):
        EventRegistry().decode(topic, _pickle_bomb(marker))

    assert not marker.exists()


def _type_hint_module(directory: Path, module: str, marker: Path) -> None:
    source = f"open({str(marker)!r}, 'w').close()\n\nclass Evil:\n    pass\n"
    (directory / f"{module}.py").write_text(source)


@pytest.mark.redis
@pytest.mark.fault
async def test_br17_pickle_on_processing_results_is_rejected_and_never_run(
    own_redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = redis_events.PROCESSING_RESULTS_TOPIC
    marker = pathlib.Path("/tmp") / f"{uuid.uuid4().hex}.pwned"
    module = f"pwn_{uuid.uuid4().hex[:10]}"
    import_marker = tmp_path / "imported.pwned"
    _type_hint_module(tmp_path, module, import_marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    sub = EventSubscriber(own_redis_server.url)
    results: list[object] = []

    @sub.on(topic)
    async def handler(topic: str, event: object) -> None:
        results.append(event)

    hinted = {
        "event_type": "key_processed",
        "original_event": {"token_name": "t"},
        "result": {"valid": True, "length": 3, "token_name": "t"},
        "__class__": f"{module}.Evil",
        "$type": f"{module}.Evil, {module}",
        "py/object": f"{module}.Evil",
        "__reduce__": [f"{module}.Evil", []],
    }
    r = own_redis_server.client()
    try:
        async with sub:
            assert r.publish(topic, _pickle_bomb(marker)) == 1
            assert r.publish(topic, json.dumps(hinted)) == 1
            await wait_until(lambda: len(results) == 1)
            # The case's 3 s: long enough for any deferred unpickling.
            for _ in range(30):
                if marker.exists():
                    break

                await anyio.sleep(0.1)

        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
        r.close()

    stats = sub.get_stats()
    assert stats["invalid_events"] == 1
    assert stats["events_handled"] == 1
    # Keys that look like type hints are ignored: the documented policy of
    # the event models is extra="ignore", and nothing is imported.
    assert KeyProcessed.model_config.get("extra") == "ignore"
    (event,) = results
    assert type(event) is KeyProcessed
    assert event.model_extra is None
    dumped = event.model_dump()
    assert not {"__class__", "$type", "py/object", "__reduce__"} & set(dumped)
    assert not hasattr(event, "$type")
    assert not hasattr(event, "py/object")
    assert module not in sys.modules
    assert not import_marker.exists()


_FORBIDDEN_NAMES = frozenset(
    {
        "pickle",
        "_pickle",
        "cPickle",
        "cloudpickle",
        "dill",
        "jsonpickle",
        "marshal",
        "shelve",
        "import_module",
        "__import__",
    }
)
_FORBIDDEN_CALLS = frozenset({"eval", "exec", "compile"})
_UNSAFE_YAML = frozenset({"load", "load_all", "unsafe_load", "full_load"})


def _unsafe_code(source: str) -> list[str]:
    """Return the dangerous names used by code (not docstrings or comments)."""
    tokens = [
        tok
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type in (tokenize.NAME, tokenize.OP)
    ]
    found = []
    for index, tok in enumerate(tokens):
        before = tokens[index - 1].string if index else ""
        after = tokens[index + 1].string if index + 1 < len(tokens) else ""
        if tok.type != tokenize.NAME:
            continue

        if tok.string in _FORBIDDEN_NAMES:
            found.append(f"{tok.start[0]}: {tok.string}")
        elif tok.string in _FORBIDDEN_CALLS and before != "." and after == "(":
            found.append(f"{tok.start[0]}: {tok.string}(")
        elif tok.string == "yaml" and after == ".":
            attribute = tokens[index + 2].string if index + 2 < len(tokens) else ""
            if attribute in _UNSAFE_YAML:
                found.append(f"{tok.start[0]}: yaml.{attribute}")

    return found


def test_br17_the_source_check_finds_unsafe_decoding() -> None:
    bad = (
        "import pickle\n"
        "import yaml\n"
        "def f(b):\n"
        "    x = pickle.loads(b)\n"
        "    y = eval(b)\n"
        "    exec(b)\n"
        "    z = yaml.load(b)\n"
        "    return marshal.loads(b)\n"
    )
    assert len(_unsafe_code(bad)) == 6
    harmless = (
        '"""We never use pickle or eval(...)."""\n# no exec( here\nre.compile("x")\n'
    )
    assert _unsafe_code(harmless) == []


def test_br17_no_decode_path_can_run_code() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 10
    found = {
        str(path.relative_to(PACKAGE_DIR)): hits
        for path in files
        if (hits := _unsafe_code(path.read_text()))
    }
    assert found == {}
