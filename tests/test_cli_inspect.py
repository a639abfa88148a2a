"""``redis-events groups``, ``dead-letters`` and ``top`` against a real server.

Commands run in click's ``CliRunner``; a command calls ``anyio.run`` itself,
so async tests run it in a worker thread while their subscribers keep
running on the test's event loop. Every topic and group carries ``uid``.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from click.testing import CliRunner, Result

from redis_events import EventPublisher, EventSubscriber
from redis_events._keys import dead_letter_key, stream_key
from redis_events._log_format import UNREACHABLE_HINT
from redis_events.cli import main
from tests.helpers import client_names, poll_until, wait_until
from tests.redis_server import free_port

if TYPE_CHECKING:
    from pathlib import Path

    import redis

pytestmark = pytest.mark.redis

FAST: dict[str, Any] = {
    "retry_backoff": 0.1,
    "block_seconds": 0.3,
    "instance_stats_interval": 0.1,
    "instance_stats_ttl": 2,
}
SECRET = "SECRET-cli-77ab"
# Wide enough that no table cell is folded.
WIDE = {"COLUMNS": "250"}


def invoke(*args: str) -> Result:
    """Run ``redis-events ARGS`` in-process (no input) and return the result."""
    return CliRunner().invoke(main, list(args), env=WIDE)


async def ainvoke(*args: str) -> Result:
    """``invoke`` from an async test: in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: invoke(*args))


def subscriber(url: str, group: str, **options: Any) -> EventSubscriber:
    """Return a stream subscriber with short timings, reading from the start."""
    return EventSubscriber(
        url, transport="stream", group=group, start_from="all", **(FAST | options)
    )


async def publish(url: str, topic: str, numbers: range) -> list[str]:
    """Publish ``{"n": n}`` per number; return the entry ids."""
    async with EventPublisher(url, transport="stream") as pub:
        return [
            str(i) for i in await pub.publish_many(topic, [{"n": n} for n in numbers])
        ]


async def backlog(url: str, r: redis.Redis, topic: str, group: str) -> None:
    """Leave ``group`` with 3 handled entries and a lag of 5 on ``topic``."""
    handled: list[int] = []
    sub = subscriber(url, group, consumer="gone")

    @sub.on(topic)
    async def handle(topic: str, event: dict[str, Any]) -> None:
        handled.append(event["n"])

    await publish(url, topic, range(3))
    async with sub:
        await wait_until(
            lambda: (
                len(handled) == 3
                and int(r.xpending(stream_key(topic), group)["pending"]) == 0
            )
        )

    await publish(url, topic, range(3, 8))


def cells(line: str) -> list[str]:
    """Return the cells of one row of a rich table, stripped."""
    return [cell.strip() for cell in line.strip("│ ").split("│")]


async def test_groups_json_gives_lag_pending_and_consumers(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}-t", f"{uid}-g"
    await backlog(redis_url, r, topic, group)

    result = await ainvoke("groups", topic, "--json", "--redis-url", redis_url)
    table = await ainvoke("groups", topic, "--redis-url", redis_url)

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert (row["topic"], row["group"], row["lag"], row["pending"]) == (
        topic,
        group,
        5,
        0,
    )
    assert [c["name"] for c in row["consumers"]] == ["gone"]
    assert table.exit_code == 0, table.output
    assert "Consumer groups" in table.output
    assert group in table.output
    assert "gone" in table.output


async def test_groups_shows_an_instances_handled_total_once_for_its_topics(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    first, second, group = f"{uid}-a", f"{uid}-b", f"{uid}-g"
    handled: list[int] = []
    sub = subscriber(redis_url, group, consumer=f"{uid}-c")

    @sub.on(first, second)
    async def handle(topic: str, event: dict[str, Any]) -> None:
        handled.append(event["n"])

    async with sub:
        await publish(redis_url, first, range(2))
        await publish(redis_url, second, range(3))
        await wait_until(lambda: len(handled) == 5)
        await wait_until(
            lambda: (
                r.hget(f"redis-events:instances:{group}:{uid}-c", "events_handled")
                == "5"
            )
        )
        table = await ainvoke("groups", first, second, "--redis-url", redis_url)

    assert table.exit_code == 0, table.output
    rows = [cells(line) for line in table.output.splitlines() if f"{uid}-c" in line]
    assert [row[0] for row in rows] == [first, second]
    assert [row[5] for row in rows] == ["5", ""]
    assert "total handled" in table.output
    assert "total handled: the instance's count, all its topics" in table.output


def test_an_unknown_topic_exits_2_and_an_unreachable_redis_1_with_what_to_do(
    redis_url: str, uid: str
) -> None:
    unknown = invoke("groups", f"{uid}-nothing", "--redis-url", redis_url)
    bad_id = invoke(
        "dead-letters", "show", f"{uid}-any", "12-x", "--redis-url", redis_url
    )
    down = invoke("top", "--once", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")

    unknown_letters = invoke(
        "dead-letters", "list", f"{uid}-nothing", "--redis-url", redis_url
    )
    no_count = invoke(
        "dead-letters", "list", f"{uid}-any", "--count", "0", "--redis-url", redis_url
    )

    assert unknown.exit_code == 2
    assert f"unknown topic '{uid}-nothing'" in unknown.output
    # groups may leave the topic out; dead-letters list may not.
    assert "leave the topic out to list every topic" in unknown.output
    assert unknown_letters.exit_code == 2
    assert f"unknown topic '{uid}-nothing'" in unknown_letters.output
    assert "leave the topic out" not in unknown_letters.output
    assert no_count.exit_code == 2
    assert "'--count'" in no_count.output
    assert down.exit_code == 1
    assert "is unavailable" in down.output
    assert down.output.rstrip().endswith(UNREACHABLE_HINT)
    assert bad_id.exit_code == 2
    assert "'12-x' is not a stream entry id" in bad_id.output


def test_redis_url_comes_from_the_environment(
    redis_url: str, uid: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"{uid}-env"
    r.xadd(dead_letter_key(topic), {"data": "{}", "reason": "x", "original_id": "1-1"})
    monkeypatch.delenv("REDIS_EVENTS_REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", redis_url)

    result = invoke("dead-letters", "list", topic, "--json")

    assert result.exit_code == 0, result.output
    assert [d["reason"] for d in json.loads(result.output)] == ["x"]


async def test_dead_letters_list_show_requeue_and_purge(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, group = f"{uid}-d", f"{uid}-g"
    failing = True
    handled: list[int] = []
    sub = subscriber(redis_url, group, max_deliveries=1)

    @sub.on(topic)
    async def handle(topic: str, event: dict[str, Any]) -> None:
        if failing and event["n"] < 3:
            raise ValueError("declined")

        handled.append(event["n"])

    dead = dead_letter_key(topic)
    async with sub:
        ids = await publish(redis_url, topic, range(4))
        r.xadd(stream_key(topic), {"data": f'{{"key_value": "{SECRET}"'})
        await wait_until(lambda: r.xlen(dead) == 4 and handled == [3])
        listed = await ainvoke(
            "dead-letters", "list", topic, "--json", "--redis-url", redis_url
        )
        letters = json.loads(listed.output)
        table = await ainvoke("dead-letters", "list", topic, "--redis-url", redis_url)
        show = await ainvoke(
            "dead-letters", "show", topic, letters[0]["id"], "--redis-url", redis_url
        )
        shown_secret = await ainvoke(
            "dead-letters",
            "show",
            topic,
            letters[3]["id"],
            "--json",
            "--redis-url",
            redis_url,
        )
        failing = False
        requeued = await ainvoke(
            "dead-letters", "requeue", topic, "--id", letters[0]["id"], "--id",
            letters[1]["id"], "--redis-url", redis_url,
        )  # fmt: skip
        await wait_until(lambda: sorted(handled) == [0, 1, 3])
        again = await ainvoke(
            "dead-letters",
            "requeue",
            topic,
            "--id",
            letters[0]["id"],
            "--redis-url",
            redis_url,
        )
        refused = await ainvoke(
            "dead-letters", "purge", topic, "--all", "--redis-url", redis_url
        )
        purged = await ainvoke(
            "dead-letters", "purge", topic, "--id", letters[2]["id"], "--yes",
            "--redis-url", redis_url,
        )  # fmt: skip
        rest = await ainvoke(
            "dead-letters", "requeue", topic, "--all", "--redis-url", redis_url
        )
        await wait_until(lambda: r.xlen(dead) == 1)

    assert listed.exit_code == 0, listed.output
    assert [d["original_id"] for d in letters[:3]] == ids[:3]
    assert letters[3]["reason"].startswith("invalid: ")
    assert table.exit_code == 0
    assert f"Dead letters of {topic} (4 of 4)" in table.output
    assert show.exit_code == 0, show.output
    assert "handler failed 1 times" in show.output
    assert '"n": 0' in show.output
    assert shown_secret.exit_code == 0, shown_secret.output
    assert SECRET not in shown_secret.output
    assert "not JSON: not shown" in json.loads(shown_secret.output)["data"]
    assert requeued.exit_code == 0, requeued.output
    assert "Requeued 2 dead letters" in requeued.output
    assert again.exit_code == 1
    assert "not found (already requeued or purged?)" in again.output
    # No --yes and no answer: nothing deleted.
    assert refused.exit_code == 1
    assert "Nothing purged." in refused.output
    assert "Aborted" not in refused.output
    assert purged.exit_code == 0, purged.output
    assert "Deleted 1 dead letters" in purged.output
    # The invalid entry comes back as a dead letter again.
    assert rest.exit_code == 0, rest.output
    assert "Requeued 1 dead letters" in rest.output
    assert sorted(handled) == [0, 1, 3]


@pytest.mark.parametrize("answer", ["n\n", "\n"], ids=["no", "default"])
def test_purge_answered_no_deletes_nothing_and_exits_1(
    redis_url: str, r: redis.Redis, uid: str, answer: str
) -> None:
    topic = f"{uid}-p"
    r.xadd(dead_letter_key(topic), {"data": '{"n": 1}', "reason": "x"})

    result = CliRunner().invoke(
        main,
        ["dead-letters", "purge", topic, "--all", "--redis-url", redis_url],
        input=answer,
    )

    assert result.exit_code == 1
    assert "Delete every dead letter of" in result.output
    assert result.output.endswith("Nothing purged.\n")
    assert r.xlen(dead_letter_key(topic)) == 1


def test_a_missing_dead_letter_is_an_error_line_like_every_other(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic = f"{uid}-m"
    r.xadd(dead_letter_key(topic), {"data": '{"n": 1}', "reason": "x"})

    shown = CliRunner().invoke(
        main,
        ["dead-letters", "show", topic, "123-0", "--redis-url", redis_url],
        prog_name="redis-events",
    )
    requeued = CliRunner().invoke(
        main,
        ["dead-letters", "requeue", topic, "--id", "123-0", "--redis-url", redis_url],
        prog_name="redis-events",
    )

    assert shown.exit_code == 1
    assert shown.output == (
        f"redis-events dead-letters show: error: no dead letter 123-0 on topic "
        f"'{topic}'; list them with 'redis-events dead-letters list {topic}'\n"
    )
    assert requeued.exit_code == 1
    assert requeued.output.endswith(
        "redis-events dead-letters requeue: error: not found (already requeued "
        "or purged?): 123-0\n"
    )


def test_requeue_and_purge_need_ids_or_all(redis_url: str, uid: str) -> None:
    result = invoke("dead-letters", "requeue", f"{uid}-x", "--redis-url", redis_url)
    both = invoke(
        "dead-letters",
        "purge",
        f"{uid}-x",
        "--all",
        "--id",
        "1-1",
        "--redis-url",
        redis_url,
    )

    assert result.exit_code == 2
    assert "requeue: error: give either --id ID (one or more) or --all" in (
        result.output
    )
    assert both.exit_code == 2


async def test_top_once_shows_lag_dead_letters_and_a_running_instance(
    redis_url: str, r: redis.Redis, uid: str
) -> None:
    topic, lagging, live = f"{uid}-top", f"{uid}-lagging", f"{uid}-live"
    await backlog(redis_url, r, topic, lagging)
    r.xadd(dead_letter_key(topic), {"data": "{}", "reason": "x"})
    handled: list[int] = []
    sub = subscriber(redis_url, live, consumer=f"{uid}-c")

    @sub.on(topic)
    async def handle(topic: str, event: dict[str, Any]) -> None:
        handled.append(event["n"])

    async with sub:
        await wait_until(lambda: len(handled) == 8)
        await wait_until(
            lambda: (
                r.hget(f"redis-events:instances:{live}:{uid}-c", "events_handled")
                == "8"
            )
        )
        result = await ainvoke(
            "top", topic, "--once", "--interval", "0.1", "--redis-url", redis_url
        )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    [topic_row] = [
        line
        for line in lines
        if topic in line and "│" in line and lagging not in line and live not in line
    ]
    [lag_row] = [line for line in lines if lagging in line]
    [live_row] = [
        line
        for line in lines
        if live in line and "handled" not in line and f"{uid}-c" not in line
    ]
    [instance_row] = [line for line in lines if f"{uid}-c" in line]
    assert cells(topic_row)[2:] == ["8", "8", "1"]
    assert cells(lag_row)[2:] == ["5", "0", "-", "1"]
    assert cells(live_row)[2:5] == ["0", "0", "-"]
    assert cells(instance_row)[:4] == [live, f"{uid}-c", "stream", topic]
    assert cells(instance_row)[4:9] == ["8", "8", "0", "0", "0"]


def drain(fd: int, into: bytearray) -> None:
    """Read ``fd`` until it ends, as a terminal would, keeping what came."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return

        if not chunk:
            return

        into.extend(chunk)


@pytest.mark.parametrize("tty", [False, True], ids=["file", "tty"])
def test_top_exits_0_on_ctrl_c(
    redis_url: str, r: redis.Redis, uid: str, tmp_path: Path, tty: bool
) -> None:
    name, topic = f"top-{uid}", f"{uid}-ctrl-c"
    r.xadd(stream_key(topic), {"data": "{}"})
    env = os.environ | {
        "REDIS_URL": redis_url,
        "REDIS_EVENTS_CLIENT_NAME": name,
        "COLUMNS": "120",
    }
    env.pop("REDIS_EVENTS_REDIS_URL", None)
    command = (
        sys.executable,
        "-m",
        "redis_events.cli",
        "top",
        topic,
        "--interval",
        "0.2",
    )
    shown = bytearray()
    if tty:
        # A terminal: Live redraws in place, and the output is read as it
        # comes (an unread terminal would fill up and block the writer).
        primary, secondary = pty.openpty()
        out: Any = secondary
        reader = threading.Thread(target=drain, args=(primary, shown), daemon=True)
        reader.start()
    else:
        # A file, not a pipe: it is read after the exit, when the last frame
        # has been printed.
        out = (tmp_path / "top.out").open("w")

    with subprocess.Popen(
        command, stdout=out, stderr=subprocess.PIPE, env=env, text=True
    ) as process:
        # The child has its own copy of the output.
        if tty:
            os.close(secondary)
        else:
            out.close()

        try:
            # Connected (its client is named); on a terminal, wait for the
            # first frame too, so that the signal meets the refresh loop.
            poll_until(lambda: f"{name}-admin" in client_names(r, name))
            if tty:
                poll_until(lambda: topic.encode() in shown)
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=20)
            stderr = process.stderr.read() if process.stderr else ""
        finally:
            if process.poll() is None:
                process.kill()

    if tty:
        reader.join(timeout=10)
        os.close(primary)
    else:
        shown.extend((tmp_path / "top.out").read_bytes())

    assert code == 0, stderr
    assert "Traceback" not in stderr
    if tty:
        # The frame drawn before the signal is still on the screen.
        assert topic.encode() in shown
