"""Dead-letter entries: parsing, redaction and the requeue script."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel, SecretStr

from redis_events import events
from redis_events._keys import DATA_FIELD

__all__ = ["REQUEUE_SCRIPT", "DeadLetter", "RequeueResult", "parse_dead_letter"]

# KEYS: dead-letter stream, source stream (same hash tag, so one cluster slot).
# ARGV: dead-letter entry id, MAXLEN of the source stream (0 = no trimming).
# Returns {1, new id} when moved, {0} when the entry is gone (already
# requeued or purged), {2} when it holds nothing to put back.
#
# One script per entry: Redis runs it whole, so an entry is either added to
# the source stream and removed from the dead letters, or untouched. It is
# never requeued twice (a second run finds it gone) and never lost.
REQUEUE_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return {0}
end
local fields = found[1][2]
local restored = {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 'data' then
    table.insert(restored, name)
    table.insert(restored, fields[i + 1])
  elseif string.sub(name, 1, 9) == 'original:' then
    table.insert(restored, string.sub(name, 10))
    table.insert(restored, fields[i + 1])
  end
end
if #restored == 0 then
  return {2}
end
local id
if ARGV[2] == '0' then
  id = redis.call('XADD', KEYS[2], '*', unpack(restored))
else
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(restored))
end
redis.call('XDEL', KEYS[1], ARGV[1])
return {1, id}
"""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a topic's dead-letter stream.

    Attributes:
        topic: The topic whose stream the event came from.
        id: The entry's id in the dead-letter stream (what requeue and purge
            take).
        original_id: The event's entry id in the source stream.
        reason: Why it was dead-lettered (``invalid: ...``, the handler's
            error, ``too many deliveries``).
        delivery_count: How often it had been delivered.
        group: The consumer group that gave up on it.
        consumer: The consumer that dead-lettered it.
        dead_at: When, as ISO 8601 UTC.
        data: The event's JSON as it was on the stream, or ``None``.
    """

    topic: str
    id: str
    original_id: str
    reason: str
    delivery_count: int
    group: str
    consumer: str
    dead_at: str
    data: bytes | None = field(repr=False)

    def redacted_data(self) -> object:
        """Return the event as JSON-ready data with every secret redacted.

        Secret fields of the library's event models (``key_value``) are
        replaced by ``**********`` wherever they appear. Data that is not a
        JSON object is not shown, since it might hold a secret; a short note
        with its size stands in for it.
        """
        if self.data is None:
            return None

        try:
            value = json.loads(self.data)
        except ValueError:
            return f"<{len(self.data)} bytes, not JSON: not shown>"

        if not isinstance(value, dict):
            return f"<{len(self.data)} bytes, not a JSON object: not shown>"

        return _redact(value)


@dataclass(frozen=True)
class RequeueResult:
    """What a requeue did.

    Attributes:
        requeued: Dead-letter id -> the id of the new entry in the source
            stream.
        missing: Ids that were not (or no longer) in the dead letters.
        empty: Ids of entries that hold no event to put back; they stay.
    """

    requeued: dict[str, str]
    missing: list[str]
    empty: list[str]


def parse_dead_letter(topic: str, entry_id: str, raw: dict[bytes, bytes]) -> DeadLetter:
    """Return the dead letter of one raw entry (fields as ``_settle`` wrote them)."""

    def text(name: bytes) -> str:
        return raw.get(name, b"").decode("utf-8", "replace")

    try:
        count = int(text(b"delivery_count") or 0)
    except ValueError:
        count = 0

    return DeadLetter(
        topic=text(b"topic") or topic,
        id=entry_id,
        original_id=text(b"original_id"),
        reason=text(b"reason"),
        delivery_count=count,
        group=text(b"group"),
        consumer=text(b"consumer"),
        dead_at=text(b"dead_at"),
        data=raw.get(DATA_FIELD),
    )


def _secret_fields() -> frozenset[str]:
    names: set[str] = set()
    for name in events.__all__:
        model = getattr(events, name)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue

        for field_name, info in model.model_fields.items():
            kinds = (info.annotation, *get_args(info.annotation))
            if SecretStr in kinds:
                names.add(field_name)

    return frozenset(names)


SECRET_FIELDS = _secret_fields()


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: events.REDACTED if key in SECRET_FIELDS else _redact(item)
            for key, item in value.items()
        }

    if isinstance(value, list):
        return [_redact(item) for item in value]

    return value
