"""Regressions of the break-it review of the CLI, metrics and tracing.

One test per defect found by attacking the ``redis-events`` commands, the
metrics server and the trace envelope; each failed before its fix. The
defect is in the docstring.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.test_cli_events import Tails, invoke, stream_of, tails

if TYPE_CHECKING:
    from pathlib import Path

    import redis


__all__ = ["tails"]  # the fixture, imported for the tail tests here


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
