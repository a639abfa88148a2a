"""Regressions of the break-it review of the CLI, metrics and tracing.

One test per defect found by attacking the ``redis-events`` commands, the
metrics server and the trace envelope; each failed before its fix. The
defect is in the docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.test_cli_events import invoke, stream_of

if TYPE_CHECKING:
    from pathlib import Path

    import redis


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
