"""EventRegistry: decoding untrusted bytes, encoding, limits and topic names."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, SecretStr

from redis_events import (
    KEY_SUBMISSION_TOPIC,
    PROCESSING_RESULTS_TOPIC,
    PROFILE_EVENTS_TOPIC,
    ConfigurationError,
    Event,
    EventDecodeError,
    EventEncodeError,
    EventRegistry,
    EventTooLargeError,
    KeyProcessed,
    KeyResult,
    KeySubmitted,
    ProfileCreated,
    ProfileDeleted,
    ProfileProcessed,
    ProfileResult,
    ProfileUpdated,
)
from redis_events._unmodelled import closest_topic
from redis_events.codec import validate_topic

# Needed at run time: pydantic resolves a test model's annotation with it.
from redis_events.events import ProfileEvent  # noqa: TC001

DEFAULT_TOPICS = [KEY_SUBMISSION_TOPIC, PROFILE_EVENTS_TOPIC, PROCESSING_RESULTS_TOPIC]
PLAIN_TOPIC = "custom_plain"
ALL_TOPICS = [*DEFAULT_TOPICS, PLAIN_TOPIC]
SECRET = "SECRET-9f3c"


class OrderPlaced(Event):
    """A user's own event, registered on a topic of its own."""

    event_type: Literal["order_placed"] = "order_placed"
    order_id: int
    amount: float


class Unserializable:
    """A value that no JSON serializer knows."""


class Opaque(Event):
    """An event whose field pydantic cannot write as JSON."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    thing: Unserializable


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


VALID_EVENTS: list[tuple[str, dict[str, Any], type[BaseModel]]] = [
    (
        KEY_SUBMISSION_TOPIC,
        {"event_type": "key_submitted", "key_value": "k-123456", "token_name": "T"},
        KeySubmitted,
    ),
    (
        PROFILE_EVENTS_TOPIC,
        {"event_type": "profile_created", "profile_id": 1, "profile_data": {"a": 1}},
        ProfileCreated,
    ),
    (
        PROFILE_EVENTS_TOPIC,
        {"event_type": "profile_updated", "profile_id": "p1", "profile_data": {}},
        ProfileUpdated,
    ),
    (
        PROFILE_EVENTS_TOPIC,
        {"event_type": "profile_deleted", "profile_id": 2},
        ProfileDeleted,
    ),
    (
        PROCESSING_RESULTS_TOPIC,
        {
            "event_type": "key_processed",
            "original_event": {"event_type": "key_submitted"},
            "result": {"valid": False, "length": 3, "token_name": "T"},
        },
        KeyProcessed,
    ),
    (
        PROCESSING_RESULTS_TOPIC,
        {
            "event_type": "profile_processed",
            "original_event": {"event_type": "profile_deleted", "profile_id": 2},
            "result": {"profile_id": 2, "action": "deleted"},
        },
        ProfileProcessed,
    ),
]


@pytest.mark.parametrize(("topic", "message", "model"), VALID_EVENTS)
def test_decode_valid_shapes_on_default_topics(
    topic: str, message: dict[str, Any], model: type[BaseModel]
) -> None:
    event = EventRegistry().decode(topic, _json(message))

    assert type(event) is model
    assert isinstance(event, Event)
    assert event.event_type == message["event_type"]


@pytest.mark.parametrize(("topic", "message", "model"), VALID_EVENTS)
def test_decode_accepts_str_as_well_as_bytes(
    topic: str, message: dict[str, Any], model: type[BaseModel]
) -> None:
    event = EventRegistry().decode(topic, json.dumps(message))

    assert type(event) is model


def test_default_registry_knows_the_three_original_topics() -> None:
    assert EventRegistry().topics() == sorted(DEFAULT_TOPICS)
    assert EventRegistry(include_defaults=False).topics() == []


BAD_INPUTS: list[tuple[str, bytes]] = [
    ("not JSON", b"not json"),
    ("empty", b""),
    ("JSON array", b"[1, 2, 3]"),
    ("JSON number", b"42"),
    ("JSON string", b'"key_submitted"'),
    ("JSON null", b"null"),
    ("trailing garbage", b'{"event_type": "key_submitted"} x'),
    ("invalid UTF-8", b'{"event_type": "\xff\xfe"}'),
    ("UTF-16", '{"a": 1}'.encode("utf-16")),
    ("lone surrogate", b'{"a": "\\ud800"}'),
    ("raw control character", b'{"a": "\x00"}'),
    ("pickle", pickle.dumps({"event_type": "key_submitted", "key_value": "k"})),
    ("nested arrays", b"[" * 100_000),
    ("nested objects", b'{"a":' * 100_000),
    ("nested then closed", b"[" * 5_000 + b"]" * 5_000),
    ("big integer", b'{"a": 1' + b"0" * 5000 + b"}"),
    ("big negative integer", b'{"a": -' + b"9" * 5000 + b"}"),
]


@pytest.mark.parametrize("topic", ALL_TOPICS)
@pytest.mark.parametrize(("label", "data"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_decode_rejects_bad_input_with_event_decode_error(
    topic: str, label: str, data: bytes
) -> None:
    with pytest.raises(EventDecodeError) as caught:
        EventRegistry().decode(topic, data)

    assert caught.value.topic == topic
    assert caught.value.reason


class _Touch:
    """Unpickling this creates a file: what an attacker's payload would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_decode_never_unpickles(topic: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Touch(marker))

    with pytest.raises(EventDecodeError):
        EventRegistry().decode(topic, payload)

    assert not marker.exists()
    pickle.loads(payload)  # proves the payload would have worked
    assert marker.exists()


NON_JSON_NUMBERS = [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"]


@pytest.mark.parametrize("number", NON_JSON_NUMBERS, ids=bytes.decode)
def test_decode_rejects_numbers_json_cannot_carry(number: bytes) -> None:
    # 1e400 overflows a double and NaN/Infinity are not JSON (RFC 8259,
    # section 6). Accepted, they become inf/nan, which encode() writes back
    # as the strings "Infinity"/"NaN": the event changes on the way through.
    with pytest.raises(EventDecodeError):
        EventRegistry().decode(PLAIN_TOPIC, b'{"a": ' + number + b"}")


@pytest.mark.parametrize("number", NON_JSON_NUMBERS, ids=bytes.decode)
def test_model_field_with_a_number_json_cannot_carry_is_rejected(
    number: bytes,
) -> None:
    # Accepted, the value is written back as null by the model.
    data = b'{"event_type": "profile_created", "profile_id": 1, "profile_data": '
    data += b'{"n": ' + number + b"}}"

    with pytest.raises(EventDecodeError):
        EventRegistry().decode(PROFILE_EVENTS_TOPIC, data)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        (KEY_SUBMISSION_TOPIC, {"event_type": "profile_created", "profile_id": 1}),
        (KEY_SUBMISSION_TOPIC, {"key_value": "k", "token_name": 5}),
        (KEY_SUBMISSION_TOPIC, {"event_type": "key_submitted", "token_name": "t"}),
        (PROFILE_EVENTS_TOPIC, {"profile_id": 1}),
        (PROFILE_EVENTS_TOPIC, {"event_type": "profile_created"}),
        (PROFILE_EVENTS_TOPIC, {"event_type": "profile_created", "profile_id": [1]}),
        (PROCESSING_RESULTS_TOPIC, {"event_type": "key_processed"}),
        (
            KEY_SUBMISSION_TOPIC,
            {
                "event_type": "key_submitted",
                "key_value": "k",
                "token_name": "t",
                "timestamp": "yesterday",
            },
        ),
    ],
)
def test_decode_rejects_wrong_shape(topic: str, message: dict[str, Any]) -> None:
    with pytest.raises(EventDecodeError):
        EventRegistry().decode(topic, _json(message))


@pytest.mark.parametrize("topic", DEFAULT_TOPICS)
def test_decode_rejects_unknown_event_type(topic: str) -> None:
    with pytest.raises(EventDecodeError):
        EventRegistry().decode(topic, _json({"event_type": "no_such_event"}))


@pytest.mark.parametrize(
    ("topic", "tags"),
    [
        (PROFILE_EVENTS_TOPIC, "profile_created, profile_updated, profile_deleted"),
        (PROCESSING_RESULTS_TOPIC, "key_processed, profile_processed"),
    ],
)
def test_event_type_errors_name_the_allowed_types_in_plain_words(
    topic: str, tags: str
) -> None:
    registry = EventRegistry()
    with pytest.raises(EventDecodeError) as missing:
        registry.decode(topic, _json({"profile_id": 1}))
    with pytest.raises(EventEncodeError) as unknown:
        registry.encode(topic, {"event_type": "profile_renamed", "profile_id": 1})
    with pytest.raises(EventDecodeError) as not_text:
        registry.decode(topic, _json({"event_type": [1]}))

    assert missing.value.reason == f"event_type is missing; expected one of: {tags}"
    assert unknown.value.reason == f"event_type is not one of: {tags}"
    assert not_text.value.reason == f"event_type is not one of: {tags}"


def test_nested_union_errors_say_where_without_pydantic_jargon() -> None:
    class Envelope(BaseModel):
        inner: ProfileEvent

    registry = EventRegistry(include_defaults=False)
    registry.register("wrapped", Envelope)

    with pytest.raises(EventDecodeError) as caught:
        registry.decode("wrapped", _json({"inner": {"profile_id": 1}}))

    assert caught.value.reason == "inner: event_type is missing"


def test_decode_error_is_raised_without_the_pydantic_error_attached() -> None:
    with pytest.raises(EventDecodeError) as caught:
        EventRegistry().decode(KEY_SUBMISSION_TOPIC, b"[]")

    # The pydantic error would carry the input; it is neither cause nor context.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


# Messages carrying the secret that no model topic accepts; the last two
# are not JSON, so the plain topic refuses them too.
SECRET_MESSAGES = [
    '{"event_type":"key_submitted","key_value":"SECRET-9f3c"}',
    '{"event_type":"key_submitted","key_value":"SECRET-9f3c","token_name":7}',
    '{"event_type":"key_submitted","key_value":["SECRET-9f3c"],"token_name":"t"}',
    '{"event_type":"key_submitted","key_value":"SECRET-9f3c","token_name":"t",'
    '"timestamp":"SECRET-9f3c"}',
    '{"event_type":"key_submitted","key_value":"SECRET-9f3c"',
    '{"key_value":"SECRET-9f3c",}',
]
SECRET_CASES = [
    *((topic, message) for topic in DEFAULT_TOPICS for message in SECRET_MESSAGES),
    *((PLAIN_TOPIC, message) for message in SECRET_MESSAGES[-2:]),
]


@pytest.mark.parametrize(("topic", "message"), SECRET_CASES)
def test_decode_reason_never_contains_the_secret(topic: str, message: str) -> None:
    with pytest.raises(EventDecodeError) as caught:
        EventRegistry().decode(topic, message.encode())

    assert SECRET not in str(caught.value)
    assert SECRET not in caught.value.reason
    assert SECRET not in repr(caught.value)


@pytest.mark.parametrize("topic", [PROFILE_EVENTS_TOPIC, PROCESSING_RESULTS_TOPIC])
def test_decode_reason_never_quotes_the_rejected_event_type(topic: str) -> None:
    # The reason is logged at WARNING for every rejected message; the codec
    # promises that it never quotes the input, which is untrusted text.
    with pytest.raises(EventDecodeError) as caught:
        EventRegistry().decode(topic, _json({"event_type": SECRET}))

    assert SECRET not in str(caught.value)


def test_encode_reason_never_quotes_the_rejected_event_type() -> None:
    with pytest.raises(EventEncodeError) as caught:
        EventRegistry().encode(PROFILE_EVENTS_TOPIC, {"event_type": SECRET})

    assert SECRET not in str(caught.value)


def test_encode_reason_never_contains_the_secret() -> None:
    with pytest.raises(EventEncodeError) as caught:
        EventRegistry().encode(
            KEY_SUBMISSION_TOPIC, {"key_value": SECRET, "token_name": ["x"]}
        )

    assert SECRET not in str(caught.value)


def test_duplicate_keys_last_one_wins() -> None:
    # Documented behaviour: as with json.loads, the last duplicate wins.
    registry = EventRegistry()
    data = (
        b'{"event_type":"key_submitted","key_value":"first","key_value":"last",'
        b'"token_name":"t"}'
    )

    event = registry.decode(KEY_SUBMISSION_TOPIC, data)
    plain = registry.decode(PLAIN_TOPIC, b'{"a": 1, "a": 2}')

    assert isinstance(event, KeySubmitted)
    assert event.key_value.get_secret_value() == "last"
    assert plain == {"a": 2}
    assert json.loads(b'{"a": 1, "a": 2}') == plain


def test_decode_past_the_limit_raises_event_too_large() -> None:
    registry = EventRegistry(max_event_bytes=100)
    data = _json({"a": "x" * 100})

    with pytest.raises(EventTooLargeError) as caught:
        registry.decode(PLAIN_TOPIC, data)

    assert isinstance(caught.value, EventDecodeError)
    assert isinstance(caught.value, EventEncodeError)
    assert caught.value.topic == PLAIN_TOPIC
    assert "x" * 20 not in str(caught.value)


def test_decode_at_the_limit_is_accepted() -> None:
    registry = EventRegistry(max_event_bytes=100)
    data = b'{"a":"' + b"x" * 92 + b'"}'

    assert len(data) == 100
    assert registry.decode(PLAIN_TOPIC, data) == {"a": "x" * 92}


def test_decode_limit_counts_bytes_of_str_input_not_characters() -> None:
    # 60 two-byte characters: 68 characters, 128 bytes of UTF-8.
    registry = EventRegistry(max_event_bytes=100)
    text = '{"a":"' + "é" * 60 + '"}'

    assert len(text.encode()) > 100
    with pytest.raises(EventTooLargeError):
        registry.decode(PLAIN_TOPIC, text)


def test_size_limit_is_checked_before_parsing() -> None:
    registry = EventRegistry(max_event_bytes=1000)

    # Not JSON either, but too large is what is reported.
    with pytest.raises(EventTooLargeError):
        registry.decode(PLAIN_TOPIC, b"\xff" * 1001)


def test_encode_past_the_limit_raises_event_too_large() -> None:
    registry = EventRegistry(max_event_bytes=200)

    with pytest.raises(EventTooLargeError) as caught:
        registry.encode(PLAIN_TOPIC, {"a": "x" * 300})

    assert isinstance(caught.value, EventEncodeError)
    assert isinstance(caught.value, EventDecodeError)
    with pytest.raises(EventTooLargeError):
        registry.encode(
            PROFILE_EVENTS_TOPIC,
            ProfileCreated(profile_id=1, profile_data={"a": "x" * 300}),
        )


def test_topic_without_a_model_decodes_to_a_dict() -> None:
    message = {"event_type": "custom", "data": {"foo": "bar"}, "n": [1, 2.5, None]}

    event = EventRegistry().decode(PLAIN_TOPIC, _json(message))

    assert type(event) is dict
    assert event == message


def test_mapping_for_a_topic_without_a_model_gets_event_id_and_timestamp() -> None:
    before = datetime.now(UTC)

    data = EventRegistry().encode(PLAIN_TOPIC, {"event_type": "custom", "x": 1})

    body = json.loads(data)
    assert body["event_type"] == "custom"
    assert body["x"] == 1
    assert len(body["event_id"]) == 32
    int(body["event_id"], 16)
    stamp = datetime.fromisoformat(body["timestamp"])
    assert stamp.utcoffset() is not None
    assert stamp >= before


def test_mapping_keeps_its_own_event_id_and_timestamp() -> None:
    data = EventRegistry().encode(
        PLAIN_TOPIC, {"event_id": "mine", "timestamp": "2024-01-01T10:00:00"}
    )

    assert json.loads(data) == {"event_id": "mine", "timestamp": "2024-01-01T10:00:00"}


def test_mapping_for_a_model_topic_is_validated_and_completed() -> None:
    registry = EventRegistry()

    data = registry.encode(
        PROFILE_EVENTS_TOPIC, {"event_type": "profile_deleted", "profile_id": 4}
    )
    back = registry.decode(PROFILE_EVENTS_TOPIC, data)

    assert isinstance(back, ProfileDeleted)
    assert back.profile_id == 4
    assert len(back.event_id) == 32
    assert back.timestamp.utcoffset() is not None


def test_mapping_that_does_not_fit_the_model_is_an_encode_error() -> None:
    with pytest.raises(EventEncodeError) as caught:
        EventRegistry().encode(PROFILE_EVENTS_TOPIC, {"event_type": "profile_created"})

    assert caught.value.topic == PROFILE_EVENTS_TOPIC
    assert not isinstance(caught.value, EventDecodeError)


def test_user_registered_model_decodes_to_it() -> None:
    registry = EventRegistry()
    registry.register("orders", OrderPlaced)

    event = registry.decode("orders", b'{"order_id": 7, "amount": 9.5}')
    data = registry.encode("orders", {"order_id": 8, "amount": 1})

    assert type(event) is OrderPlaced
    assert event.order_id == 7
    assert event.event_type == "order_placed"
    assert "orders" in registry.topics()
    assert json.loads(data)["order_id"] == 8
    with pytest.raises(EventDecodeError):
        registry.decode("orders", b'{"order_id": "seven"}')


def test_registering_a_topic_again_replaces_its_model() -> None:
    registry = EventRegistry()
    registry.register(KEY_SUBMISSION_TOPIC, OrderPlaced)

    event = registry.decode(KEY_SUBMISSION_TOPIC, b'{"order_id": 1, "amount": 2}')

    assert isinstance(event, OrderPlaced)


def test_registered_non_object_model_is_refused_as_an_event() -> None:
    registry = EventRegistry()
    registry.register("numbers", list[int])

    with pytest.raises(EventDecodeError):
        registry.decode("numbers", b"[1, 2]")


def test_register_refuses_a_bad_topic_name() -> None:
    with pytest.raises(ConfigurationError):
        EventRegistry().register("bad topic", OrderPlaced)


def test_copy_is_independent_of_the_original() -> None:
    original = EventRegistry(max_event_bytes=5000)
    copy = original.copy()

    copy.register("orders", OrderPlaced)
    original.register("refunds", OrderPlaced)
    copy.max_event_bytes = 100

    assert "orders" in copy.topics()
    assert "orders" not in original.topics()
    assert "refunds" not in copy.topics()
    assert original.max_event_bytes == 5000
    assert type(original.decode("orders", b'{"order_id": 1}')) is dict
    assert isinstance(
        copy.decode(PROFILE_EVENTS_TOPIC, _json(VALID_EVENTS[1][1])), ProfileCreated
    )


def test_copy_keeps_models_and_limit() -> None:
    original = EventRegistry(max_event_bytes=5000)
    original.register("orders", OrderPlaced)

    copy = original.copy()

    assert copy.topics() == original.topics()
    assert copy.max_event_bytes == 5000
    assert type(copy.decode("orders", b'{"order_id": 1, "amount": 1}')) is OrderPlaced


@pytest.mark.parametrize(
    "event",
    [
        {"x": Unserializable()},
        {"x": b"\xff"},
    ],
    ids=["unknown type", "invalid UTF-8 bytes"],
)
def test_encode_unserializable_mapping_is_an_encode_error(
    event: dict[str, Any],
) -> None:
    with pytest.raises(EventEncodeError) as caught:
        EventRegistry().encode(PLAIN_TOPIC, event)

    assert caught.value.topic == PLAIN_TOPIC


def test_encode_circular_mapping_is_an_encode_error() -> None:
    event: dict[str, Any] = {}
    event["self"] = event

    with pytest.raises(EventEncodeError):
        EventRegistry().encode(PLAIN_TOPIC, event)


def test_encode_deeply_nested_mapping_is_an_encode_error() -> None:
    nested: list[Any] = []
    inner = nested
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]

    with pytest.raises(EventEncodeError):
        EventRegistry().encode(PLAIN_TOPIC, {"x": nested})


def test_encode_unserializable_model_is_an_encode_error() -> None:
    with pytest.raises(EventEncodeError):
        EventRegistry().encode(
            "opaque", Opaque(event_type="opaque", thing=Unserializable())
        )


@pytest.mark.parametrize("event", [[1, 2], "text", 42, None])
def test_encode_refuses_what_is_neither_model_nor_mapping(event: Any) -> None:
    with pytest.raises(EventEncodeError):
        EventRegistry().encode(PLAIN_TOPIC, event)


def test_encode_then_decode_round_trips_each_default_model() -> None:
    registry = EventRegistry()
    events: list[tuple[str, BaseModel]] = [
        (KEY_SUBMISSION_TOPIC, KeySubmitted(key_value="k-123456", token_name="T")),
        (PROFILE_EVENTS_TOPIC, ProfileCreated(profile_id=1, profile_data={"a": [1]})),
        (PROFILE_EVENTS_TOPIC, ProfileUpdated(profile_id="p", profile_data={})),
        (PROFILE_EVENTS_TOPIC, ProfileDeleted(profile_id=3)),
        (
            PROCESSING_RESULTS_TOPIC,
            KeyProcessed(
                original_event={"event_type": "key_submitted"},
                result=KeyResult(valid=True, length=8, token_name="T"),
            ),
        ),
        (
            PROCESSING_RESULTS_TOPIC,
            ProfileProcessed(
                original_event={}, result=ProfileResult(profile_id=3, action="deleted")
            ),
        ),
    ]

    for topic, event in events:
        assert registry.decode(topic, registry.encode(topic, event)) == event


@pytest.mark.parametrize(
    "topic",
    [
        "",
        " ",
        "a b",
        "tab\there",
        "new\nline",
        "nul\x00",
        "del\x7f",
        "x" * 257,
        "\u2028",
    ],
    ids=["empty", "space", "inner space", "tab", "newline", "NUL", "DEL", "257", "LS"],
)
def test_validate_topic_rejects_unusable_names(topic: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_topic(topic)


@pytest.mark.parametrize(
    "topic", ["key_submission", "a", "x" * 256, "orders.eu-1:v2", "profile_*", "ünï"]
)
def test_validate_topic_accepts_usable_names(topic: str) -> None:
    assert validate_topic(topic) == topic


def test_validate_topic_rejects_non_strings() -> None:
    with pytest.raises(ConfigurationError):
        validate_topic(b"bytes")  # type: ignore[arg-type]  # the point: not a str


# Property tests: whatever arrives on any topic, decode returns an event or
# raises EventDecodeError, never anything else. Each example is decoded on
# every topic, so that generating it is paid once.

PROPERTY_REGISTRY = EventRegistry()
PROPERTY_TOPICS = [*PROPERTY_REGISTRY.topics(), PLAIN_TOPIC]

EVENT_KEYS = st.sampled_from(
    [
        "event_type",
        "event_id",
        "timestamp",
        "key_value",
        "token_name",
        "profile_id",
        "profile_data",
        "original_event",
        "result",
        "valid",
        "length",
        "action",
        "processed_at",
    ]
)
EVENT_TYPES = st.sampled_from(
    [
        "key_submitted",
        "profile_created",
        "profile_updated",
        "profile_deleted",
        "key_processed",
        "profile_processed",
    ]
)
TIMESTAMPS = st.sampled_from(
    ["2024-01-01T10:00:00", "2024-01-01T12:00:00+02:00", "2024-01-01", "noon", 0]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | EVENT_TYPES
    | TIMESTAMPS
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(EVENT_KEYS | st.text(), children, max_size=5)
    ),
    max_leaves=12,
)
OPTIONAL_FIELDS = {
    "event_id": st.text(max_size=40),
    "timestamp": TIMESTAMPS,
    "__class__": st.just("os.system"),
    "$type": st.text(max_size=10),
}
PROFILE_IDS = st.integers() | st.text(max_size=10)
# Documents close to the real models, so that the models' own validation,
# not only the JSON parser, is exercised.
NEAR_EVENTS = st.one_of(
    st.fixed_dictionaries(
        {
            "event_type": st.just("key_submitted"),
            "key_value": st.text(),
            "token_name": st.text(),
        },
        optional=OPTIONAL_FIELDS,
    ),
    st.fixed_dictionaries(
        {
            "event_type": st.sampled_from(
                ["profile_created", "profile_updated", "profile_deleted"]
            ),
            "profile_id": PROFILE_IDS,
        },
        optional={**OPTIONAL_FIELDS, "profile_data": JSON_VALUES},
    ),
    st.fixed_dictionaries(
        {
            "event_type": st.just("key_processed"),
            "original_event": st.dictionaries(EVENT_KEYS, SCALARS, max_size=4),
            "result": st.fixed_dictionaries(
                {
                    "valid": st.booleans() | st.integers(),
                    "length": st.integers(),
                    "token_name": st.text(),
                },
                optional={"processed_at": TIMESTAMPS, "reason": st.text() | st.none()},
            ),
        },
        optional=OPTIONAL_FIELDS,
    ),
    st.fixed_dictionaries(
        {
            "event_type": st.just("profile_processed"),
            "original_event": st.dictionaries(EVENT_KEYS, SCALARS, max_size=4),
            "result": st.fixed_dictionaries(
                {
                    "profile_id": PROFILE_IDS,
                    "action": st.sampled_from(["created", "updated", "deleted", "x"]),
                },
                optional={"processed_at": TIMESTAMPS},
            ),
        },
        optional=OPTIONAL_FIELDS,
    ),
)
JSON_DOCUMENTS = JSON_VALUES | NEAR_EVENTS


def _decode_or_refuse(topic: str, data: bytes) -> BaseModel | dict[str, Any] | None:
    try:
        value = PROPERTY_REGISTRY.decode(topic, data)
    except EventDecodeError:
        return None

    assert isinstance(value, BaseModel | dict)
    return value


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_returns_an_event_or_decode_error(
    data: bytes,
) -> None:
    for topic in PROPERTY_TOPICS:
        _decode_or_refuse(topic, data)


@settings(max_examples=300, deadline=None)
@given(document=JSON_DOCUMENTS)
def test_decode_of_arbitrary_json_returns_an_event_or_decode_error(
    document: object,
) -> None:
    data = json.dumps(document, allow_nan=False, ensure_ascii=False).encode()

    for topic in PROPERTY_TOPICS:
        value = _decode_or_refuse(topic, data)
        if topic == PLAIN_TOPIC and isinstance(document, dict):
            assert value == document


@settings(max_examples=300, deadline=None)
@given(document=JSON_DOCUMENTS)
def test_decoded_events_encode_and_decode_back_unchanged(document: object) -> None:
    data = json.dumps(document, allow_nan=False, ensure_ascii=False).encode()

    for topic in PROPERTY_TOPICS:
        value = _decode_or_refuse(topic, data)
        if value is not None:
            encoded = PROPERTY_REGISTRY.encode(topic, value)
            assert PROPERTY_REGISTRY.decode(topic, encoded) == (
                value if isinstance(value, BaseModel) else json.loads(encoded)
            )


@pytest.mark.parametrize(
    ("topic", "closest"),
    [
        ("key_submited", "key_submitted"),
        ("key_sbmited", "key_submitted"),
        ("ky_sbmited", "key_submitted"),
        ("profile_event", "profile_events"),
        ("profiles", None),
        ("audit", None),
    ],
)
def test_closest_topic_is_a_registered_one_close_to_it(
    topic: str, closest: str | None
) -> None:
    topics = ["key_submitted", "profile_events", "processing_results"]

    assert closest_topic(topic, topics) == closest


class _Credential(BaseModel):
    token: SecretStr | None = None


def test_a_secret_field_of_a_users_model_makes_a_topic_without_one_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = EventRegistry(include_defaults=False)
    registry.register("credentials", _Credential)
    caplog.set_level("WARNING", logger="redis_events")

    registry.encode("credential", {"token": "t0ken-value"})
    registry.encode("credential", {"token": "t0ken-value"})

    assert [getattr(rec, "suggestion", None) for rec in caplog.records] == [
        "credentials"
    ]
    assert "t0ken-value" not in caplog.text
