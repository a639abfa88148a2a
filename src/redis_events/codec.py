"""Turn events into bytes and back, per topic.

An ``EventRegistry`` maps topic names to pydantic models. Decoding checks the
size limit first and then validates the JSON with pydantic's compiled parser;
it never uses pickle, ``eval`` or any loader that can run code. A topic with
no model decodes to a plain ``dict``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from typing import Any, TypeAlias, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import DEFAULT_REF_TEMPLATE
from pydantic_core import CoreSchema, ErrorDetails, PydanticSerializationError, to_json

from redis_events import _constants as c
from redis_events._unmodelled import secret_fields, warn_secret_without_model
from redis_events.events import (
    REVEAL_SECRETS,
    KeySubmitted,
    ProfileEvent,
    ResultEvent,
    new_event_id,
    utc_now,
)
from redis_events.exceptions import (
    ConfigurationError,
    EventDecodeError,
    EventEncodeError,
    EventTooLargeError,
)

__all__ = ["DecodedEvent", "EventRegistry", "validate_topic"]

DecodedEvent: TypeAlias = BaseModel | dict[str, Any]

_PLAIN_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
# What a decoded event may be: a tuple checks faster than a union type.
_OBJECT_TYPES = (BaseModel, dict)
_M = TypeVar("_M", bound=BaseModel)
_MAX_REASONS = 3
_NOT_FINITE = "numbers must be finite (no NaN, Infinity or out-of-range values)"
# A float overflows only past 1.8e308: that takes a literal NaN or Infinity,
# an exponent of three digits, or a hundred digits in a row (99 digits with a
# two-digit exponent stay below 1e200).
_MAY_BE_NON_FINITE = re.compile(rb"NaN|Infinity|[\d.][eE]\+?\d{3,}(?=[\s,\]}])|\d{100}")


# Every publish checks its topic: names already found good are remembered,
# since checking one character by character costs more. A failure raises, so
# only good names are cached; typed, so a str subclass is checked on its own.
@functools.lru_cache(maxsize=4096, typed=True)
def _check_topic_text(topic: str) -> None:
    if len(topic) > c.MAX_TOPIC_LENGTH:
        msg = f"a topic name may have at most {c.MAX_TOPIC_LENGTH} characters"
        raise ConfigurationError(msg)

    if not topic.isprintable() or any(ch.isspace() for ch in topic):
        msg = f"topic name {topic!r} contains whitespace or control characters"
        raise ConfigurationError(msg)


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a usable topic name.

    Raises:
        ConfigurationError: The name is empty, too long, or contains
            whitespace or control characters.
    """
    if not isinstance(topic, str) or not topic:
        msg = "a topic name must be a non-empty string"
        raise ConfigurationError(msg)

    _check_topic_text(topic)
    return topic


class EventRegistry:
    """Models per topic, plus encoding and decoding with a size limit.

    A new registry knows the original design's topics: ``key_submission``
    (``KeySubmitted``), ``profile_events`` (the three profile events, told
    apart by ``event_type``) and ``processing_results`` (``KeyProcessed`` and
    ``ProfileProcessed``).
    """

    def __init__(
        self,
        *,
        max_event_bytes: int = c.DEFAULT_MAX_EVENT_BYTES,
        include_defaults: bool = True,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self._adapters: dict[str, TypeAdapter[Any]] = {}
        # The event_type values (tags) of topics whose model is a
        # discriminated union, for errors that name the allowed ones.
        self._tags: dict[str, list[str]] = {}
        # Topics whose model has a float or an Any somewhere, which pydantic
        # fills with NaN or inf when the JSON says so.
        self._may_hold_floats: set[str] = set()
        # Secret field names per topic with a model, and all of them: a
        # mapping sent to a topic without a model that has one of these is
        # probably meant for another topic (see _hint_secret).
        self._secrets_of: dict[str, frozenset[str]] = {}
        self._secret_fields: tuple[str, ...] = ()
        self._hinted: set[str] = set()
        if include_defaults:
            self.register(c.KEY_SUBMISSION_TOPIC, KeySubmitted)
            self.register(c.PROFILE_EVENTS_TOPIC, ProfileEvent)
            self.register(c.PROCESSING_RESULTS_TOPIC, ResultEvent)

    def register(self, topic: str, model: Any) -> None:
        """Validate events on ``topic`` with ``model``.

        ``model`` is a pydantic model class, or any type pydantic can
        validate, such as an ``Annotated`` union with a discriminator.
        Registering a topic again replaces its model.

        Raises:
            ConfigurationError: The topic name is not usable.
        """
        adapter: TypeAdapter[Any] = TypeAdapter(model)
        self._adapters[validate_topic(topic)] = adapter
        self._tags[topic] = _union_tags(adapter.core_schema)
        self._may_hold_floats.discard(topic)
        if _has_float_schema(adapter.core_schema):
            self._may_hold_floats.add(topic)

        self._secrets_of[topic] = secret_fields(model)
        self._secret_fields = tuple(sorted(set().union(*self._secrets_of.values())))

    def topics(self) -> list[str]:
        """Return the topics that have a model, sorted."""
        return sorted(self._adapters)

    def json_schema(
        self, topic: str, *, ref_template: str = DEFAULT_REF_TEMPLATE
    ) -> dict[str, Any]:
        """Return the JSON Schema of the events ``topic`` accepts.

        A union of models (``profile_events``) is a ``oneOf`` of references;
        referenced models are under ``$defs``, written with ``ref_template``.

        Raises:
            KeyError: ``topic`` has no model.
        """
        schema: dict[str, Any] = self._adapters[topic].json_schema(
            ref_template=ref_template
        )
        return schema

    def copy(self) -> EventRegistry:
        """Return an independent registry with the same models and limit."""
        other = EventRegistry(
            max_event_bytes=self.max_event_bytes, include_defaults=False
        )
        other._adapters = dict(self._adapters)
        other._tags = dict(self._tags)
        other._may_hold_floats = set(self._may_hold_floats)
        other._secrets_of = dict(self._secrets_of)
        other._secret_fields = self._secret_fields
        return other

    def decode(self, topic: str, data: bytes | str) -> DecodedEvent:
        """Return the event in ``data``, validated by ``topic``'s model.

        Raises:
            EventTooLargeError: ``data`` is above ``max_event_bytes``.
            EventDecodeError: ``data`` is not JSON, not an object, or does
                not fit the model. The reason never quotes the input.
        """
        size = len(data)
        limit = self.max_event_bytes
        if size <= limit and type(data) is not bytes and isinstance(data, str):
            size = len(data.encode("utf-8", "surrogatepass"))

        if size > limit:
            reason = f"{size} bytes is above the limit of {limit}"
            raise EventTooLargeError(reason, topic=topic)

        adapter = self._adapters.get(topic)
        may_hold_floats = adapter is None or topic in self._may_hold_floats
        if adapter is None:
            adapter = _PLAIN_OBJECT

        try:
            # The adapter's own validator: TypeAdapter.validate_json adds a
            # layer of Python per call that only handles options unused here.
            value = adapter.validator.validate_json(data)
        except ValidationError as exc:
            reason = _describe(exc, self._tags.get(topic))
            raise EventDecodeError(reason, topic=topic) from None
        except Exception as exc:
            raise EventDecodeError(_validator_failed(exc), topic=topic) from None

        if not isinstance(value, _OBJECT_TYPES):
            # A user model may be any type; only objects are events.
            raise EventDecodeError("an event must be a JSON object", topic=topic)

        # pydantic's JSON parser reads NaN, Infinity and out-of-range numbers
        # as non-finite floats; JSON has no such numbers, and passing them on
        # would change the event (they are written back as null or strings).
        # Only values that can hold one, from text that can, are walked.
        if (
            may_hold_floats
            and _MAY_BE_NON_FINITE.search(_as_bytes(data))
            and not _finite(value)
        ):
            raise EventDecodeError(_NOT_FINITE, topic=topic)

        return value

    def encode(self, topic: str, event: BaseModel | Mapping[str, Any]) -> bytes:
        """Return the JSON bytes to publish ``event`` on ``topic``.

        A model or a mapping is validated by the topic's model when there is
        one; a mapping for a topic without a model gets an ``event_id`` and a
        ``timestamp`` when it has none. Secrets (``key_value``) are written
        in clear only for the event that is the topic's own model, never for
        an event embedded in another or sent to a topic without a model.

        Raises:
            EventEncodeError: The event cannot be serialized or does not fit
                the topic's model.
            EventTooLargeError: The encoded event is above the limit.
        """
        if isinstance(event, BaseModel):
            data = self._encode_model(topic, event)
        elif isinstance(event, Mapping):
            data = self._encode_mapping(topic, event)
        else:
            reason = (
                f"expected a pydantic model or a mapping, got {type(event).__name__}"
            )
            raise EventEncodeError(reason, topic=topic)

        if len(data) > self.max_event_bytes:
            reason = f"{len(data)} bytes is above the limit of {self.max_event_bytes}"
            raise EventTooLargeError(reason, topic=topic)

        return data

    def _encode_mapping(self, topic: str, event: Mapping[str, Any]) -> bytes:
        adapter = self._adapters.get(topic)
        if adapter is None:
            body = dict(event)
            if topic not in self._hinted:
                self._hint_secret(topic, body)

            body.setdefault("event_id", new_event_id())
            body.setdefault("timestamp", utc_now().isoformat())
            return _plain_json(topic, body)

        try:
            model = adapter.validate_python(dict(event))
        except ValidationError as exc:
            reason = _describe(exc, self._tags.get(topic))
            raise EventEncodeError(reason, topic=topic) from None
        except Exception as exc:
            raise EventEncodeError(_validator_failed(exc), topic=topic) from None

        if isinstance(model, BaseModel):
            return self._dump(topic, model, reveal=True)

        return _plain_json(topic, model)

    def _hint_secret(self, topic: str, body: dict[str, Any]) -> None:
        """Warn, once for ``topic``, that it has no model for a secret in ``body``.

        Runs only for mappings sent to a topic without a model, and stops
        for a topic once it has warned: a set lookup per publish after that.
        """
        for field in self._secret_fields:
            if field in body:
                self._hinted.add(topic)
                warn_secret_without_model(topic, field, self.topics())
                return

    def _encode_model(self, topic: str, model: BaseModel) -> bytes:
        adapter = self._adapters.get(topic)
        if adapter is None:
            # Not the event this topic is for: its secrets stay redacted.
            return self._dump(topic, model, reveal=False)

        try:
            checked = adapter.validate_python(model)
        except ValidationError as exc:
            described = _describe(exc, self._tags.get(topic))
            reason = f"not an event of this topic ({described})"
            raise EventEncodeError(reason, topic=topic) from None
        except Exception as exc:
            raise EventEncodeError(_validator_failed(exc), topic=topic) from None

        return self._dump(topic, checked, reveal=True)

    @staticmethod
    def _dump(topic: str, model: BaseModel, *, reveal: bool) -> bytes:
        context = {REVEAL_SECRETS: model} if reveal else None
        try:
            return model.__pydantic_serializer__.to_json(model, context=context)
        except PydanticSerializationError as exc:
            reason = f"not JSON-serializable ({_first_line(exc)})"
            raise EventEncodeError(reason, topic=topic) from None


def build_event(topic: str, model: type[_M], /, **fields: Any) -> _M:
    """Return ``model(**fields)``, for an event to be published on ``topic``.

    Raises:
        EventEncodeError: The fields do not fit the model; the reason names
            the fields, never their values.
    """
    try:
        return model(**fields)
    except ValidationError as exc:
        raise EventEncodeError(_describe(exc), topic=topic) from None
    except Exception as exc:
        raise EventEncodeError(_validator_failed(exc), topic=topic) from None


def _has_float_schema(schema: object) -> bool:
    """Tell whether a pydantic core schema has a float or Any anywhere."""
    pending = [schema]
    seen: set[int] = set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue

        seen.add(id(node))
        if isinstance(node, dict):
            if node.get("type") in {"float", "any"}:
                return True

            pending.extend(node.values())
        elif isinstance(node, list | tuple):
            pending.extend(node)

    return False


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")

    return data


def _plain_json(topic: str, value: object) -> bytes:
    try:
        # to_json first: it also refuses circular references, which the
        # finiteness walk below could not survive.
        data = to_json(value)
    except PydanticSerializationError as exc:
        reason = f"not JSON-serializable ({_first_line(exc)})"
        raise EventEncodeError(reason, topic=topic) from None

    if not _finite(value):
        raise EventEncodeError(_NOT_FINITE, topic=topic)

    return data


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)

    if isinstance(value, Mapping):
        return all(_finite(item) for item in value.values())

    if isinstance(value, list | tuple | set | frozenset):
        return all(_finite(item) for item in value)

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(_finite(getattr(value, f.name)) for f in dataclasses.fields(value))

    if isinstance(value, BaseModel):
        return all(_finite(getattr(value, name)) for name in type(value).model_fields)

    return True


def _describe(exc: ValidationError, tags: list[str] | None = None) -> str:
    """Return a payload-free summary of ``exc``.

    ``tags`` are the allowed values of the model's discriminator (top level),
    named when an event has none.
    """
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for error in errors[:_MAX_REASONS]:
        location = ".".join(str(p) for p in error["loc"])
        message = error["msg"]
        if error["type"] in {"union_tag_not_found", "union_tag_invalid"}:
            message = _describe_tag(error, None if location else tags)

        parts.append(f"{location}: {message}" if location else message)

    if len(errors) > _MAX_REASONS:
        parts.append(f"and {len(errors) - _MAX_REASONS} more")

    return "; ".join(parts)


def _describe_tag(error: ErrorDetails, tags: list[str] | None) -> str:
    """Say what is wrong with a discriminated union's tag, in plain words.

    pydantic's own messages ("Unable to extract tag using discriminator")
    speak of its internals, and quote the rejected value, which is input:
    reasons are logged for every rejected message, so it is left out.
    """
    context = error.get("ctx", {})
    field = str(context.get("discriminator", "event_type")).strip("'")
    if error["type"] == "union_tag_not_found":
        if not tags:
            return f"{field} is missing"

        return f"{field} is missing; expected one of: {', '.join(tags)}"

    expected = ", ".join(
        tag.strip().strip("'")
        for tag in str(context.get("expected_tags", "")).split(",")
    )
    return f"{field} is not one of: {expected}"


def _union_tags(schema: CoreSchema) -> list[str]:
    """Return the tags of a top-level discriminated union, else nothing."""
    node: Any = schema
    while node.get("type") == "definitions":
        node = node["schema"]

    if node.get("type") != "tagged-union":
        return []

    return [str(tag) for tag in node["choices"]]


def _validator_failed(exc: Exception) -> str:
    """Describe a validator that raised something pydantic lets through.

    pydantic turns only ValueError and AssertionError into a validation
    error; a model's own validator may raise anything else. Only the type
    is named: the exception's text may quote the input.
    """
    return f"a validator of the model raised {type(exc).__name__}"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
