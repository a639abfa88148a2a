"""Submitted keys and Redis passwords never leak, on either transport.

One full flow per transport against a redis-server that requires a password:
the processor and a publisher handle a valid key, an invalid key, a profile
event and two malformed key events (dead-lettered on streams), and the
library is made to raise each of its errors with a secret at hand. Every
logger runs at DEBUG. Then every captured byte is searched for each secret:
log records (formatted, with their arguments, extras and tracebacks), the
process's stdout and stderr (also of the command line), everything Redis
holds or sent afterwards, reprs and exception messages with their chains.

Each secret has a random hex core, so a leak is found in any encoding that
keeps it (quoted, JSON, in a URL). Two places carry a key on purpose and are
left out, exactly: the ``key_submission`` channel or stream (the wire the key
travels on) and the ``data`` field of ``key_submission``'s dead letters (the
original entry, kept for reprocessing). The test checks that the secrets are
really there, so that the search is known to work.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import sys
import traceback
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import pytest
import redis

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    PROCESSING_RESULTS_TOPIC,
    PROFILE_EVENTS_TOPIC,
    ConfigurationError,
    EventEncodeError,
    EventProcessor,
    EventPublisher,
    EventSubscriber,
    EventTooLargeError,
    KeySubmitted,
    PermissionDeniedError,
    RedisUnavailableError,
    Settings,
    current_delivery,
)
from redis_events._keys import dead_letter_key, stream_key
from redis_events._log_format import json_formatter
from tests.helpers import RawSubscriber, poll_until, wait_until
from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.redis

CORES = {
    name: secrets.token_hex(12)
    for name in (
        "valid key",
        "invalid key",
        "malformed key",
        "large key",
        "password",
        "wrong password",
    )
}
VALID_KEY = f"valid-{CORES['valid key']}"
INVALID_KEY = f"not a valid key: {CORES['invalid key']}!"
MALFORMED_KEY = f"malformed-{CORES['malformed key']}"
LARGE_KEY = f"large-{CORES['large key']}-" + "x" * 300
# Characters that must be percent-encoded in a URL, around the core.
PASSWORD = f"pw:{CORES['password']}@/?#"
WRONG_PASSWORD = f"wrong:{CORES['wrong password']}"
# Two malformed key events: no token_name, and a key_value of the wrong type.
MALFORMED_EVENTS = (
    json.dumps({"event_type": "key_submitted", "key_value": MALFORMED_KEY}),
    json.dumps(
        {"event_type": "key_submitted", "key_value": [MALFORMED_KEY], "token_name": 1}
    ),
)
FAST: dict[str, Any] = {
    "block_seconds": 0.3,
    "claim_interval": 0.3,
    "retry_backoff": 0.05,
    "max_deliveries": 2,
}


class PasswordRedisServer(RedisServer):
    """A redis-server whose default user needs ``PASSWORD``."""

    def __init__(self, directory: Any) -> None:
        args = ("--save", "", "--appendonly", "no", "--requirepass", PASSWORD)
        super().__init__(directory, args=args)

    def client(self, **options: object) -> redis.Redis:
        """Return a client that logs in with ``PASSWORD``.

        It speaks RESP2: redis-py logs RESP3 pub/sub pushes at DEBUG, and the
        test's own tap on the wire must not log what it reads.
        """
        return super().client(password=PASSWORD, protocol=2, **options)


class LogCapture(logging.Handler):
    """Keep every record: as text and as JSON (with traceback), and its attributes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        self.json = json_formatter()
        self.chunks: list[str] = []
        self.levels: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the formatted record and the repr of all its attributes."""
        self.chunks.append(self.format(record))
        self.chunks.append(self.json.format(record))
        self.chunks.append(repr(vars(record)))
        self.levels.add(record.levelno)

    @property
    def text(self) -> str:
        """Everything captured so far."""
        return "\n".join(self.chunks)


class RecordingProcessor(EventProcessor):
    """The processor, keeping what a user's own handler code would print."""

    def __init__(self, *args: Any, **options: Any) -> None:
        """Configure as ``EventProcessor`` does."""
        super().__init__(*args, **options)
        self.seen: list[str] = []

    async def handle_key_submission(self, topic: str, event: object) -> None:
        """Record the delivery and the event, then process it as usual."""
        self.seen.append(repr(current_delivery()))
        self.seen += [repr(event), str(event)]
        if isinstance(event, KeySubmitted):
            self.seen += [event.model_dump_json(), repr(event.model_dump())]

        await super().handle_key_submission(topic, event)


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that requires ``PASSWORD``."""
    server = PasswordRedisServer(tmp_path_factory.mktemp("redis-secrets")).start()
    yield server
    server.stop()


@pytest.fixture
def admin(secret_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the empty password-protected server."""
    client = secret_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def debug_log() -> Iterator[LogCapture]:
    """Every logger at DEBUG, every record kept; levels restored afterwards."""
    # redis-py sets up its "push_response" logger (level INFO, with its own
    # stderr handler) when the first PubSub is made; make one now, so that
    # this logger exists and is set to DEBUG below like every other one.
    redis.Redis(protocol=2).pubsub().close()
    root = logging.getLogger()
    loggers = [root] + [
        item
        for item in logging.root.manager.loggerDict.values()
        if isinstance(item, logging.Logger)
    ]
    levels = {item: item.level for item in loggers}
    capture = LogCapture()
    # Loggers that do not propagate get the handler themselves.
    extra = [item for item in loggers if item is not root and not item.propagate]
    disabled = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    for item in loggers:
        item.setLevel(logging.DEBUG)

    for item in [root, *extra]:
        item.addHandler(capture)

    yield capture
    for item in [root, *extra]:
        item.removeHandler(capture)

    for item, level in levels.items():
        item.setLevel(level)

    logging.disable(disabled)


def url_with(port: int, password: str) -> str:
    """Return the URL of the default user with ``password`` on ``port``."""
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


def described(exc: BaseException) -> list[str]:
    """Return an error's str, repr and full traceback with its chain."""
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


async def provoke_errors(server: RedisServer, transport: str) -> list[BaseException]:
    """Make the library raise each of its errors with a secret at hand."""
    url = url_with(server.port, PASSWORD)
    errors: list[BaseException] = []
    dead_port_url = url_with(free_port(), PASSWORD)
    wrong_url = url_with(server.port, WRONG_PASSWORD)
    large = EventPublisher(url, transport=transport, max_event_bytes=256)
    plain = EventPublisher(url, transport=transport)
    unreachable = EventPublisher(
        dead_port_url, transport=transport, publish_retry_timeout=0.2
    )
    refusing = EventPublisher(wrong_url, transport=transport)
    attempts: list[tuple[type[BaseException], Callable[[], Awaitable[object]]]] = [
        (EventTooLargeError, lambda: large.publish_key_submitted(LARGE_KEY, "big")),
        # A key event without token_name does not fit its model.
        (
            EventEncodeError,
            lambda: plain.publish(
                KEY_SUBMISSION_TOPIC,
                {"event_type": "key_submitted", "key_value": VALID_KEY},
            ),
        ),
        (
            RedisUnavailableError,
            lambda: unreachable.publish_key_submitted(VALID_KEY, "unsent"),
        ),
        (PermissionDeniedError, lambda: refusing.publish_key_submitted(VALID_KEY, "x")),
    ]
    for expected, attempt in attempts:
        with pytest.raises(expected) as caught:
            await attempt()

        errors.append(caught.value)

    for pub in (large, plain, unreachable, refusing):
        await pub.close()

    sub = EventSubscriber(wrong_url, transport=transport)

    @sub.on(KEY_SUBMISSION_TOPIC)
    async def never(topic: str, event: object) -> None:
        raise AssertionError("the subscriber cannot log in")

    with pytest.raises(PermissionDeniedError) as refused:
        async with sub:
            pass

    errors.append(refused.value)
    bad_port_url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:99999/0"
    invalid_settings: list[tuple[str, dict[str, Any]]] = [
        (url, {"max_connections": 0}),
        (bad_port_url, {}),
    ]
    for bad_url, options in invalid_settings:
        with pytest.raises(ConfigurationError) as invalid:
            Settings.from_arguments(bad_url, **options)

        errors.append(invalid.value)

    return errors


def run_cli_against_a_closed_port() -> int:
    """Run the processor's command line at DEBUG against nothing; return its code."""
    command = [sys.executable, "-m", "redis_events.processor"]
    command += ["--redis-url", url_with(free_port(), PASSWORD), "--log-level", "DEBUG"]
    # Output goes to this process's stdout and stderr, which capfd reads.
    done = subprocess.run(command, check=False, timeout=60)
    return done.returncode


def redis_contents(admin: redis.Redis) -> tuple[dict[str, str], list[str]]:
    """Return every key's contents as text, and the parts left out on purpose.

    Left out: the ``key_submission`` stream (the wire) and the ``data`` field
    of its dead letters (the original entry, kept for reprocessing).
    """
    wire_key = stream_key(KEY_SUBMISSION_TOPIC)
    dead_key = dead_letter_key(KEY_SUBMISSION_TOPIC)
    contents: dict[str, str] = {}
    left_out: list[str] = []
    for key in sorted(str(k) for k in admin.scan_iter("*")):
        assert admin.type(key) == "stream", key
        entries: Any = admin.xrange(key)
        for entry_id, fields in entries:
            if key == wire_key:
                left_out.append(json.dumps(fields))
                continue

            if key == dead_key:
                left_out.append(fields.pop("data", ""))

            contents[f"{key} {entry_id}"] = json.dumps(fields)

    return contents, left_out


def leaks(sources: dict[str, str]) -> list[tuple[str, str]]:
    """Return (secret, source) for every secret found in a source."""
    return [
        (name, source)
        for name, core in CORES.items()
        for source, text in sources.items()
        if core in text
    ]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("transport", ["pubsub", "stream"])
async def test_no_secret_reaches_logs_output_results_reprs_or_errors(
    secret_server: RedisServer,
    admin: redis.Redis,
    debug_log: LogCapture,
    capfd: pytest.CaptureFixture[str],
    transport: str,
    protocol: int,
) -> None:
    url = url_with(secret_server.port, PASSWORD)
    stream = transport == "stream"
    processor = RecordingProcessor(
        url, transport=transport, protocol=protocol, consumer="c", **FAST
    )
    reprs: list[str] = []

    def done() -> bool:
        stats = processor.get_stats()
        return (
            stats["keys_processed"] == 2
            and stats["profiles_processed"] == 1
            and stats["results_received"] == 3
            and stats["invalid_events"] == 2
            and stats.get("dead_lettered", 0) == (2 if stream else 0)
        )

    channels = (KEY_SUBMISSION_TOPIC, PROCESSING_RESULTS_TOPIC, PROFILE_EVENTS_TOPIC)
    with RawSubscriber(admin, *channels) as raw:
        async with anyio.create_task_group() as tg:
            await tg.start(processor.run)
            async with EventPublisher(
                url, transport=transport, protocol=protocol
            ) as pub:
                await pub.publish_key_submitted(VALID_KEY, "valid-token")
                await pub.publish_key_submitted(INVALID_KEY, "invalid-token")
                await pub.publish_profile_created(42, {"plan": "pro"})
                for data in MALFORMED_EVENTS:
                    if stream:
                        admin.xadd(stream_key(KEY_SUBMISSION_TOPIC), {"data": data})
                    else:
                        admin.publish(KEY_SUBMISSION_TOPIC, data)

                await wait_until(done)
                reprs += [repr(pub), repr(pub.settings), str(pub.settings)]
                reprs += [repr(pub.get_stats())]

            reprs += [repr(processor), repr(processor.subscriber)]
            reprs += [repr(processor.publisher), repr(processor.settings)]
            await processor.stop()

        errors = await provoke_errors(secret_server, transport)
        await raw.aflush()
        messages = raw.messages

    keyword_form = EventPublisher(
        host="127.0.0.1", port=secret_server.port, password=PASSWORD
    )
    event = KeySubmitted(key_value=VALID_KEY, token_name="repr")
    reprs += [repr(keyword_form), repr(keyword_form.settings)]
    reprs += [repr(event), str(event), event.model_dump_json()]
    reprs += [repr(processor.get_stats())]
    cli_code = run_cli_against_a_closed_port()
    contents, left_out = redis_contents(admin)
    wire = [data for channel, data in messages if channel == KEY_SUBMISSION_TOPIC]
    output = capfd.readouterr()

    sources = {
        "logs": debug_log.text,
        "stdout": output.out,
        "stderr": output.err,
        "published": "\n".join(
            data for channel, data in messages if channel != KEY_SUBMISSION_TOPIC
        ),
        "redis": "\n".join(f"{k} {v}" for k, v in contents.items()),
        "reprs": "\n".join(reprs),
        "handler": "\n".join(processor.seen),
        "errors": "\n".join(text for exc in errors for text in described(exc)),
    }
    assert leaks(sources) == []

    # The search is known to work: the secrets are where they belong, the
    # flow ran as planned, and every source was filled.
    on_wire = "\n".join(left_out if stream else wire)
    assert CORES["valid key"] in on_wire
    assert CORES["invalid key"] in on_wire
    assert CORES["malformed key"] in on_wire
    filled = {"logs", "stderr", "reprs", "handler", "errors"}
    filled.add("redis" if stream else "published")
    assert [name for name in sorted(filled) if not sources[name]] == []
    assert logging.DEBUG in debug_log.levels
    assert logging.WARNING in debug_log.levels
    assert cli_code == 2
    assert "python -m redis_events.processor: error: " in output.err
    assert [type(exc) for exc in errors] == [
        EventTooLargeError,
        EventEncodeError,
        RedisUnavailableError,
        PermissionDeniedError,
        PermissionDeniedError,
        ConfigurationError,
        ConfigurationError,
    ]
    results = [k for k in contents if stream_key(PROCESSING_RESULTS_TOPIC) in k]
    published_results = [c for c, _ in messages if c == PROCESSING_RESULTS_TOPIC]
    assert len(results if stream else published_results) == 3
    if stream:
        dead = [k for k in contents if dead_letter_key(KEY_SUBMISSION_TOPIC) in k]
        assert len(dead) == 2


def test_no_secret_reaches_the_processors_json_log_at_debug(
    secret_server: RedisServer, admin: redis.Redis, tmp_path: Path
) -> None:
    url = url_with(secret_server.port, PASSWORD)
    command = [sys.executable, "-m", "redis_events.processor", "--redis-url", url]
    command += ["--transport", "stream", "--consumer", "c", "--stats-interval", "0"]
    command += ["--log-format", "json", "--log-level", "DEBUG"]
    err_path = tmp_path / "processor.err"
    with err_path.open("wb") as err:
        process = subprocess.Popen(command, stdout=err, stderr=err)

    try:
        poll_until(lambda: b"Consuming" in err_path.read_bytes(), timeout=15)
        wire = stream_key(KEY_SUBMISSION_TOPIC)
        for key, token in ((VALID_KEY, "valid"), (INVALID_KEY, "invalid")):
            event = {"key_value": key, "token_name": token}
            admin.xadd(wire, {"data": json.dumps(event)})

        for data in MALFORMED_EVENTS:
            admin.xadd(wire, {"data": data})

        results = stream_key(PROCESSING_RESULTS_TOPIC)
        poll_until(lambda: admin.xlen(dead_letter_key(KEY_SUBMISSION_TOPIC)) == 2)
        poll_until(lambda: admin.xlen(results) == 2)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    output = err_path.read_text()
    records = [json.loads(line) for line in output.splitlines()]
    assert code == 0, output[-2000:]
    assert leaks({"json log": output}) == []
    # The search is known to work: the keys were on the wire, and the log
    # covers the events at every level, rejects included.
    on_wire = json.dumps(admin.xrange(stream_key(KEY_SUBMISSION_TOPIC)))
    assert CORES["valid key"] in on_wire
    assert CORES["malformed key"] in on_wire
    levels = {record["level"] for record in records}
    assert {"DEBUG", "INFO", "WARNING"} <= levels
    rejected = [r for r in records if r["message"].startswith("Rejected entry")]
    assert len(rejected) == 2
    assert all(r["topic"] == KEY_SUBMISSION_TOPIC for r in rejected)
