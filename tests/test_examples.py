"""Every example and the demo run as a user would run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers import RawSubscriber

if TYPE_CHECKING:
    import redis

    from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the interpreter of the test session with ``args``."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def test_demo_on_memory_sees_every_expected_event() -> None:
    result = run_python("-m", "redis_events.demo")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo finished: all 7 expected events seen" in result.stdout
    assert "keys_processed=3 profiles_processed=3 events_published=6" in result.stdout
    assert "my_secret_key_12345" not in result.stdout + result.stderr
    assert "abc123" not in result.stdout + result.stderr


@pytest.mark.redis
def test_demo_on_real_redis_sees_every_expected_event(
    own_redis_server: RedisServer,
) -> None:
    result = run_python("-m", "redis_events.demo", "--redis-url", own_redis_server.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 7 expected events seen" in result.stdout


def test_demo_reports_unreachable_redis_without_traceback() -> None:
    result = run_python("-m", "redis_events.demo", "--redis-url", "redis://127.0.0.1:1")

    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "redis://127.0.0.1:1" in result.stdout


def test_custom_handler_example_handles_three_orders() -> None:
    result = run_python(str(EXAMPLES / "custom_handler.py"))

    assert result.returncode == 0, result.stdout + result.stderr
    for order_id in (1, 2, 3):
        assert f"order {order_id}: total" in result.stdout

    assert result.stdout.count("audit: orders via pattern order*") == 3
    assert result.stdout.count("audit: order_results via pattern order*") == 3
    assert "result: order 2 accepted=False" in result.stdout


@pytest.mark.redis
def test_demo_events_example_gets_results_from_a_running_processor(
    own_redis_server: RedisServer,
) -> None:
    client = own_redis_server.client()
    processor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redis_events.processor",
            "--redis-url",
            own_redis_server.url,
            "--stats-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 15
        while dict(client.pubsub_numsub("key_submission")).get("key_submission") != 1:
            assert processor.poll() is None, "the processor exited early"
            assert time.monotonic() < deadline, "the processor never subscribed"
            time.sleep(0.05)

        result = run_python(
            str(EXAMPLES / "demo_events.py"), "--redis-url", own_redis_server.url
        )
    finally:
        processor.send_signal(signal.SIGTERM)
        output, _ = processor.communicate(timeout=20)
        client.close()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 5 results received" in result.stdout
    assert "key result: token='Token1' valid=True length=6" in result.stdout
    assert processor.returncode == 0
    assert "my_secret_key_12345" not in output + result.stdout


@pytest.mark.redis
def test_readmes_first_snippet_runs_as_a_script(redis_url: str, r: redis.Redis) -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "redis://localhost:6379/0" in snippet

    with RawSubscriber(r, "key_submission") as raw:
        result = run_python(
            "-c", snippet.replace("redis://localhost:6379/0", redis_url)
        )
        raw.flush()

    assert result.returncode == 0, result.stdout + result.stderr
    sent = [json.loads(data) for _, data in raw.messages]
    assert [(e["token_name"], e["key_value"]) for e in sent] == [("Token1", "abc123")]
