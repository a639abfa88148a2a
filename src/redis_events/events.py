"""Event models: the JSON shapes carried on each topic.

Every event has ``event_type``, ``event_id`` and ``timestamp``. Messages of
the original design, which carry no ``event_id`` and a naive timestamp, parse
unchanged: a missing id is generated and a naive timestamp is taken as UTC.
Timestamps are written as ISO 8601 with an explicit ``+00:00`` offset, which
every ``datetime.fromisoformat`` since Python 3.7 reads.

Unknown fields are ignored on input (so a ``"__class__"`` or ``"$type"`` key
means nothing to us) and never imported, looked up or executed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    field_serializer,
    field_validator,
)

__all__ = [
    "REDACTED",
    "Event",
    "KeyProcessed",
    "KeyResult",
    "KeySubmitted",
    "ProfileCreated",
    "ProfileDeleted",
    "ProfileEvent",
    "ProfileProcessed",
    "ProfileResult",
    "ProfileUpdated",
    "ResultEvent",
    "new_event_id",
    "utc_now",
]

REDACTED = "**********"

# Serialization context key that lets a secret out in clear text: its value
# is the one event whose secrets may be written. Only the codec sets it, and
# only for an event that is the registered model of the topic it goes to, so
# an event embedded in another, or sent to a foreign topic, stays redacted.
REVEAL_SECRETS = "reveal_secrets_of"


def new_event_id() -> str:
    """Return a new random event id (32 hex digits)."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)

    try:
        return value.astimezone(UTC)
    except OverflowError:
        # Year 9999 at -23:59 or year 1 at +23:59: no such datetime in UTC.
        # A ValueError is what pydantic turns into a validation error.
        raise ValueError("out of range once moved to UTC") from None


# A naive value is read as UTC; every value is kept and written in UTC with an
# explicit "+00:00" offset.
UtcDatetime = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
]


class Event(BaseModel):
    """Base of every event: type, id and UTC timestamp.

    Subclass it for your own topics and register the model with
    ``EventRegistry.register``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    event_type: str
    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=200)
    timestamp: UtcDatetime = Field(default_factory=utc_now)


class KeySubmitted(Event):
    """A key was submitted for validation; ``key_value`` is a secret."""

    event_type: Literal["key_submitted"] = "key_submitted"
    key_value: SecretStr
    token_name: str

    @field_serializer("key_value", when_used="always")
    def _key_value(self, value: SecretStr, info: SerializationInfo) -> str:
        context = info.context
        if isinstance(context, dict) and context.get(REVEAL_SECRETS) is self:
            return value.get_secret_value()

        return REDACTED


ProfileId = int | str


class ProfileCreated(Event):
    """A profile was created."""

    event_type: Literal["profile_created"] = "profile_created"
    profile_id: ProfileId
    profile_data: dict[str, Any] = Field(default_factory=dict)


class ProfileUpdated(Event):
    """A profile was changed; ``profile_data`` holds the new values."""

    event_type: Literal["profile_updated"] = "profile_updated"
    profile_id: ProfileId
    profile_data: dict[str, Any] = Field(default_factory=dict)


class ProfileDeleted(Event):
    """A profile was deleted."""

    event_type: Literal["profile_deleted"] = "profile_deleted"
    profile_id: ProfileId


ProfileEvent = Annotated[
    ProfileCreated | ProfileUpdated | ProfileDeleted,
    Field(discriminator="event_type"),
]


class KeyResult(BaseModel):
    """What the processor found out about a submitted key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    valid: bool
    length: int
    token_name: str
    processed_at: UtcDatetime = Field(default_factory=utc_now)
    reason: str | None = None


class ProfileResult(BaseModel):
    """What the processor did with a profile event."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    profile_id: ProfileId
    action: Literal["created", "updated", "deleted"]
    processed_at: UtcDatetime = Field(default_factory=utc_now)


class KeyProcessed(Event):
    """Result of a ``key_submitted`` event; the original key is redacted."""

    event_type: Literal["key_processed"] = "key_processed"
    original_event: dict[str, Any]
    result: KeyResult

    @field_validator("original_event")
    @classmethod
    def _redact_original(cls, value: dict[str, Any]) -> dict[str, Any]:
        # A result must never carry the secret it was computed from, even
        # when a caller builds one from a raw dict.
        if "key_value" in value:
            return {**value, "key_value": REDACTED}

        return value


class ProfileProcessed(Event):
    """Result of a profile event."""

    event_type: Literal["profile_processed"] = "profile_processed"
    original_event: dict[str, Any]
    result: ProfileResult


ResultEvent = Annotated[
    KeyProcessed | ProfileProcessed, Field(discriminator="event_type")
]
