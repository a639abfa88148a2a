"""A hint when an event for a topic without a model carries a secret field.

A misspelt topic (``key_submision``) has no model, so a mapping published to
it goes out as it is: unvalidated, and with its ``key_value`` in clear where
the topic's model would have checked it. The registry warns once per topic
and names the registered topic the user probably meant.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, get_args

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = ["closest_topic", "secret_fields", "warn_secret_without_model"]

logger = logging.getLogger(__name__)

# How alike (difflib's ratio) a topic must be to a registered one to be
# named as the one meant: "key_submited" is 0.96 like "key_submitted",
# "profiles" only 0.73 like "profile_events".
_CUTOFF = 0.8
_SECRET_TYPES = (SecretStr, SecretBytes)


def secret_fields(model: Any) -> frozenset[str]:
    """Return the names of the secret fields of ``model``.

    ``model`` is what ``EventRegistry.register`` takes: a model class, or a
    type made of models, such as an ``Annotated`` union; its members' secret
    fields count too.
    """
    if isinstance(model, type) and issubclass(model, BaseModel):
        return frozenset(
            name
            for name, info in model.model_fields.items()
            if _is_secret(info.annotation)
        )

    return frozenset().union(*(secret_fields(arg) for arg in get_args(model)))


def _is_secret(annotation: Any) -> bool:
    # SecretStr itself, or inside Optional[...] or another union.
    kinds = (annotation, *get_args(annotation))
    return any(isinstance(k, type) and issubclass(k, _SECRET_TYPES) for k in kinds)


def closest_topic(topic: str, topics: list[str]) -> str | None:
    """Return the topic of ``topics`` most like ``topic``, if one is close."""
    matches = difflib.get_close_matches(topic, topics, n=1, cutoff=_CUTOFF)
    return matches[0] if matches else None


def warn_secret_without_model(topic: str, field: str, topics: list[str]) -> None:
    """Log the WARNING for a secret ``field`` sent to ``topic``, which has no model.

    The record names the topic and the field, never the event; it names the
    closest of ``topics`` (those with a model) when one is close.
    """
    suggestion = closest_topic(topic, topics)
    extra = {"topic": topic, "secret_field": field, "suggestion": suggestion}
    if suggestion is None:
        logger.warning(
            "Topic %s has no model: its secret field %s is sent unvalidated and "
            "no model redacts it; register a model for the topic if it needs one",
            topic,
            field,
            extra=extra,
        )
        return

    logger.warning(
        "Topic %s has no model: its secret field %s is sent unvalidated and "
        "no model redacts it; did you mean %s?",
        topic,
        field,
        suggestion,
        extra=extra,
    )
