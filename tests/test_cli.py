"""``python -m redis_events.processor`` as a subprocess against a real server.

Each test owns its redis-server: the processor listens on the fixed topic
names of the original design, and pub/sub channels are shared by every
database of a server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from tests.helpers import RawSubscriber, poll_until
from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    import redis

PROCESSOR = (sys.executable, "-m", "redis_events.processor")
FLAGS = (
    "--redis-url",
    "--topic",
    "--concurrency",
    "--log-level",
    "--log-format",
    "--stats-interval",
)
SECRET = "abc123"
ORIGINAL_KEY_EVENT = (
    '{"event_type": "key_submitted", "key_value": "abc123", '
    '"token_name": "Token1", "timestamp": "2024-01-01T10:00:00"}'
)
PASSWORD = "s3cret"
# Handlers sleep this long in the slow-processor script's graceful runs; the
# grace period is 10 s, so all of them can finish.
SLOW_HANDLER_SECONDS = 2.0
EXIT_TIMEOUT = 20.0

SLOW_PROCESSOR_SCRIPT = '''
"""A processor whose profile handler is slow and records its progress in R."""

import logging
import sys

import anyio
import redis.asyncio

from redis_events.processor import EventProcessor, serve

URL = sys.argv[1]
SLEEP = float(sys.argv[2])


class SlowProcessor(EventProcessor):
    def __init__(self) -> None:
        super().__init__(URL, max_concurrency=64, shutdown_timeout=10)
        self.r = redis.asyncio.Redis.from_url(URL)

    async def handle_profile_event(self, topic, event):
        await self.r.incr("started")
        await anyio.sleep(SLEEP)
        await super().handle_profile_event(topic, event)
        await self.r.hincrby("done", str(event.profile_id), 1)


logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
raise SystemExit(anyio.run(serve, SlowProcessor()))
'''


def clean_environment(**extra: str) -> dict[str, str]:
    """The test's environment without Redis settings, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "REDIS_URL" and not name.startswith("REDIS_EVENTS_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


@dataclass
class Service:
    """One processor subprocess; its stdout and stderr go to files."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Return the exit code; fail if the process is still running then."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the processor did not exit within {timeout} s")

    def final_stats(self) -> dict[str, int]:
        """Parse the last 'Final stats' line of the log."""
        lines = [line for line in self.stderr.splitlines() if "Final stats" in line]
        assert lines, f"no final stats line in: {self.stderr[-2000:]}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


@dataclass
class Services:
    """Starts processor subprocesses and kills any left over."""

    directory: Path
    started: list[Service] = field(default_factory=list)

    def start(
        self, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Service:
        index = len(self.started)
        stdout_path = self.directory / f"processor-{index}.out"
        stderr_path = self.directory / f"processor-{index}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env) if env is not None else clean_environment(),
                cwd=self.directory,
            )

        service = Service(process, stdout_path, stderr_path)
        self.started.append(service)
        return service

    def kill_all(self) -> None:
        for service in self.started:
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait(timeout=10)


class PasswordRedisServer(RedisServer):
    """A redis-server with ``requirepass``; its own clients authenticate."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            directory,
            args=("--save", "", "--appendonly", "no", "--requirepass", PASSWORD),
        )

    def client(self, **options: object) -> redis.Redis:
        return super().client(**({"password": PASSWORD} | options))


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Start processor subprocesses; whatever still runs is killed after."""
    starter = Services(tmp_path)
    yield starter
    starter.kill_all()


@pytest.fixture
def own_r(own_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client (``R``) of the test's own server."""
    client = own_redis_server.client()
    yield client
    client.close()


def numsub(client: redis.Redis, channel: str) -> int:
    """Return PUBSUB NUMSUB for one channel."""
    reply: list[tuple[str, int]] = client.pubsub_numsub(channel)  # type: ignore[assignment]  # sync client
    return int(reply[0][1])


def wait_subscribed(client: redis.Redis, service: Service, channel: str) -> None:
    """Wait until the processor is subscribed to ``channel``."""

    def subscribed() -> bool:
        assert service.process.poll() is None, f"exited early: {service.stderr}"
        return numsub(client, channel) == 1

    poll_until(subscribed, timeout=15)


def test_help_exits_zero_and_mentions_every_flag() -> None:
    done = subprocess.run(
        [*PROCESSOR, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m redis_events.processor [-h]")
    for flag in FLAGS:
        assert flag in done.stdout


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--transport", "stream", "--topic", "profile_*"), {}),
        ((), {"REDIS_EVENTS_TRANSPORT": "stream", "REDIS_EVENTS_TOPICS": "a,b?"}),
    ],
    ids=["flags", "environment"],
)
def test_a_pattern_as_stream_topic_exits_2_saying_patterns_are_pub_sub_only(
    args: tuple[str, ...], env: dict[str, str]
) -> None:
    port = free_port()

    done = subprocess.run(
        [*PROCESSOR, "--redis-url", f"redis://127.0.0.1:{port}/0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(**env),
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.startswith(
        "python -m redis_events.processor: error: invalid settings: topics"
    )
    assert "patterns work on the pub/sub transport only" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("userinfo", "shown"),
    [
        ("", "redis://127.0.0.1:{port}"),
        (f":{PASSWORD}@", "redis://:***@127.0.0.1:{port}"),
    ],
    ids=["no-password", "password"],
)
def test_unreachable_redis_exits_2_with_one_line_naming_the_address(
    userinfo: str, shown: str
) -> None:
    port = free_port()

    done = subprocess.run(
        [*PROCESSOR, "--redis-url", f"redis://{userinfo}127.0.0.1:{port}/0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
        check=False,
    )

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("python -m redis_events.processor: error: ")
    assert shown.format(port=port) in lines[0]
    assert lines[0].endswith(
        "check that Redis runs there, or give the right URL (--redis-url or REDIS_URL)"
    )
    assert "Traceback" not in done.stderr + done.stdout
    assert PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--concurrency", "0", "expected a whole number, 1 or more, got '0'"),
        ("--concurrency", "x", "expected a whole number, 1 or more, got 'x'"),
        ("--stats-interval", "-1", "expected a number of seconds, 0 or more, got '-1'"),
        (
            "--stats-interval",
            "nan",
            "expected a number of seconds, 0 or more, got 'nan'",
        ),
        (
            "--metrics-port",
            "70000",
            "expected a port from 0 to 65535 (0 = off), got '70000'",
        ),
    ],
)
def test_an_out_of_range_flag_exits_2_naming_the_flag(
    flag: str, value: str, expected: str
) -> None:
    done = subprocess.run(
        [*PROCESSOR, flag, value],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
        check=False,
    )

    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last == f"python -m redis_events.processor: error: argument {flag}: {expected}"
    )


def test_serve_reports_an_unreachable_redis_as_an_error_line_and_exits_2() -> None:
    port = free_port()
    script = (
        "import anyio\n"
        "from redis_events.processor import EventProcessor, serve\n"
        f"processor = EventProcessor('redis://:{PASSWORD}@127.0.0.1:{port}/0')\n"
        "raise SystemExit(anyio.run(serve, processor))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
        check=False,
    )

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1, done.stderr
    # The same "<command>: error: " form as every other command-line error.
    assert lines[0].startswith("redis-events processor: error: ")
    assert f"127.0.0.1:{port}" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout


@pytest.mark.redis
@pytest.mark.parametrize(
    "log_args", [(), ("--log-level", "DEBUG")], ids=["default-level", "debug"]
)
def test_key_event_from_redis_cli_yields_one_result_and_sigterm_exits_0(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    services: Services,
    log_args: tuple[str, ...],
) -> None:
    port = own_redis_server.port
    with RawSubscriber(own_r, "processing_results") as raw:
        service = services.start(
            [*PROCESSOR, "--redis-url", f"redis://127.0.0.1:{port}", *log_args]
        )
        wait_subscribed(own_r, service, "key_submission")

        published = subprocess.run(
            [
                "redis-cli",
                "-p",
                str(port),
                "PUBLISH",
                "key_submission",
                ORIGINAL_KEY_EVENT,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        poll_until(lambda: raw.count() >= 1)
        service.signal(signal.SIGTERM)
        code = service.wait()
        raw.flush()
        messages = raw.messages

    assert published.stdout.strip() == "1"
    assert code == 0, service.stderr
    assert len(messages) == 1
    data = messages[0][1]
    result = json.loads(data)
    assert result["event_type"] == "key_processed"
    assert result["result"]["valid"] is True
    assert result["result"]["length"] == 6
    assert result["result"]["token_name"] == "Token1"
    assert SECRET not in data
    assert SECRET not in service.output
    assert "Traceback" not in service.output
    stats = service.final_stats()
    assert stats["keys_processed"] == 1
    assert stats["events_published"] == 1
    assert stats["handler_errors"] == 0


@pytest.mark.redis
def test_log_names_the_address_with_the_password_masked(
    tmp_path: Path, services: Services
) -> None:
    server = PasswordRedisServer(tmp_path / "redis").start()
    client = server.client()
    try:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        service = services.start([*PROCESSOR, "--redis-url", url])
        wait_subscribed(client, service, "key_submission")
        service.signal(signal.SIGTERM)
        code = service.wait()
    finally:
        client.close()
        server.stop()

    assert code == 0, service.stderr
    assert f"redis://:***@127.0.0.1:{server.port}/0" in service.output
    assert PASSWORD not in service.output


@pytest.mark.redis
def test_redis_url_comes_from_the_environment_without_the_flag(
    own_redis_server: RedisServer, own_r: redis.Redis, services: Services
) -> None:
    env = clean_environment(REDIS_URL=own_redis_server.url)

    service = services.start(PROCESSOR, env=env)
    wait_subscribed(own_r, service, "key_submission")
    service.signal(signal.SIGTERM)

    assert service.wait() == 0, service.stderr
    assert own_redis_server.url in service.output


@pytest.mark.redis
def test_redis_url_flag_wins_over_the_environment(
    own_redis_server: RedisServer, own_r: redis.Redis, services: Services
) -> None:
    env = clean_environment(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    service = services.start([*PROCESSOR, "--redis-url", own_redis_server.url], env=env)
    wait_subscribed(own_r, service, "key_submission")
    service.signal(signal.SIGTERM)

    assert service.wait() == 0, service.stderr


@pytest.mark.redis
def test_topics_come_from_redis_events_topics_comma_separated(
    own_redis_server: RedisServer, own_r: redis.Redis, services: Services
) -> None:
    env = clean_environment(REDIS_URL=own_redis_server.url, REDIS_EVENTS_TOPICS="a,b")

    service = services.start(PROCESSOR, env=env)
    wait_subscribed(own_r, service, "a")
    subscribed = {ch: numsub(own_r, ch) for ch in ("a", "b", "key_submission")}
    service.signal(signal.SIGTERM)

    assert service.wait() == 0, service.stderr
    assert subscribed == {"a": 1, "b": 1, "key_submission": 0}


def start_slow_processor(
    services: Services, tmp_path: Path, url: str, handler_seconds: float
) -> Service:
    script = tmp_path / "slow_processor.py"
    script.write_text(SLOW_PROCESSOR_SCRIPT)
    return services.start([sys.executable, str(script), url, str(handler_seconds)])


def publish_profiles(client: redis.Redis, ids: range) -> list[int]:
    """Publish one profile_created per id with R; return the receivers."""
    pipe = client.pipeline(transaction=False)
    for i in ids:
        event = {"event_type": "profile_created", "profile_id": i, "profile_data": {}}
        pipe.publish("profile_events", json.dumps(event))

    receivers: list[int] = pipe.execute()
    return receivers


def started(client: redis.Redis) -> int:
    return int(client.get("started") or 0)


@pytest.mark.redis
@pytest.mark.fault
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_signal_lets_fifty_slow_handlers_finish_and_exits_0(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    services: Services,
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    service = start_slow_processor(
        services, tmp_path, own_redis_server.url, SLOW_HANDLER_SECONDS
    )
    wait_subscribed(own_r, service, "profile_events")

    receivers = publish_profiles(own_r, range(50))
    poll_until(lambda: started(own_r) == 50)
    service.signal(signum)
    poll_until(lambda: f"{signum.name} received" in service.stderr)
    # Published after the processor began its shutdown: never taken.
    late = publish_profiles(own_r, range(50, 55))
    code = service.wait()

    assert receivers == [1] * 50
    assert late == [1] * 5
    assert code == 0, service.stderr
    assert started(own_r) == 50
    done = own_r.hgetall("done")
    assert done == {str(i): "1" for i in range(50)}
    stats = service.final_stats()
    assert stats["profiles_processed"] == 50
    assert stats["events_published"] == 50
    assert stats["handlers_cancelled"] == 0
    assert stats["in_flight"] == 0
    assert "Traceback" not in service.output


@pytest.mark.redis
@pytest.mark.fault
@pytest.mark.parametrize(
    "second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_second_signal_cancels_handlers_in_flight_and_exits_1(
    own_redis_server: RedisServer,
    own_r: redis.Redis,
    services: Services,
    tmp_path: Path,
    second: signal.Signals,
) -> None:
    # Handlers outlast the 10 s grace period, so only the second signal can
    # make the process exit within a few seconds.
    service = start_slow_processor(services, tmp_path, own_redis_server.url, 60.0)
    wait_subscribed(own_r, service, "profile_events")

    publish_profiles(own_r, range(50))
    poll_until(lambda: started(own_r) == 50)
    service.signal(signal.SIGTERM)
    poll_until(lambda: "SIGTERM received" in service.stderr)
    service.signal(second)
    code = service.wait(timeout=5)

    assert code == 1, service.stderr
    assert own_r.hlen("done") == 0
    stats = service.final_stats()
    assert stats["handlers_cancelled"] == 50
    assert stats["profiles_processed"] == 0
    assert stats["in_flight"] == 0
    assert f"Second {second.name}" in service.stderr
