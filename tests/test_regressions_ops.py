"""Regressions of the break-it review of the CLI, metrics and tracing.

One test per defect found by attacking the ``redis-events`` commands, the
metrics server and the trace envelope; each failed before its fix. The
defect is in the docstring.
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import urllib.error
from typing import TYPE_CHECKING

import pytest

from tests.helpers import poll_until
from tests.redis_server import free_port
from tests.test_cli import PROCESSOR, clean_environment
from tests.test_cli_events import Tails, invoke, stream_of, tails
from tests.test_metrics import fetch

if TYPE_CHECKING:
    from pathlib import Path

    import redis

    from tests.redis_server import RedisServer

__all__ = ["tails"]  # the fixture, imported for the tail tests here

# A file descriptor limit for the processor under test: enough to start and
# serve, far below the connections a client can open at it.
LOW_FD_LIMIT = 64


@pytest.mark.redis
@pytest.mark.parametrize(
    ("depth", "reason"),
    [(250, "recursion limit exceeded"), (5000, "nested too deeply")],
)
def test_publish_of_deeply_nested_json_exits_2_and_sends_nothing(
    redis_url: str, r: redis.Redis, uid: str, tmp_path: Path, depth: int, reason: str
) -> None:
    """Deep JSON made ``publish`` die with a traceback.

    Past Python's recursion limit, reading the JSON raised RecursionError;
    below it but past the decoder's limit, the event was encoded and then
    the check that decodes it again raised EventDecodeError unhandled.
    """
    topic = f"ops-{uid}"
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * depth + "1" + "}" * depth)

    result = invoke(
        "publish", topic, f"@{deep}", "--transport", "stream", "--redis-url", redis_url
    )

    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert "Traceback" not in result.output
    assert r.exists(stream_of(topic)) == 0


@pytest.mark.redis
def test_tail_shows_control_characters_of_names_and_types_escaped(
    redis_url: str, r: redis.Redis, tails: Tails, uid: str
) -> None:
    """A channel name or event_type with ESC reached the terminal raw.

    A pattern matches any channel name, so a publisher could clear the
    operator's screen or set its title through ``tail``'s header line.
    """
    tail = tails.start(f"ops-{uid}-*", "--count", "2", "--redis-url", redis_url)
    r.publish(f"ops-{uid}-\x1b[2J", '{"n": 1}')
    r.publish(f"ops-{uid}-x", json.dumps({"event_type": "\x1b]0;owned\x07"}))
    code = tail.wait()

    assert code == 0, tail.stderr
    out = tail.stdout
    assert "\x1b" not in out
    assert "\x07" not in out
    assert f"ops-{uid}-\\x1b[2J" in out
    assert "\\x1b]0;owned\\x07" in out
    assert "Stopped after 2 events." in tail.stderr


@pytest.mark.fault
def test_metrics_server_outlives_running_out_of_file_descriptors(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Many connections to /metrics made accept() fail with EMFILE.

    The failed accept ended the metrics server's task group, whose cancel
    scope held the processor's whole run: the processor stopped, exit 1.
    """
    port = free_port()
    log = tmp_path / "processor.log"

    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *PROCESSOR,
                "--redis-url",
                own_redis_server.url,
                "--metrics-port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=clean_environment(),
        )
    try:
        limit = (LOW_FD_LIMIT, LOW_FD_LIMIT)
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, limit)
        poll_until(lambda: answers(port, process), timeout=30)
        flood = [
            socket.create_connection(("127.0.0.1", port))
            for _ in range(2 * LOW_FD_LIMIT)
        ]
        try:
            # Held open, unanswered, until the server runs out of files.
            poll_until(lambda: out_of_files(log, process), timeout=30)
        finally:
            for connection in flood:
                connection.close()

        poll_until(lambda: answers(port, process), timeout=30)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    output_text = log.read_text(errors="replace")
    assert code == 0, output_text
    assert "Traceback" not in output_text


def out_of_files(log: Path, process: subprocess.Popen[bytes]) -> bool:
    """Tell whether the processor has logged a failed accept."""
    assert process.poll() is None, log.read_text(errors="replace")
    return "Could not accept a metrics connection" in log.read_text(errors="replace")


def answers(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Tell whether the processor answers /metrics with 200."""
    assert process.poll() is None, "the processor exited"
    try:
        return fetch(port, "/metrics")[0] == 200
    except (urllib.error.URLError, OSError):
        return False
