"""Event models: the original JSON shapes, UTC timestamps, secrets and extras."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    PROCESSING_RESULTS_TOPIC,
    PROFILE_EVENTS_TOPIC,
    EventRegistry,
    KeyProcessed,
    KeyResult,
    KeySubmitted,
    ProfileCreated,
    ProfileDeleted,
    ProfileProcessed,
    ProfileResult,
    ProfileUpdated,
)
from redis_events.events import REDACTED

SECRET = "abc123"

# The key_submitted message exactly as the original design's README shows it:
# no event_id and a naive timestamp.
ORIGINAL_KEY_SUBMITTED = {
    "event_type": "key_submitted",
    "key_value": SECRET,
    "token_name": "Token1",
    "timestamp": "2024-01-01T10:00:00",
}

# The result message of the original README, with the "..." filled in.
ORIGINAL_KEY_PROCESSED = {
    "event_type": "key_processed",
    "original_event": ORIGINAL_KEY_SUBMITTED,
    "result": {
        "valid": True,
        "length": 6,
        "token_name": "Token1",
        "processed_at": "2024-01-01T10:00:01",
    },
}

HEX_ID = re.compile(r"[0-9a-f]{32}")


def test_original_key_submitted_parses_with_naive_timestamp_taken_as_utc() -> None:
    event = KeySubmitted.model_validate_json(json.dumps(ORIGINAL_KEY_SUBMITTED))

    assert event.timestamp == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(0)
    assert event.key_value.get_secret_value() == SECRET
    assert event.token_name == "Token1"


def test_original_message_without_event_id_gets_a_32_hex_digit_id() -> None:
    first = KeySubmitted.model_validate(ORIGINAL_KEY_SUBMITTED)
    second = KeySubmitted.model_validate(ORIGINAL_KEY_SUBMITTED)

    assert HEX_ID.fullmatch(first.event_id)
    assert HEX_ID.fullmatch(second.event_id)
    assert first.event_id != second.event_id


def test_original_key_submitted_decodes_on_its_topic_unchanged() -> None:
    registry = EventRegistry()

    event = registry.decode(
        KEY_SUBMISSION_TOPIC, json.dumps(ORIGINAL_KEY_SUBMITTED).encode()
    )

    assert isinstance(event, KeySubmitted)
    assert event.key_value.get_secret_value() == SECRET
    assert event.timestamp == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("message", "model"),
    [
        (
            {
                "event_type": "profile_created",
                "profile_id": 1,
                "profile_data": {
                    "dll_path": "/path/to/file.dll",
                    "token_name": "My Profile",
                    "active": True,
                },
                "timestamp": "2024-01-01T10:00:00",
            },
            ProfileCreated,
        ),
        (
            {
                "event_type": "profile_updated",
                "profile_id": "p-7",
                "profile_data": {"active": False},
                "timestamp": "2024-01-01T10:00:00",
            },
            ProfileUpdated,
        ),
        (
            {
                "event_type": "profile_deleted",
                "profile_id": 1,
                "timestamp": "2024-01-01T10:00:00",
            },
            ProfileDeleted,
        ),
    ],
)
def test_original_profile_events_decode_to_their_model(
    message: dict[str, object], model: type[ProfileCreated]
) -> None:
    event = EventRegistry().decode(PROFILE_EVENTS_TOPIC, json.dumps(message))

    assert type(event) is model
    assert isinstance(event, ProfileCreated | ProfileUpdated | ProfileDeleted)
    assert event.profile_id == message["profile_id"]
    assert event.timestamp == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert HEX_ID.fullmatch(event.event_id)


def test_profile_created_keeps_its_profile_data() -> None:
    data = {"dll_path": "/path/to/file.dll", "token_name": "P", "active": True}

    event = ProfileCreated(profile_id=1, profile_data=data)

    assert event.profile_data == data
    assert event.event_type == "profile_created"


def test_original_key_processed_result_decodes_on_processing_results() -> None:
    event = EventRegistry().decode(
        PROCESSING_RESULTS_TOPIC, json.dumps(ORIGINAL_KEY_PROCESSED)
    )

    assert isinstance(event, KeyProcessed)
    assert event.result.valid is True
    assert event.result.length == 6
    assert event.result.token_name == "Token1"


def test_result_processed_at_naive_is_taken_as_utc() -> None:
    # The module promises that a naive timestamp is UTC and that every
    # timestamp is written with +00:00; processed_at is a timestamp too.
    event = EventRegistry().decode(
        PROCESSING_RESULTS_TOPIC, json.dumps(ORIGINAL_KEY_PROCESSED)
    )

    assert isinstance(event, KeyProcessed)
    assert event.result.processed_at == datetime(2024, 1, 1, 10, 0, 1, tzinfo=UTC)
    dumped = json.loads(event.model_dump_json())
    assert dumped["result"]["processed_at"] == "2024-01-01T10:00:01+00:00"


def test_result_processed_at_with_offset_is_written_in_utc() -> None:
    local = datetime(2024, 1, 1, 12, 0, 1, tzinfo=timezone(timedelta(hours=2)))

    key = KeyResult(valid=True, length=6, token_name="t", processed_at=local)
    profile = ProfileResult(profile_id=1, action="created", processed_at=local)

    for result in (key, profile):
        written = json.loads(result.model_dump_json())["processed_at"]
        assert written == "2024-01-01T10:00:01+00:00"


def test_timestamp_is_written_with_utc_offset_and_reads_back() -> None:
    event = KeySubmitted.model_validate(ORIGINAL_KEY_SUBMITTED)

    written = json.loads(event.model_dump_json())["timestamp"]

    assert written == "2024-01-01T10:00:00+00:00"
    assert datetime.fromisoformat(written) == event.timestamp


def test_default_timestamp_is_aware_utc_and_round_trips() -> None:
    before = datetime.now(UTC)
    event = ProfileDeleted(profile_id=3)
    after = datetime.now(UTC)

    written = json.loads(event.model_dump_json())["timestamp"]

    assert before <= event.timestamp <= after
    assert written.endswith("+00:00")
    assert datetime.fromisoformat(written) == event.timestamp


def test_timestamp_with_other_offset_is_converted_to_utc() -> None:
    event = ProfileDeleted.model_validate(
        {"profile_id": 1, "timestamp": "2024-01-01T12:00:00+02:00"}
    )

    assert event.timestamp == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(0)
    assert json.loads(event.model_dump_json())["timestamp"] == (
        "2024-01-01T10:00:00+00:00"
    )


def test_key_submitted_never_shows_the_key_in_repr_str_or_dumps() -> None:
    event = KeySubmitted(key_value=SECRET, token_name="Token1")

    shown = [
        repr(event),
        str(event),
        f"{event}",
        repr(event.key_value),
        str(event.key_value),
        repr(event.model_dump()),
        repr(event.model_dump(mode="json")),
        event.model_dump_json(),
        repr(event.model_copy()),
    ]

    for text in shown:
        assert SECRET not in text
    assert event.model_dump()["key_value"] == REDACTED
    assert json.loads(event.model_dump_json())["key_value"] == REDACTED


def test_registry_encode_reveals_the_key_on_the_wire_for_the_consumer() -> None:
    registry = EventRegistry()
    event = KeySubmitted(key_value=SECRET, token_name="Token1")

    data = registry.encode(KEY_SUBMISSION_TOPIC, event)
    back = registry.decode(KEY_SUBMISSION_TOPIC, data)

    assert json.loads(data)["key_value"] == SECRET
    assert isinstance(back, KeySubmitted)
    assert back.key_value.get_secret_value() == SECRET
    assert back.event_id == event.event_id
    assert back.timestamp == event.timestamp


def test_key_submitted_validation_error_does_not_echo_the_key() -> None:
    with pytest.raises(ValidationError) as caught:
        KeySubmitted.model_validate({"key_value": SECRET, "token_name": 5})

    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.errors())


def test_key_processed_built_from_a_dict_with_the_key_redacts_it() -> None:
    result = KeyResult(valid=True, length=6, token_name="Token1")

    event = KeyProcessed(original_event=dict(ORIGINAL_KEY_SUBMITTED), result=result)

    assert event.original_event["key_value"] == REDACTED
    assert event.original_event["token_name"] == "Token1"
    assert SECRET not in repr(event)
    assert SECRET not in event.model_dump_json()
    assert (
        SECRET not in EventRegistry().encode(PROCESSING_RESULTS_TOPIC, event).decode()
    )


def test_key_processed_received_with_the_key_redacts_it() -> None:
    event = EventRegistry().decode(
        PROCESSING_RESULTS_TOPIC, json.dumps(ORIGINAL_KEY_PROCESSED)
    )

    assert isinstance(event, KeyProcessed)
    assert event.original_event["key_value"] == REDACTED
    assert SECRET not in repr(event)


def test_key_processed_from_a_submitted_event_dump_never_holds_the_key() -> None:
    submitted = KeySubmitted(key_value=SECRET, token_name="Token1")
    result = KeyResult(valid=True, length=len(SECRET), token_name="Token1")

    event = KeyProcessed(
        original_event=submitted.model_dump(mode="json"), result=result
    )

    assert event.original_event["key_value"] == REDACTED
    assert event.original_event["event_id"] == submitted.event_id


@pytest.mark.parametrize("hint", ["__class__", "$type", "__reduce__", "__init__"])
def test_type_hint_keys_are_ignored(hint: str) -> None:
    message = dict(ORIGINAL_KEY_SUBMITTED) | {hint: "os.system"}

    event = KeySubmitted.model_validate_json(json.dumps(message))

    assert type(event) is KeySubmitted
    assert event.__pydantic_extra__ is None
    assert hint not in event.model_dump()
    assert hint not in json.loads(event.model_dump_json())
    assert hint not in json.loads(EventRegistry().encode(KEY_SUBMISSION_TOPIC, event))
    assert "os.system" not in repr(event)


def test_type_hint_keys_do_not_become_attributes() -> None:
    message = dict(ORIGINAL_KEY_SUBMITTED) | {"$type": "x", "event_kind": "y"}

    event = EventRegistry().decode(KEY_SUBMISSION_TOPIC, json.dumps(message))

    assert isinstance(event, KeySubmitted)
    assert not hasattr(event, "$type")
    assert not hasattr(event, "event_kind")
    assert set(event.model_dump()) == {
        "event_type",
        "event_id",
        "timestamp",
        "key_value",
        "token_name",
    }


def test_events_are_frozen() -> None:
    event = ProfileDeleted(profile_id=1)

    with pytest.raises(ValidationError):
        event.profile_id = 2  # type: ignore[misc]  # the point: frozen models refuse


@pytest.mark.parametrize("event_id", ["", "x" * 201])
def test_event_id_must_have_1_to_200_characters(event_id: str) -> None:
    with pytest.raises(ValidationError):
        ProfileDeleted(profile_id=1, event_id=event_id)


def test_event_type_of_a_model_is_fixed() -> None:
    with pytest.raises(ValidationError):
        KeySubmitted.model_validate(
            {"event_type": "profile_created", "key_value": "k", "token_name": "t"}
        )


def test_profile_processed_carries_its_result() -> None:
    created = ProfileCreated(profile_id=9, profile_data={"a": 1})

    event = ProfileProcessed(
        original_event=created.model_dump(mode="json"),
        result=ProfileResult(profile_id=9, action="created"),
    )
    back = EventRegistry().decode(
        PROCESSING_RESULTS_TOPIC,
        EventRegistry().encode(PROCESSING_RESULTS_TOPIC, event),
    )

    assert back == event
