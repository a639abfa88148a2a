"""``--log-format json`` of both command lines, and the fields its lines carry.

The processor runs as a subprocess on the stream transport against its own
redis-server; ``redis-events`` runs in-process with click's runner, or as
the installed console script where it hands over to the processor.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from redis_events import EventSubscriber
from redis_events._keys import dead_letter_key, stream_key
from redis_events._log_format import json_formatter
from tests.helpers import poll_until, wait_until
from tests.redis_server import free_port
from tests.test_cli import PROCESSOR, Services, clean_environment
from tests.test_cli_events import Tails, invoke

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

    from tests.redis_server import RedisServer

CLI = Path(sys.executable).with_name("redis-events")
SECRET = "log-me-not-4Kd9"
GROUP = "json-group"
CONSUMER = "json-consumer"
LINE_FIELDS = {"timestamp", "level", "logger", "message"}
EVENT_FIELDS = ("topic", "event_id", "event_type", "group", "consumer", "reason")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Start processor subprocesses; whatever still runs is killed after."""
    starter = Services(tmp_path)
    yield starter
    starter.kill_all()


@pytest.fixture
def tails(tmp_path: Path) -> Iterator[Tails]:
    """Start tail subprocesses; whatever still runs is killed after."""
    starter = Tails(tmp_path)
    yield starter
    starter.kill_all()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse every line of ``text``; fail on one that is not a JSON object."""
    parsed = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert set(record) >= LINE_FIELDS, line
        parsed.append(record)

    return parsed


def test_a_json_line_has_the_record_fields_its_extras_and_the_traceback() -> None:
    record = logging.LogRecord(
        "redis_events.test", logging.ERROR, __file__, 1, "failed on %s", ("t",), None
    )
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()

    record.topic = "t"
    record.event_id = "e1"

    line = json_formatter().format(record)

    assert "\n" not in line
    parsed = json.loads(line)
    assert next(iter(parsed)) == "timestamp"
    assert parsed["level"] == "ERROR"
    assert parsed["logger"] == "redis_events.test"
    assert parsed["message"] == "failed on t"
    assert parsed["topic"] == "t"
    assert parsed["event_id"] == "e1"
    assert "ValueError: boom" in parsed["exception"]
    assert parsed["timestamp"].endswith("+00:00")


@pytest.mark.redis
def test_processor_json_lines_carry_the_event_and_the_group_fields(
    own_redis_server: RedisServer, services: Services
) -> None:
    client = own_redis_server.client()
    service = services.start(
        [
            *PROCESSOR,
            "--redis-url",
            own_redis_server.url,
            "--transport",
            "stream",
            "--group",
            GROUP,
            "--consumer",
            CONSUMER,
            "--stats-interval",
            "0",
            "--log-format",
            "json",
        ]
    )

    def consuming() -> bool:
        assert service.process.poll() is None, f"exited early: {service.stderr}"
        return "Consuming" in service.stderr

    poll_until(consuming, timeout=15)
    stream = stream_key("key_submission")
    valid = {"event_id": "evt-valid", "key_value": SECRET, "token_name": "T1"}
    valid_id = client.xadd(stream, {"data": json.dumps(valid)})
    not_json = client.xadd(stream, {"data": '{"key_value": "' + SECRET})
    # Valid JSON that fails validation: no token_name.
    invalid = {"event_id": "evt-invalid", "key_value": SECRET}
    not_valid = client.xadd(stream, {"data": json.dumps(invalid)})
    dead = dead_letter_key("key_submission")
    poll_until(lambda: client.xlen(dead) == 2, timeout=15)
    poll_until(lambda: client.xlen(stream_key("processing_results")) == 1)
    service.signal(signal.SIGTERM)
    code = service.wait()
    client.close()

    assert code == 0, service.stderr
    records = json_lines(service.stderr)
    assert SECRET not in service.output
    rejected = [r for r in records if r["message"].startswith("Rejected entry")]
    assert [r["entry_id"] for r in rejected] == [not_json, not_valid]
    assert "Invalid JSON" in rejected[0]["reason"]
    assert "token_name" in rejected[1]["reason"]
    for record in rejected:
        assert record["level"] == "WARNING"
        assert record["topic"] == "key_submission"
        assert record["group"] == GROUP
        assert record["consumer"] == CONSUMER

    moved = [r for r in records if "to the dead letters" in r["message"]]
    assert sorted(r["entry_id"] for r in moved) == sorted([not_json, not_valid])
    assert {(r["group"], r["consumer"]) for r in moved} == {(GROUP, CONSUMER)}
    processed = [r for r in records if r["message"].startswith("Processed key")]
    assert len(processed) == 1, valid_id
    assert processed[0]["topic"] == "key_submission"
    assert processed[0]["event_id"] == "evt-valid"
    assert processed[0]["event_type"] == "key_submitted"
    assert records[-1]["message"].startswith("Stopped. Final stats")


def run_processor(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command against a closed port; return its code and stderr."""
    done = subprocess.run(
        [*args, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_environment(),
        check=False,
    )
    return done.returncode, done.stderr


def test_an_unreachable_redis_is_one_json_error_line_from_the_environment() -> None:
    env = clean_environment(REDIS_EVENTS_LOG_FORMAT="json")

    code, stderr = run_processor(*PROCESSOR, env=env)

    assert code == 2
    [record] = json_lines(stderr)
    assert record["level"] == "ERROR"
    assert record["logger"] == "redis_events.processor"
    assert "unavailable" in record["message"]


def test_redis_events_passes_its_log_format_on_to_the_processor() -> None:
    code, stderr = run_processor(str(CLI), "--log-format", "json", "processor")
    again, text = run_processor(
        str(CLI), "--log-format", "json", "processor", "--log-format", "text"
    )

    assert code == 2
    [record] = json_lines(stderr)
    assert record["level"] == "ERROR"
    assert again == 2
    assert text.startswith("redis-events processor: ")


def test_a_publish_error_is_one_json_line_naming_the_command() -> None:
    result = invoke("--log-format", "json", "publish", "key_submission", "{bad")

    assert result.exit_code == 2
    assert result.stdout == ""
    [record] = json_lines(result.stderr)
    assert record["level"] == "ERROR"
    assert record["logger"] == "redis_events.cli"
    assert record["command"] == "redis-events publish"
    assert "not valid JSON" in record["message"]


@pytest.mark.redis
def test_replay_in_json_shows_skipped_entries_with_their_fields(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"logs-{uid}"
    r.xadd(stream_key(topic), {"data": json.dumps({"event_type": "x", "n": 1})})
    broken = r.xadd(stream_key(topic), {"data": '{"key_value": "' + SECRET})

    result = invoke(
        "--log-format",
        "json",
        "--log-level",
        "info",
        "replay",
        topic,
        "--from",
        "all",
        "--redis-url",
        redis_url,
    )

    assert result.exit_code == 0, result.output
    records = json_lines(result.stderr)
    skipped = [r for r in records if r["message"].startswith("Replay skipped")]
    assert len(skipped) == 1, records
    assert skipped[0]["topic"] == topic
    assert skipped[0]["entry_id"] == str(broken)
    assert "Invalid JSON" in skipped[0]["reason"]
    assert records[-1]["message"] == f"Replayed 1 event of {topic}."
    assert records[-1]["level"] == "INFO"
    assert SECRET not in result.output


def test_an_unknown_log_level_is_a_usage_error() -> None:
    result = invoke("--log-level", "chatty", "asyncapi")

    assert result.exit_code == 2
    assert "'chatty' is not a log level" in result.stderr


@pytest.mark.redis
async def test_a_reclaim_a_failure_and_a_dead_letter_are_logged_with_group_fields(
    redis_url: str, r: redis.Redis, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = f"{uid}:logged", f"{uid}-logged"
    key = stream_key(topic)
    r.xgroup_create(key, group, id="0", mkstream=True)
    for n in range(2):
        event = {"event_type": "tested", "event_id": f"id-{n}", "n": n}
        r.xadd(key, {"data": json.dumps(event)})

    # Read by a consumer that then went away: pending, idle, claimable.
    assert len(r.xreadgroup(group, "gone", {key: ">"}, count=2)[0][1]) == 2  # type: ignore[index]  # sync client
    handled: list[int] = []
    sub = EventSubscriber(
        redis_url,
        transport="stream",
        group=group,
        consumer="rescuer",
        claim_min_idle=0.3,
        claim_interval=0.2,
        block_seconds=0.2,
        max_deliveries=2,
    )

    @sub.on(topic)
    async def handler(topic: str, event: dict[str, Any]) -> None:
        if event["n"] == 1:
            raise ValueError("this event can never be handled")

        handled.append(event["n"])

    with caplog.at_level(logging.INFO, logger="redis_events"):
        async with sub:
            await wait_until(lambda: r.xlen(dead_letter_key(topic)) == 1)

    assert handled == [0]
    claimed = [x for x in caplog.records if x.getMessage().startswith("Claimed")]
    assert claimed, caplog.text
    fields = {
        (vars(x)["topic"], vars(x)["group"], vars(x)["consumer"]) for x in claimed
    }
    assert fields == {(topic, group, "rescuer")}
    [moved] = [vars(x) for x in caplog.records if "dead letters" in x.getMessage()]
    assert {name: moved[name] for name in EVENT_FIELDS} == {
        "topic": topic,
        "event_id": "id-1",
        "event_type": "tested",
        "group": group,
        "consumer": "rescuer",
        "reason": "handler failed 2 times",
    }
    failures = [vars(x) for x in caplog.records if " failed on topic " in x.message]
    assert len(failures) == 1, caplog.text  # its second delivery, after the claim
    for failure in failures:
        assert {name: failure[name] for name in EVENT_FIELDS if name != "reason"} == {
            "topic": topic,
            "event_id": "id-1",
            "event_type": "tested",
            "group": group,
            "consumer": "rescuer",
        }


@pytest.mark.redis
def test_tail_writes_json_lines_when_the_environment_asks_for_them(
    redis_url: str,
    r: redis.Redis,
    uid: str,
    tails: Tails,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = f"logs-{uid}"
    monkeypatch.setenv("REDIS_EVENTS_LOG_FORMAT", "json")
    tail = tails.start(topic, "--count", "1", "--redis-url", redis_url)

    r.publish(topic, json.dumps({"event_type": "x", "key_value": SECRET}))
    code = tail.wait()

    assert code == 0, tail.stderr
    records = json_lines(tail.stderr)
    assert [r["message"].split(" ")[0] for r in records] == ["Following", "Stopped"]
    assert {r["command"] for r in records} == {"redis-events tail"}
    assert SECRET not in tail.stdout + tail.stderr
