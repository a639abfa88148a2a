"""The event-flow commands of ``redis-events``: publish, tail, replay, asyncapi.

Commands that end by themselves run in-process with click's ``CliRunner``;
``tail`` runs as a real subprocess of the installed console script, so that
signals and piped output are what an operator gets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from click.testing import CliRunner, Result

from redis_events.cli import main
from redis_events.events import (
    Event,
    KeyProcessed,
    KeySubmitted,
    ProfileCreated,
    ProfileDeleted,
    ProfileProcessed,
    ProfileUpdated,
)
from tests.helpers import RawSubscriber, poll_until
from tests.redis_server import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

SECRET = "tail-me-not-7Q2x"
KEY_EVENT = json.dumps({"key_value": SECRET, "token_name": "Token1"})
CLI = Path(sys.executable).with_name("redis-events")
EXIT_TIMEOUT = 20.0


def invoke(*args: str, stdin: str | None = None) -> Result:
    """Run ``redis-events ARGS`` in-process, without Redis settings from env."""
    env: dict[str, str | None] = {
        name: None
        for name in os.environ
        if name == "REDIS_URL" or name.startswith("REDIS_EVENTS_")
    }
    return CliRunner().invoke(
        main, list(args), input=stdin, env=env, prog_name="redis-events"
    )


def stream_of(topic: str) -> str:
    return f"redis-events:{{{topic}}}"


def entries(r: redis.Redis, topic: str) -> list[tuple[str, dict[str, str]]]:
    """Return every entry of ``topic``'s stream (``r`` decodes responses)."""
    found: Any = r.xrange(stream_of(topic))
    return [(entry_id, dict(fields)) for entry_id, fields in found]


# -- publish ---------------------------------------------------------------


@pytest.mark.redis
def test_publish_on_pubsub_sends_the_validated_event_and_redacts_the_output(
    redis_url: str, r: redis.Redis
) -> None:
    with RawSubscriber(r, "key_submission") as raw:
        result = invoke(
            "publish", "key_submission", KEY_EVENT, "--redis-url", redis_url
        )
        as_json = invoke(
            "publish", "key_submission", KEY_EVENT, "--json", "--redis-url", redis_url
        )
        raw.flush()
        messages = raw.messages

    assert result.exit_code == 0, result.output
    assert "received by 1 subscriber" in result.output
    assert "1 subscribers" not in result.output
    assert SECRET not in result.output
    assert "**********" in result.output
    printed = json.loads(as_json.output)
    assert printed["receivers"] == 1
    assert printed["event"]["key_value"] == "**********"
    assert SECRET not in as_json.output
    assert len(messages) == 2
    sent = json.loads(messages[0][1])
    # Subscribers need the key itself: only the output is redacted.
    assert sent["key_value"] == SECRET
    assert sent["event_type"] == "key_submitted"
    assert sent["token_name"] == "Token1"
    assert sent["event_id"]


@pytest.mark.redis
def test_publish_on_stream_appends_one_entry_and_prints_its_id(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"cli-{uid}"
    event = {"event_type": "order_placed", "order": 12, "key_value": SECRET}

    result = invoke(
        "publish",
        topic,
        json.dumps(event),
        "--transport",
        "stream",
        "--json",
        "--redis-url",
        redis_url,
    )

    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    stored_entries = entries(r, topic)
    assert len(stored_entries) == 1
    entry_id, fields = stored_entries[0]
    assert printed["entry_id"] == entry_id
    assert printed["transport"] == "stream"
    stored = json.loads(fields["data"])
    assert stored["order"] == 12
    assert stored["event_id"] == printed["event"]["event_id"]
    assert printed["event"]["key_value"] == "**********"
    assert SECRET not in result.output


@pytest.mark.redis
def test_publish_reads_the_event_from_a_file_and_from_stdin(
    redis_url: str, r: redis.Redis, uid: str, tmp_path: Path
) -> None:
    topic = f"cli-{uid}"
    path = tmp_path / "event.json"
    path.write_text(json.dumps({"event_type": "from_file"}))
    common = ("--transport", "stream", "--redis-url", redis_url)

    from_file = invoke("publish", topic, f"@{path}", *common)
    from_stdin = invoke(
        "publish", topic, "@-", *common, stdin='{"event_type": "piped"}'
    )

    assert from_file.exit_code == 0, from_file.output
    assert from_stdin.exit_code == 0, from_stdin.output
    types = [json.loads(f["data"])["event_type"] for _, f in entries(r, topic)]
    assert types == ["from_file", "piped"]


@pytest.mark.redis
@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (json.dumps({"key_value": SECRET}), "token_name: Field required"),
        ('{"key_value": "' + SECRET + '", ', "is not valid JSON"),
        (json.dumps([SECRET]), "must be a JSON object"),
        (
            json.dumps({"event_type": "profile_renamed", "profile_id": 1}),
            "event_type is not one of: profile_created, profile_updated, "
            "profile_deleted; fix the event",
        ),
        (
            json.dumps({"profile_id": 1}),
            "event_type is missing; expected one of: profile_created, "
            "profile_updated, profile_deleted; fix the event",
        ),
    ],
    ids=["missing-field", "bad-json", "not-an-object", "unknown-type", "no-type"],
)
def test_invalid_event_exits_2_with_the_reason_and_sends_nothing(
    redis_url: str, r: redis.Redis, event: str, reason: str
) -> None:
    topic = "profile_events" if "profile" in event else "key_submission"
    before = r.xlen(stream_of(topic))

    result = invoke(
        "publish", topic, event, "--transport", "stream", "--redis-url", redis_url
    )

    assert result.exit_code == 2
    assert result.output.startswith("redis-events publish: error: ")
    assert reason in result.output
    assert result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    assert r.xlen(stream_of(topic)) == before


def test_unreachable_redis_exits_1_with_the_address_and_what_to_do() -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"

    result = invoke("publish", "key_submission", KEY_EVENT, "--redis-url", url)

    assert result.exit_code == 1
    assert f"redis://:***@127.0.0.1:{port}/0 is unavailable" in result.output
    assert "--redis-url" in result.output
    assert "hunter2" not in result.output
    assert SECRET not in result.output
    assert "Traceback" not in result.output


def test_bad_redis_url_exits_2_naming_the_setting() -> None:
    result = invoke("publish", "t", "{}", "--redis-url", "http://example.com")

    assert result.exit_code == 2
    assert "unsupported Redis URL scheme 'http'" in result.output


def test_bad_setting_from_the_environment_exits_2_naming_the_variable() -> None:
    result = CliRunner().invoke(
        main,
        ["publish", "t", "{}"],
        env={"REDIS_URL": None, "REDIS_EVENTS_TRANSPORT": "kafka"},
        prog_name="redis-events",
    )

    assert result.exit_code == 2
    assert result.output.startswith(
        "redis-events publish: error: invalid settings: transport "
        "(from REDIS_EVENTS_TRANSPORT): Input should be 'pubsub' or 'stream'"
    )


# -- tail ------------------------------------------------------------------


@dataclass
class Tail:
    """A running ``redis-events tail`` subprocess; output goes to files."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_following(self) -> None:
        def following() -> bool:
            assert self.process.poll() is None, f"tail exited early: {self.stderr}"
            return "Following" in self.stderr

        poll_until(following, timeout=15)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tail did not exit within {EXIT_TIMEOUT} s: {self.stderr}")


@dataclass
class Tails:
    """Starts ``tail`` subprocesses and kills any left over."""

    directory: Path
    started: list[Tail] = field(default_factory=list)

    def start(self, *args: str) -> Tail:
        """Start ``redis-events tail ARGS`` and wait until it follows."""
        index = len(self.started)
        stdout_path = self.directory / f"tail-{index}.out"
        stderr_path = self.directory / f"tail-{index}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [str(CLI), "tail", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
            )

        tail = Tail(process, stdout_path, stderr_path)
        self.started.append(tail)
        tail.wait_following()
        return tail

    def kill_all(self) -> None:
        for tail in self.started:
            if tail.process.poll() is None:
                tail.process.kill()
                tail.process.wait(timeout=10)


@pytest.fixture
def tails(tmp_path: Path) -> Iterator[Tails]:
    """Start tail subprocesses; whatever still runs is killed after."""
    starter = Tails(tmp_path)
    yield starter
    starter.kill_all()


@pytest.mark.redis
def test_tail_on_pubsub_shows_events_published_after_it_started_redacted(
    redis_url: str, r: redis.Redis, tails: Tails, uid: str
) -> None:
    other = f"cli-{uid}-orders"
    tail = tails.start(
        "key_submission", f"cli-{uid}-*", "--count", "3", "--redis-url", redis_url
    )

    published = invoke("publish", "key_submission", KEY_EVENT, "--redis-url", redis_url)
    r.publish(other, json.dumps({"event_type": "order_placed", "key_value": SECRET}))
    r.publish("key_submission", f'{{"key_value": "{SECRET}"')
    code = tail.wait()

    assert published.exit_code == 0, published.output
    assert code == 0, tail.stderr
    out = tail.stdout
    assert "key_submission  key_submitted" in out
    assert f"{other}  order_placed  (pattern cli-{uid}-*)" in out
    assert "undecodable: Invalid JSON" in out
    assert out.count("**********") == 2
    assert SECRET not in out + tail.stderr
    assert "Stopped after 3 events." in tail.stderr
    assert "Traceback" not in tail.stderr


@pytest.mark.redis
def test_tail_on_pubsub_leaves_out_the_trace_context_of_a_traced_publish(
    redis_url: str, r: redis.Redis, tails: Tails, uid: str
) -> None:
    # A traced publisher appends a top-level "_trace" member (redis_events.
    # _envelope); it is not part of the event and tail does not show it.
    topic = f"cli-{uid}"
    tail = tails.start(topic, "--json", "--count", "1", "--redis-url", redis_url)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r.publish(
        topic,
        '{"event_type":"order_placed","n":1,'
        f'"_trace":{{"traceparent":"{traceparent}"}}}}',
    )
    code = tail.wait()

    assert code == 0, tail.stderr
    shown = json.loads(tail.stdout.splitlines()[0])
    assert shown["event"] == {"event_type": "order_placed", "n": 1}
    assert "_trace" not in tail.stdout


@pytest.mark.redis
def test_tail_on_streams_with_json_prints_one_parseable_object_per_event(
    redis_url: str, r: redis.Redis, tails: Tails, uid: str
) -> None:
    topic = f"cli-{uid}"
    r.xadd(stream_of(topic), {"data": json.dumps({"event_type": "before_tail"})})
    tail = tails.start(
        "key_submission",
        topic,
        "--transport",
        "stream",
        "--json",
        "--count",
        "3",
        "--redis-url",
        redis_url,
    )

    invoke(
        "publish",
        "key_submission",
        KEY_EVENT,
        "--transport",
        "stream",
        "--redis-url",
        redis_url,
    )
    r.xadd(stream_of(topic), {"data": json.dumps({"event_type": "after_tail"})})
    bad_id = r.xadd(stream_of(topic), {"other": "field"})
    code = tail.wait()

    assert code == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["topic"] for line in lines] == ["key_submission", topic, topic]
    key_event, after, bad = lines
    assert key_event["event"]["event_type"] == "key_submitted"
    assert key_event["event"]["key_value"] == "**********"
    assert after["event"]["event_type"] == "after_tail"
    assert bad == {
        "topic": topic,
        "entry_id": bad_id,
        "error": "the entry has no 'data' field",
    }
    assert SECRET not in tail.stdout + tail.stderr
    # XREAD outside any group: tail left no consumer group behind.
    assert r.xinfo_groups(stream_of(topic)) == []


@pytest.mark.redis
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("transport", ["pubsub", "stream"])
def test_tail_stops_cleanly_with_exit_0_on_a_signal(
    redis_url: str, tails: Tails, uid: str, signum: signal.Signals, transport: str
) -> None:
    tail = tails.start(f"cli-{uid}", "--transport", transport, "--redis-url", redis_url)

    tail.process.send_signal(signum)
    code = tail.wait()

    assert code == 0, tail.stderr
    assert "Stopped after 0 events." in tail.stderr
    assert "Traceback" not in tail.stderr


def test_tail_refuses_a_pattern_on_streams_with_exit_2() -> None:
    result = invoke("tail", "profile_*", "--transport", "stream")

    assert result.exit_code == 2
    assert "patterns work on pub/sub only" in result.output


# -- replay ----------------------------------------------------------------


def add_history(r: redis.Redis, topic: str) -> None:
    """Entries 1000-0 .. 5000-0 (1 s to 5 s after the epoch), and one bad one."""
    for n in range(1, 6):
        event = {"event_type": "tick", "event_id": f"e{n}", "n": n, "key_value": SECRET}
        r.xadd(stream_of(topic), {"data": json.dumps(event)}, id=f"{n}000-0")
        if n == 3:
            r.xadd(stream_of(topic), {"data": "{not json"}, id="3000-1")


@pytest.mark.redis
@pytest.mark.parametrize(
    ("start", "end"),
    [("2000-0", "4000-0"), ("1970-01-01T00:00:02Z", "1970-01-01T00:00:04+00:00")],
    ids=["entry-ids", "times"],
)
def test_replay_prints_the_range_oldest_first_and_reports_bad_entries(
    redis_url: str, r: redis.Redis, uid: str, start: str, end: str
) -> None:
    topic = f"cli-{uid}"
    add_history(r, topic)

    result = invoke(
        "replay",
        topic,
        "--from",
        start,
        "--to",
        end,
        "--json",
        "--redis-url",
        redis_url,
    )

    assert result.exit_code == 0, result.output
    events = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert [e["n"] for e in events] == [2, 3, 4]
    ids = [json.loads(line)["entry_id"] for line in result.stdout.splitlines()]
    assert ids == ["2000-0", "3000-0", "4000-0"]
    assert {e["key_value"] for e in events} == {"**********"}
    assert "warning: Replay skipped entry 3000-1: Invalid JSON" in result.stderr
    assert "Replayed 3 events" in result.stderr
    assert SECRET not in result.output
    assert r.xinfo_groups(stream_of(topic)) == []


@pytest.mark.redis
def test_replay_republishes_into_another_stream_keeping_secrets_and_ids(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, copy = f"cli-{uid}", f"cli-{uid}-copy"
    add_history(r, topic)

    result = invoke(
        "replay", topic, "--from", "all", "--republish", "--into", copy,
        "--transport", "stream", "--redis-url", redis_url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    copies = [json.loads(f["data"]) for _, f in entries(r, copy)]
    assert [c["n"] for c in copies] == [1, 2, 3, 4, 5]
    assert [c["event_id"] for c in copies] == ["e1", "e2", "e3", "e4", "e5"]
    assert {c["key_value"] for c in copies} == {SECRET}
    assert SECRET not in result.output
    assert "Re-published 5 events" in result.stderr


@pytest.mark.redis
def test_replay_republishing_into_its_own_stream_stops_at_the_newest_entry(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"cli-{uid}"
    add_history(r, topic)

    result = invoke(
        "replay", topic, "--from", "all", "--republish", "--transport", "stream",
        "--redis-url", redis_url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert r.xlen(stream_of(topic)) == 6 + 5


def republished(
    r: redis.Redis, url: str, topic: str, transport: str, target: str, *args: str
) -> tuple[Result, list[str]]:
    """Run ``replay TOPIC ARGS --republish``; return it and the data sent."""
    command = ["replay", topic, *args, "--republish", "--transport", transport]
    if target != topic:
        command += ["--into", target]

    if transport == "stream":
        before = {entry_id for entry_id, _ in entries(r, target)}
        result = invoke(*command, "--redis-url", url)
        sent = [f["data"] for i, f in entries(r, target) if i not in before]
        return result, sent

    with RawSubscriber(r, target) as raw:
        result = invoke(*command, "--redis-url", url)
        raw.flush()
        return result, [data for _, data in raw.messages]


@pytest.mark.redis
@pytest.mark.parametrize("transport", ["stream", "pubsub"])
def test_republishing_a_model_event_into_a_topic_without_one_copies_its_bytes(
    redis_url: str, r: redis.Redis, uid: str, transport: str
) -> None:
    # A key_submitted event stored without event_id and timestamp: decoded,
    # its model fills both in, and a topic without a model would redact
    # key_value. The copy must be the stored bytes all the same.
    stored = json.dumps({"key_value": SECRET, "token_name": f"T-{uid}"})
    entry_id = str(r.xadd(stream_of("key_submission"), {"data": stored}))
    try:
        result, sent = republished(
            r, redis_url, "key_submission", transport, f"cli-{uid}-copy",
            "--from", entry_id, "--to", entry_id, "--json",
        )  # fmt: skip
    finally:
        r.xdel(stream_of("key_submission"), entry_id)

    assert result.exit_code == 0, result.output
    assert sent == [stored]
    printed = json.loads(result.stdout)
    assert printed["entry_id"] == entry_id
    assert printed["event"]["key_value"] == "**********"
    assert SECRET not in result.output


@pytest.mark.redis
@pytest.mark.parametrize("transport", ["stream", "pubsub"])
def test_republishing_into_the_same_topic_keeps_an_entry_without_event_id_as_it_is(
    redis_url: str, r: redis.Redis, uid: str, transport: str
) -> None:
    topic = f"cli-{uid}"
    stored = [
        json.dumps({"event_type": "tick", "n": n, "key_value": SECRET})
        for n in range(3)
    ]
    for data in stored:
        r.xadd(stream_of(topic), {"data": data})

    for _ in range(2):
        result, sent = republished(
            r, redis_url, topic, transport, topic, "--from", "all"
        )

        assert result.exit_code == 0, result.output
        assert sent[:3] == stored
        assert SECRET not in result.output


@pytest.mark.redis
def test_republishing_an_event_that_does_not_fit_the_target_model_sends_nothing(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"cli-{uid}"
    good = {"event_type": "profile_deleted", "profile_id": 7, "event_id": "e1"}
    r.xadd(stream_of(topic), {"data": json.dumps({"profile_id": 1})}, id="1-0")
    r.xadd(stream_of(topic), {"data": json.dumps(good)}, id="2-0")

    result, sent = republished(
        r, redis_url, topic, "pubsub", "profile_events", "--from", "all"
    )

    assert result.exit_code == 0, result.output
    assert [json.loads(data)["event_id"] for data in sent] == ["e1"]
    assert "Entry 1-0 not re-published: " in result.stderr
    assert "event_type" in result.stderr
    assert "Re-published 1 event of " in result.stderr
    assert "1 refused by profile_events" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "new"), "new has no history"),
        (("--from", "yesterday"), "--from must be all, an entry id (17"),
        (("--from", "all", "--to", "soon"), "--to must be an entry id (17"),
        (("--from", "all", "--to", "all"), "--to must be an entry id (17"),
        (("--from", "all", "--to", "new"), "--to must be an entry id (17"),
        (("--from", "all", "--into", "x"), "--into only works with --republish"),
    ],
    ids=["new", "bad-from", "bad-to", "to-all", "to-new", "into-alone"],
)
def test_replay_refuses_unusable_positions_with_exit_2(
    args: tuple[str, ...], message: str
) -> None:
    port = free_port()

    result = invoke("replay", "t", *args, "--redis-url", f"redis://127.0.0.1:{port}")

    assert result.exit_code == 2
    assert message in result.output


# -- processor -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["replay"],
            "redis-events replay: error: Missing argument 'TOPIC'; "
            "see 'redis-events replay --help'",
        ),
        (
            ["publish", "t", "{}", "--bogus"],
            "redis-events publish: error: No such option '--bogus'; "
            "see 'redis-events publish --help'",
        ),
        (
            ["nosuch"],
            "redis-events: error: No such command 'nosuch'; see 'redis-events --help'",
        ),
    ],
    ids=["missing-argument", "unknown-option", "unknown-command"],
)
def test_clicks_usage_errors_are_one_error_line_with_exit_2(
    args: list[str], line: str
) -> None:
    result = invoke(*args)

    assert result.exit_code == 2
    assert result.output == line + "\n"


def test_usage_errors_are_json_records_with_log_format_json() -> None:
    result = invoke("--log-format", "json", "replay", "t")

    assert result.exit_code == 2
    record = json.loads(result.output)
    assert record["level"] == "ERROR"
    assert record["command"] == "redis-events replay"
    assert record["message"].startswith("Missing option '--from'")


def test_a_group_without_its_command_shows_its_help() -> None:
    result = invoke("dead-letters")

    assert result.exit_code == 2
    assert "Usage: redis-events dead-letters [OPTIONS] COMMAND" in result.output


def test_processor_help_is_the_processors_own() -> None:
    done = subprocess.run(
        [str(CLI), "processor", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: redis-events processor [-h]")
    for flag in ("--topic", "--concurrency", "--replay-from", "--stats-interval"):
        assert flag in done.stdout


def test_processor_errors_name_it_as_it_was_started() -> None:
    done = subprocess.run(
        [str(CLI), "processor", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.endswith(
        "redis-events processor: error: unrecognized arguments: --no-such-flag\n"
    )


def test_processor_passes_its_exit_code_through() -> None:
    port = free_port()

    result = invoke("processor", "--redis-url", f"redis://127.0.0.1:{port}/0")

    assert result.exit_code == 2
    assert f"redis://127.0.0.1:{port}/0" in result.output


def test_every_command_explains_itself_in_its_help() -> None:
    listing = invoke("--help")

    assert listing.exit_code == 0
    for command in ("publish", "tail", "replay", "processor"):
        assert command in listing.output
        if command != "processor":
            help_text = invoke(command, "--help")
            assert help_text.exit_code == 0
            assert "Example" in help_text.output
            assert "--redis-url" in help_text.output


# -- asyncapi --------------------------------------------------------------

TOPIC_MODELS: dict[str, list[type[Event]]] = {
    "key_submission": [KeySubmitted],
    "profile_events": [ProfileCreated, ProfileUpdated, ProfileDeleted],
    "processing_results": [KeyProcessed, ProfileProcessed],
}


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer (``#/a/b``) in ``document``."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref}: {key!r} is not in a mapping"
        assert key in node, f"{ref} does not resolve: no {key!r}"
        node = node[key]

    return node


def refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs_in(item)


def asyncapi_output(fmt: str, *extra: str) -> dict[str, Any]:
    result = invoke("asyncapi", "--format", fmt, *extra)
    assert result.exit_code == 0, result.output
    loaded = (
        json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    )
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_asyncapi_document_parses_and_every_reference_resolves(fmt: str) -> None:
    document = asyncapi_output(fmt)

    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "redis-events"
    refs = list(refs_in(document))
    assert len(refs) > 50
    for ref in refs:
        resolve(document, ref)

    for operation in document["operations"].values():
        assert operation["action"] in {"send", "receive"}
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            # AsyncAPI 3.0: an operation's messages are its channel's.
            assert message["$ref"].startswith(channel_ref + "/messages/")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_asyncapi_has_both_transports_and_every_model_of_every_topic(fmt: str) -> None:
    document = asyncapi_output(fmt)
    channels, schemas = document["channels"], document["components"]["schemas"]

    assert len(channels) == 2 * len(TOPIC_MODELS)
    assert len(document["operations"]) == 4 * len(TOPIC_MODELS)
    for topic, models in TOPIC_MODELS.items():
        pubsub, stream = channels[f"{topic}.pubsub"], channels[f"{topic}.stream"]
        assert pubsub["address"] == topic
        assert stream["x-redis-stream-key"] == f"redis-events:{{{topic}}}"
        names = [model.__name__ for model in models]
        assert list(pubsub["messages"]) == names
        assert list(stream["messages"]) == names
        for model in models:
            own = model.model_json_schema()
            assert set(schemas[model.__name__]["properties"]) == set(own["properties"])
            assert schemas[model.__name__]["required"] == own["required"]

    union = schemas["profile_events.payload"]
    assert [item["$ref"] for item in union["oneOf"]] == [
        "#/components/schemas/ProfileCreated",
        "#/components/schemas/ProfileUpdated",
        "#/components/schemas/ProfileDeleted",
    ]
    assert union["discriminator"] == "event_type"
    # Nested models are schemas of their own, referenced by the results.
    assert {"KeyResult", "ProfileResult"} <= set(schemas)


def test_asyncapi_key_value_schema_holds_no_sample_and_the_url_no_password() -> None:
    document = asyncapi_output(
        "json", "--redis-url", "redis://:hunter2@db.example:6380/3"
    )

    key_value = document["components"]["schemas"]["KeySubmitted"]["properties"][
        "key_value"
    ]
    assert key_value["format"] == "password"
    assert key_value["writeOnly"] is True
    assert not {"examples", "example", "default", "const", "enum"} & set(key_value)
    assert document["servers"]["redis"]["host"] == "db.example:6380"
    assert document["servers"]["redis"]["pathname"] == "/3"
    assert "hunter2" not in json.dumps(document)


def test_asyncapi_writes_yaml_to_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.yaml"

    result = invoke("asyncapi", "--output", str(path))

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    document = yaml.safe_load(path.read_text())
    assert document["asyncapi"] == "3.0.0"
    assert "&id" not in path.read_text()


@pytest.mark.parametrize("transport", ["pubsub", "stream"])
def test_tail_with_redis_unreachable_exits_1_with_the_address(transport: str) -> None:
    port = free_port()

    result = invoke(
        "tail",
        "t",
        "--transport",
        transport,
        "--redis-url",
        f"redis://127.0.0.1:{port}",
    )

    assert result.exit_code == 1
    assert f"Redis at redis://127.0.0.1:{port} is unavailable" in result.output
    assert "Traceback" not in result.output


@pytest.mark.redis
def test_output_closed_by_its_reader_ends_the_command_quietly(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"cli-{uid}"
    pipe = r.pipeline(transaction=False)
    for n in range(3000):
        pipe.xadd(
            stream_of(topic), {"data": json.dumps({"event_type": "tick", "n": n})}
        )
    pipe.execute()

    # Like `redis-events replay ... | head -1`: far more than a pipe holds.
    process = subprocess.Popen(
        [str(CLI), "replay", topic, "--from", "all", "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    process.stdout.close()
    _, stderr = process.communicate(timeout=EXIT_TIMEOUT)

    assert f"  {topic}  tick" in first.decode()
    assert process.returncode == 0, stderr
    assert b"Traceback" not in stderr
    assert b"error" not in stderr


@pytest.mark.redis
def test_tail_into_a_pipe_closed_by_its_reader_stops_with_exit_0(
    redis_url: str, r: redis.Redis, uid: str, tmp_path: Path
) -> None:
    topic = f"cli-{uid}"
    stderr_path = tmp_path / "tail.err"
    with stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [str(CLI), "tail", topic, "--json", "--redis-url", redis_url],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        poll_until(lambda: "Following" in stderr_path.read_text(), timeout=15)
        pipe = r.pipeline(transaction=False)
        for n in range(3000):
            pipe.publish(topic, json.dumps({"event_type": "tick", "n": n}))
        pipe.execute()
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        process.stdout.close()
        code = process.wait(timeout=EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    stderr = stderr_path.read_text()
    assert first["event"]["n"] == 0
    assert code == 0, stderr
    assert "(the output was closed)" in stderr
    assert "Traceback" not in stderr
