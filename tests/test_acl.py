"""ACL users: the README's rules, created on a real redis-server and used.

The ``ACL SETUSER`` lines are read from the fenced block under the README's
"ACL users" heading, so the documented rules are the tested ones; until that
section exists the same lines come from ``ACL_LINES``, and one test fails
until both agree. The server requires a password for its default user, so a
client that ignored the credentials it was given could not connect at all.

Each user runs its role end to end on its transport (credentials from the
URL, from ``REDIS_URL`` and from the keyword form), with no command refused
(``ACL LOG`` stays empty). ``ACL DRYRUN`` shows what each user may not do.
Users that lack one right get one ``PermissionDeniedError`` naming the
operation and the topic.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import anyio
import pytest
import redis

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    PROCESSING_RESULTS_TOPIC,
    PROFILE_EVENTS_TOPIC,
    EventProcessor,
    EventPublisher,
    EventRegistry,
    EventSubscriber,
    KeySubmitted,
    PermissionDeniedError,
    current_delivery,
)
from redis_events._keys import dead_letter_key, stream_key
from tests.helpers import RawSubscriber, command_calls, wait_until
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.redis

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "ACL users"

# The README's "ACL users" block, line for line. Keep the two identical:
# test_readme_documents_the_tested_acl_lines fails when they differ.
ACL_LINES = (
    "ACL SETUSER events-publisher reset on >publisher-password +ping"
    " +client|setname +publish &key_submission &profile_events",
    "ACL SETUSER events-processor reset on >processor-password +ping"
    " +client|setname +subscribe &key_submission &profile_events"
    ' &processing_results "(+publish &processing_results)"'
    ' "(+hset +expire +del +multi +exec ~redis-events:instances:*)"',
    "ACL SETUSER events-stream-publisher reset on >stream-publisher-password"
    " +ping +client|setname +xadd %W~redis-events:{key_submission}"
    " %W~redis-events:{profile_events}",
    "ACL SETUSER events-stream-processor reset on >stream-processor-password"
    " +ping +client|setname +xgroup|create +xreadgroup +xack +xclaim +xautoclaim"
    " +xpending +xinfo|groups +xrange +evalsha +script|load"
    " ~redis-events:{key_submission} ~redis-events:{profile_events}"
    " ~redis-events:{processing_results} ~redis-events:{key_submission}:dead"
    " ~redis-events:{profile_events}:dead ~redis-events:{processing_results}:dead"
    ' "(+xadd %W~redis-events:{processing_results}'
    " %W~redis-events:{key_submission}:dead %W~redis-events:{profile_events}:dead"
    ' %W~redis-events:{processing_results}:dead)"'
    ' "(+hset +expire +del +multi +exec ~redis-events:instances:*)"',
)
PUBLISHER = "events-publisher"
PROCESSOR = "events-processor"
STREAM_PUBLISHER = "events-stream-publisher"
STREAM_PROCESSOR = "events-stream-processor"

ADMIN_PASSWORD = f"admin-{secrets.token_hex(8)}"
VALID_KEY = "acl-test-key-123"
# Short stream timings: claims every 0.3 s of entries idle for 0.3 s, and
# failed writes tried again within 0.5 s.
FAST: dict[str, Any] = {
    "block_seconds": 0.3,
    "claim_interval": 0.3,
    "claim_min_idle": 0.3,
    "retry_backoff": 0.05,
    "reconnect_backoff_cap": 0.5,
}
# The commands the stream processor's rules allow, as INFO commandstats names.
STREAM_PROCESSOR_COMMANDS = (
    "ping",
    "client|setname",
    "xgroup|create",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xpending",
    "xadd",
    "evalsha",
    "script|load",
    "xinfo|groups",
    "xrange",
    "hset",
    "expire",
    "multi",
    "exec",
    "del",
)


@dataclass(frozen=True)
class AclUser:
    """One ``ACL SETUSER`` line: the user's name, password and rule tokens."""

    name: str
    password: str
    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, line: str) -> AclUser:
        """Read a user from an ``ACL SETUSER`` line as redis-cli splits it."""
        tokens = tuple(shlex.split(line))
        assert tokens[:2] == ("ACL", "SETUSER"), line
        passwords = [token[1:] for token in tokens if token.startswith(">")]
        assert len(passwords) == 1, f"one >password per line: {line}"
        return cls(name=tokens[2], password=passwords[0], tokens=tokens)

    def url(self, server: RedisServer) -> str:
        """Return the ``redis://user:password@...`` URL of this user."""
        user, password = quote(self.name, safe=""), quote(self.password, safe="")
        return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"

    def lacking(self, right: str) -> AclUser:
        """Return a copy under another name without ``right`` (also in a selector)."""
        tokens = list(self.tokens)
        suffix = re.sub(r"[^a-z]+", "-", right).strip("-")
        tokens[2] = f"{self.name}-without-{suffix}"
        if right in tokens:
            tokens.remove(right)
        else:
            index = next(
                i for i, t in enumerate(tokens) if t.startswith("(") and right in t
            )
            words = [w for w in tokens[index][1:-1].split() if w != right]
            tokens[index] = f"({' '.join(words)})"

        assert tokens != list(self.tokens), f"{self.name} has no {right}"
        return AclUser(name=tokens[2], password=self.password, tokens=tuple(tokens))

    def create(self, admin: redis.Redis) -> None:
        """Run this user's ``ACL SETUSER`` line on the server."""
        reply = admin.execute_command(*self.tokens)  # type: ignore[no-untyped-call]  # untyped upstream
        assert reply in ("OK", b"OK")


class ProtectedRedisServer(RedisServer):
    """A redis-server whose default user needs ``ADMIN_PASSWORD``."""

    def __init__(self, directory: Path) -> None:
        args = ("--save", "", "--appendonly", "no", "--requirepass", ADMIN_PASSWORD)
        super().__init__(directory, args=args)

    def client(self, **options: object) -> redis.Redis:
        """Return an administrator's client (the default user)."""
        return super().client(password=ADMIN_PASSWORD, **options)


def readme_acl_lines(path: Path = README) -> list[str] | None:
    """Return the ``ACL SETUSER`` lines of the "ACL users" section, if any."""
    level = 0
    in_fence = False
    lines: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue

        heading = None if in_fence else re.match(r"(#+)\s+(.*?)\s*$", line)
        if heading is not None:
            if level and len(heading[1]) <= level:
                break

            if heading[2] == HEADING:
                level = len(heading[1])
        elif level and in_fence and line.startswith("ACL SETUSER"):
            lines.append(line)

    return lines or None


def acl_users() -> dict[str, AclUser]:
    """Return the users the README defines, by name."""
    users = [AclUser.parse(line) for line in readme_acl_lines() or ACL_LINES]
    return {user.name: user for user in users}


USERS = acl_users()


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A password-protected redis-server for this module's users."""
    server = ProtectedRedisServer(tmp_path_factory.mktemp("redis-acl")).start()
    yield server
    server.stop()


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    """An administrator's client on an empty server with the README's users."""
    client = acl_server.client()
    client.flushall()
    for user in USERS.values():
        user.create(client)

    client.acl_log_reset()
    client.config_resetstat()
    yield client
    client.close()


@pytest.fixture
def no_env_url(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Clear the URL variables, so that each test sets the one it means."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_EVENTS_REDIS_URL", raising=False)
    return monkeypatch


def refused(admin: redis.Redis) -> list[tuple[str, str, str]]:
    """Return ``ACL LOG`` as (user, reason, object), without CLIENT SETINFO.

    redis-py sends CLIENT SETINFO on each connection and ignores a refusal;
    Redis 7.0 and 7.1 do not have it, 7.2+ log the refusal (see the README).
    """
    entries: list[dict[str, Any]] = admin.acl_log()
    return [
        (str(e["username"]), str(e["reason"]), str(e["object"]))
        for e in entries
        if e["object"] != "client|setinfo"
    ]


def connection_users(admin: redis.Redis) -> set[tuple[str, str]]:
    """Return the (connection name, user) pairs of the library's connections."""
    entries: list[dict[str, str]] = admin.client_list()
    return {
        (e["name"], e["user"])
        for e in entries
        if e.get("name", "").startswith("redis-events")
    }


def encoded(event: KeySubmitted) -> bytes:
    """Return a ``key_submitted`` event as the wire carries it."""
    return EventRegistry().encode(KEY_SUBMISSION_TOPIC, event)


def key_event(token_name: str, key_value: str = VALID_KEY) -> KeySubmitted:
    """Return a ``key_submitted`` event."""
    return KeySubmitted(key_value=key_value, token_name=token_name)


# The documented rules.


def test_readme_documents_the_tested_acl_lines() -> None:
    lines = readme_acl_lines()

    assert lines is not None, (
        f"README.md has no fenced block of ACL SETUSER lines under a "
        f"'{HEADING}' heading; paste the section (see ACL_LINES)"
    )
    assert lines == list(ACL_LINES)


def test_readme_parser_reads_only_the_acl_users_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\n## Other\n\n```text\nACL SETUSER elsewhere on\n```\n\n"
        "## ACL users\n\nText.\n\n```text\n# not a heading\n"
        "ACL SETUSER a on\nACL SETUSER b on\n```\n\n### Notes\n\n"
        "```text\nACL SETUSER c on\n```\n\n## Next\n\n"
        "```text\nACL SETUSER after on\n```\n"
    )

    assert readme_acl_lines(readme) == [
        "ACL SETUSER a on",
        "ACL SETUSER b on",
        "ACL SETUSER c on",
    ]
    readme.write_text("# Title\n\n## Usage\n")
    assert readme_acl_lines(readme) is None


def test_there_is_one_user_per_role_and_transport() -> None:
    assert set(USERS) == {PUBLISHER, PROCESSOR, STREAM_PUBLISHER, STREAM_PROCESSOR}


# (user, command, allowed): ACL DRYRUN of each against the user's rules.
DRYRUNS = [
    (PUBLISHER, "PUBLISH key_submission x", True),
    (PUBLISHER, "PUBLISH profile_events x", True),
    (PUBLISHER, "PUBLISH processing_results x", False),
    (PUBLISHER, "SUBSCRIBE key_submission", False),
    (PUBLISHER, "XADD redis-events:{key_submission} * data x", False),
    (PUBLISHER, "CLIENT KILL ID 1", False),
    (PUBLISHER, "FLUSHALL", False),
    (PUBLISHER, "SELECT 1", False),
    (PROCESSOR, "SUBSCRIBE key_submission profile_events processing_results", True),
    (PROCESSOR, "PUBLISH processing_results x", True),
    (PROCESSOR, "PUBLISH key_submission x", False),
    (PROCESSOR, "PUBLISH profile_events x", False),
    (PROCESSOR, "SUBSCRIBE other_topic", False),
    (PROCESSOR, "PSUBSCRIBE *", False),
    (PROCESSOR, "KEYS *", False),
    (PROCESSOR, "HSET redis-events:instances:g:c events_handled 1", True),
    (PROCESSOR, "EXPIRE redis-events:instances:g:c 15", True),
    (PROCESSOR, "HSET other events_handled 1", False),
    (STREAM_PUBLISHER, "XADD redis-events:{key_submission} MAXLEN ~ 10 * data x", True),
    (STREAM_PUBLISHER, "XADD redis-events:{profile_events} * data x", True),
    (STREAM_PUBLISHER, "XADD redis-events:{processing_results} * data x", False),
    (STREAM_PUBLISHER, "XRANGE redis-events:{key_submission} - +", False),
    (STREAM_PUBLISHER, "XADD redis-events:{key_submission}:dead * data x", False),
    (STREAM_PUBLISHER, "DEL redis-events:{key_submission}", False),
    (STREAM_PUBLISHER, "PUBLISH key_submission x", False),
    (
        STREAM_PROCESSOR,
        "XREADGROUP GROUP g c COUNT 1 BLOCK 1 STREAMS redis-events:{key_submission}"
        " redis-events:{profile_events} redis-events:{processing_results} > > >",
        True,
    ),
    (STREAM_PROCESSOR, "XADD redis-events:{processing_results} * data x", True),
    (STREAM_PROCESSOR, "XADD redis-events:{profile_events}:dead * data x", True),
    (STREAM_PROCESSOR, "XRANGE redis-events:{key_submission} - +", True),
    (STREAM_PROCESSOR, "XADD redis-events:{key_submission} * data x", False),
    (STREAM_PROCESSOR, "XADD redis-events:{profile_events} * data x", False),
    (
        STREAM_PROCESSOR,
        "EVALSHA 0123456789012345678901234567890123456789 2"
        " redis-events:{key_submission} redis-events:{key_submission}:dead g 1-1",
        True,
    ),
    (STREAM_PROCESSOR, "EVAL return 0", False),
    (STREAM_PROCESSOR, "SCRIPT FLUSH", False),
    (STREAM_PROCESSOR, "DEL redis-events:{key_submission}:dead", False),
    (STREAM_PROCESSOR, "DEL redis-events:instances:g:c", True),
    (STREAM_PROCESSOR, "HSET redis-events:instances:g:c in_flight 0", True),
    (STREAM_PROCESSOR, "HSET redis-events:{key_submission} x 1", False),
    (STREAM_PROCESSOR, "EXPIRE redis-events:{key_submission} 1", False),
    (STREAM_PROCESSOR, "XADD redis-events:{other}:dead * data x", False),
    (STREAM_PROCESSOR, "XGROUP DESTROY redis-events:{key_submission} g", False),
    (STREAM_PROCESSOR, "XTRIM redis-events:{key_submission} MAXLEN 0", False),
    (STREAM_PROCESSOR, "DEL redis-events:{key_submission}", False),
    (STREAM_PROCESSOR, "XREADGROUP GROUP g c STREAMS redis-events:{other} >", False),
    (STREAM_PROCESSOR, "SUBSCRIBE key_submission", False),
    (STREAM_PROCESSOR, "PUBLISH processing_results x", False),
]


@pytest.mark.parametrize(("user", "command", "allowed"), DRYRUNS)
def test_each_user_may_run_only_what_its_role_needs(
    admin: redis.Redis, user: str, command: str, allowed: bool
) -> None:
    dryrun = ("ACL", "DRYRUN", user, *command.split())
    reply = admin.execute_command(*dryrun)  # type: ignore[no-untyped-call]  # untyped upstream

    assert (reply == "OK") is allowed, reply


# Each role end to end under its user.


async def test_pubsub_publisher_and_processor_run_under_their_acl_users(
    acl_server: RedisServer, admin: redis.Redis, no_env_url: pytest.MonkeyPatch
) -> None:
    # The processor's credentials come from its URL, the publisher's from
    # REDIS_URL.
    no_env_url.setenv("REDIS_URL", USERS[PUBLISHER].url(acl_server))
    processor = EventProcessor(USERS[PROCESSOR].url(acl_server))
    with RawSubscriber(admin, PROCESSING_RESULTS_TOPIC) as results:
        async with anyio.create_task_group() as tg:
            await tg.start(processor.run)
            async with EventPublisher() as pub:
                await pub.publish_key_submitted(VALID_KEY, "acl-valid")
                await pub.publish_key_submitted("no", "acl-invalid")
                await pub.publish_profile_created(7, {"plan": "pro"})
                await wait_until(lambda: processor.get_stats()["results_received"] >= 3)
                users = connection_users(admin)

            await processor.stop()

        results.flush()

    stats = processor.get_stats()
    assert results.count(PROCESSING_RESULTS_TOPIC) == 3
    assert stats["keys_processed"] == 2
    assert stats["profiles_processed"] == 1
    assert stats["results_received"] == 3
    assert stats["handler_errors"] == 0
    assert users == {
        ("redis-events-pub", PUBLISHER),
        ("redis-events-pub", PROCESSOR),
        ("redis-events-sub", PROCESSOR),
        ("redis-events-stats", PROCESSOR),
    }
    assert refused(admin) == []


async def test_hello_with_credentials_needs_no_extra_right(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    url = USERS[PUBLISHER].url(acl_server)
    async with EventPublisher(url, protocol=3) as pub:
        assert await pub.publish_profile_deleted(7) == 0

    assert command_calls(admin, "hello") >= 1
    assert refused(admin) == []


def stage_pending_entries(admin: redis.Redis, consumer: str) -> list[str]:
    """Leave entries of ``key_submission`` pending before the processor starts.

    One is pending for ``consumer`` itself (taken back at start, with
    XPENDING for its delivery count), one for a consumer that is gone (taken
    over with XAUTOCLAIM), and one not read yet is malformed (dead-lettered
    by a script: SCRIPT LOAD, EVALSHA). Returns the ids: own, orphaned, malformed.
    """
    key, group = stream_key(KEY_SUBMISSION_TOPIC), "redis-events"
    admin.xgroup_create(key, group, id="0", mkstream=True)
    ids = [str(admin.xadd(key, {"data": encoded(key_event("acl-own"))}))]
    admin.xreadgroup(group, consumer, {key: ">"}, count=1)
    ids.append(str(admin.xadd(key, {"data": encoded(key_event("acl-orphan"))})))
    admin.xreadgroup(group, "gone", {key: ">"}, count=1)
    ids.append(str(admin.xadd(key, {"data": '{"event_type":"key_submitted"}'})))
    return ids


def group_pending(admin: redis.Redis, topic: str) -> int:
    """Return the pending count of the processor's group on ``topic``."""
    groups: list[dict[str, Any]] = admin.xinfo_groups(stream_key(topic))
    return sum(int(g["pending"]) for g in groups if g["name"] == "redis-events")


async def test_stream_publisher_and_processor_run_under_their_acl_users(
    acl_server: RedisServer, admin: redis.Redis, no_env_url: pytest.MonkeyPatch
) -> None:
    own, orphan, malformed = stage_pending_entries(admin, "acl-c1")
    # The processor's credentials come from REDIS_URL, the publisher's from
    # the keyword form.
    no_env_url.setenv("REDIS_URL", USERS[STREAM_PROCESSOR].url(acl_server))
    processor = EventProcessor(transport="stream", consumer="acl-c1", **FAST)
    publisher = USERS[STREAM_PUBLISHER]

    def settled() -> bool:
        stats = processor.get_stats()
        return (
            stats["results_received"] >= 4
            and stats["dead_lettered"] == 1
            and all(
                group_pending(admin, topic) == 0
                for topic in (KEY_SUBMISSION_TOPIC, PROCESSING_RESULTS_TOPIC)
            )
        )

    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        async with EventPublisher(
            host="127.0.0.1",
            port=acl_server.port,
            username=publisher.name,
            password=publisher.password,
            transport="stream",
        ) as pub:
            await pub.publish_key_submitted("no", "acl-invalid")
            await pub.publish_profile_created(7, {"plan": "pro"})
            await wait_until(settled)
            users = connection_users(admin)

        info = await processor.subscriber.group_info()
        await processor.stop()

    stats = processor.get_stats()
    replayed = await processor.replay(start="all")

    # Own pending, orphaned and new keys, and the profile: four results.
    assert stats["keys_processed"] == 3
    assert stats["profiles_processed"] == 1
    assert stats["reclaimed"] == 1
    assert stats["dead_lettered"] == 1
    assert stats["handler_errors"] == 0
    letters: Any = admin.xrange(dead_letter_key(KEY_SUBMISSION_TOPIC))
    assert [fields["original_id"] for _, fields in letters] == [malformed]
    assert own != orphan
    assert {topic: row["pending"] for topic, row in info.items()} == {
        KEY_SUBMISSION_TOPIC: 0,
        PROFILE_EVENTS_TOPIC: 0,
        PROCESSING_RESULTS_TOPIC: 0,
    }
    # Replay: three keys (the malformed entry is skipped), one profile, and
    # the four results plus the four the replay itself published.
    assert replayed == {
        KEY_SUBMISSION_TOPIC: 3,
        PROFILE_EVENTS_TOPIC: 1,
        PROCESSING_RESULTS_TOPIC: 8,
    }
    assert admin.xlen(stream_key(PROCESSING_RESULTS_TOPIC)) == 8
    assert ("redis-events-pub", STREAM_PUBLISHER) in users
    assert ("redis-events-sub", STREAM_PROCESSOR) in users
    assert ("redis-events-stats", STREAM_PROCESSOR) in users
    assert refused(admin) == []
    unused = [c for c in STREAM_PROCESSOR_COMMANDS if not command_calls(admin, c)]
    assert unused == []


async def test_stream_processor_user_covers_retries_and_dead_letters(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    # Any stream consumer with the processor's rules: a failing handler is
    # retried (XCLAIM) and dead-lettered after max_deliveries (a script).
    key = stream_key(KEY_SUBMISSION_TOPIC)
    sub = EventSubscriber(
        USERS[STREAM_PROCESSOR].url(acl_server),
        transport="stream",
        group="acl-retries",
        start_from="all",
        max_deliveries=2,
        **FAST,
    )
    calls: dict[str, int] = {}

    @sub.on(KEY_SUBMISSION_TOPIC)
    async def flaky(topic: str, event: KeySubmitted) -> None:
        calls[event.token_name] = current_delivery().delivery_count
        if event.token_name == "always" or calls[event.token_name] == 1:
            raise RuntimeError("handler failure for the ACL test")

    for name in ("once", "always"):
        admin.xadd(key, {"data": encoded(key_event(name))})

    async with sub:
        await wait_until(lambda: sub.get_stats()["dead_lettered"] == 1)
        await wait_until(lambda: sub.get_stats()["acked"] == 1)

    assert calls == {"once": 2, "always": 2}
    assert admin.xlen(dead_letter_key(KEY_SUBMISSION_TOPIC)) == 1
    assert command_calls(admin, "xclaim") >= 2
    assert command_calls(admin, "evalsha") >= 1
    assert refused(admin) == []


# A user without a needed right.

Action = Literal["publish", "process"]

# (user, right removed, transport, action, operation and topic in the error)
MISSING_RIGHTS = [
    (PUBLISHER, "+publish", "pubsub", "publish", "PUBLISH", KEY_SUBMISSION_TOPIC),
    (
        PUBLISHER,
        "&key_submission",
        "pubsub",
        "publish",
        "PUBLISH",
        KEY_SUBMISSION_TOPIC,
    ),
    (
        STREAM_PUBLISHER,
        "+xadd",
        "stream",
        "publish",
        "XADD",
        KEY_SUBMISSION_TOPIC,
    ),
    (
        STREAM_PUBLISHER,
        "%W~redis-events:{key_submission}",
        "stream",
        "publish",
        "XADD",
        KEY_SUBMISSION_TOPIC,
    ),
    (
        PROCESSOR,
        "&processing_results",
        "pubsub",
        "process",
        "SUBSCRIBE",
        PROCESSING_RESULTS_TOPIC,
    ),
    (PROCESSOR, "+publish", "pubsub", "process", "PUBLISH", PROCESSING_RESULTS_TOPIC),
    (
        STREAM_PROCESSOR,
        "+xgroup|create",
        "stream",
        "process",
        "XGROUP CREATE",
        KEY_SUBMISSION_TOPIC,
    ),
    (
        STREAM_PROCESSOR,
        "+xreadgroup",
        "stream",
        "process",
        "XREADGROUP",
        KEY_SUBMISSION_TOPIC,
    ),
    (
        STREAM_PROCESSOR,
        "+xautoclaim",
        "stream",
        "process",
        "XAUTOCLAIM",
        KEY_SUBMISSION_TOPIC,
    ),
    (STREAM_PROCESSOR, "+xack", "stream", "process", "XACK", KEY_SUBMISSION_TOPIC),
    (
        STREAM_PROCESSOR,
        "%W~redis-events:{processing_results}",
        "stream",
        "process",
        "XADD",
        PROCESSING_RESULTS_TOPIC,
    ),
]
REPORT_WINDOW = 3.0


async def publish_refused(url: str, transport: str) -> BaseException:
    """Publish one key event; return what was raised."""
    async with EventPublisher(url, transport=transport) as pub:
        try:
            await pub.publish_key_submitted(VALID_KEY, "acl-lacking")
        except Exception as exc:
            return exc

    raise AssertionError("the publish was not refused")


def subscribed(admin: redis.Redis, transport: str) -> bool:
    """Tell whether a processor listens on ``key_submission`` (group created)."""
    if transport == "pubsub":
        counts: Any = admin.pubsub_numsub(KEY_SUBMISSION_TOPIC)
        return bool(counts[0][1])

    key = stream_key(KEY_SUBMISSION_TOPIC)
    if not admin.exists(key):
        return False

    groups: list[dict[str, Any]] = admin.xinfo_groups(key)
    return any(group["name"] == "redis-events" for group in groups)


def error_reports(
    raised: list[BaseException], caplog: pytest.LogCaptureFixture
) -> list[BaseException | str]:
    """Return what was raised, then message and exception of each ERROR record."""
    reports: list[BaseException | str] = list(raised)
    for record in caplog.records:
        if record.levelno >= logging.ERROR:
            reports.append(record.getMessage())
            if record.exc_info and record.exc_info[1] is not None:
                reports.append(record.exc_info[1])

    return reports


async def process_refused(
    url: str, transport: str, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> list[BaseException | str]:
    """Run a processor, feed it one key event, collect what it reports.

    Returns what ``run()`` raised, if anything, then the message and the
    exception of every record logged at ERROR or above, within
    ``REPORT_WINDOW`` seconds.
    """
    processor = EventProcessor(url, transport=transport, consumer="acl-c", **FAST)
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await processor.run()
        except Exception as exc:
            raised.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until(
            lambda: bool(raised) or subscribed(admin, transport), timeout=REPORT_WINDOW
        )
        if not raised:
            data = encoded(key_event("acl-lacking"))
            if transport == "pubsub":
                admin.publish(KEY_SUBMISSION_TOPIC, data)
            else:
                admin.xadd(stream_key(KEY_SUBMISSION_TOPIC), {"data": data})

        with suppress(AssertionError):
            await wait_until(
                lambda: bool(error_reports(raised, caplog)), timeout=REPORT_WINDOW
            )

        await processor.stop()

    return error_reports(raised, caplog)


def names(report: BaseException | str, operation: str, topic: str) -> bool:
    """Tell whether ``report`` is our refusal naming ``operation`` and ``topic``."""
    text = str(report)
    return (
        isinstance(report, PermissionDeniedError | str)
        and "lacks the ACL right" in text
        # Our operation, or Redis's own NOPERM text naming the command.
        and operation.lower() in text.lower()
        and topic in text
    )


@pytest.mark.fault
@pytest.mark.parametrize(
    ("user", "right", "transport", "action", "operation", "topic"), MISSING_RIGHTS
)
async def test_a_user_without_a_needed_right_gets_one_error_naming_what_and_where(
    acl_server: RedisServer,
    admin: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    user: str,
    right: str,
    transport: str,
    action: Action,
    operation: str,
    topic: str,
) -> None:
    lacking = USERS[user].lacking(right)
    lacking.create(admin)
    url = lacking.url(acl_server)
    caplog.set_level(logging.INFO)

    if action == "publish":
        error = await publish_refused(url, transport)
        assert type(error) is PermissionDeniedError, repr(error)
        assert names(error, operation, topic), str(error)
        assert isinstance(error.__cause__, redis.exceptions.NoPermissionError)
    else:
        reports = await process_refused(url, transport, admin, caplog)
        assert any(names(r, operation, topic) for r in reports), reports
        # Nothing but our own error escapes: no exception group, no raw
        # redis-py error.
        leaked = [r for r in reports if isinstance(r, BaseException)]
        assert all(type(r) is PermissionDeniedError for r in leaked), leaked

    assert lacking.password not in caplog.text
    assert any(entry[0] == lacking.name for entry in refused(admin))
