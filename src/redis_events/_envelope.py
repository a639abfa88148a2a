"""Trace context in the event envelope, without importing OpenTelemetry.

On streams the context travels as extra entry fields (``traceparent``,
``tracestate``) next to the data field. On pub/sub the message is the JSON
event itself, which consumers of the original design parse as it is, so the
context is appended as one last top-level member, ``"_trace"``: the JSON
stays an object with the same fields plus that one. The subscriber takes the
member off before decoding, so neither models (even with ``extra="forbid"``)
nor handlers of ``dict`` events ever see it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

__all__ = [
    "TRACEPARENT_FIELD",
    "TRACE_FIELDS",
    "TRACE_KEY",
    "add_to_json",
    "from_fields",
    "split_json",
    "to_fields",
]

TRACE_KEY = "_trace"
TRACE_FIELDS = ("traceparent", "tracestate")

_MEMBER = b',"' + TRACE_KEY.encode() + b'":{'
_ONLY_MEMBER = b'{"' + TRACE_KEY.encode() + b'":{'
# The appended member is short (a traceparent is 55 characters, a tracestate
# at most 512): only the end of a message is searched for it.
_TAIL = 1024
# The stream entry field whose presence means a trace context came along.
TRACEPARENT_FIELD = TRACE_FIELDS[0].encode()
_TRACESTATE = TRACE_FIELDS[1].encode()


def add_to_json(data: bytes, context: dict[str, str]) -> bytes:
    """Return the JSON object ``data`` with ``context`` as its last member.

    ``data`` that is not a JSON object is returned unchanged.
    """
    if not context or not data.startswith(b"{") or not data.endswith(b"}"):
        return data

    member = json.dumps(context, separators=(",", ":")).encode()
    if len(_MEMBER) + len(member) > _TAIL:
        # Past the tail split_json searches, the member would stay in the
        # event. W3C Trace Context lets a carrier drop tracestate; the
        # traceparent (55 characters) always fits.
        parent = {k: v for k, v in context.items() if k == TRACE_FIELDS[0]}
        member = json.dumps(parent, separators=(",", ":")).encode()
        if not parent or len(_MEMBER) + len(member) > _TAIL:
            return data

    if data == b"{}":
        return _ONLY_MEMBER[:-1] + member + b"}"

    return data[:-1] + _MEMBER[:-1] + member + b"}"


def split_json(data: bytes) -> tuple[bytes, dict[str, str] | None]:
    """Return ``data`` without a trailing trace member, and that member.

    Anything that is not exactly such a member, appended at the top level,
    is left in place: then ``data`` comes back unchanged with ``None``.
    """
    if not data.endswith(b"}}"):
        return data, None

    start = len(data) - _TAIL
    at = data.rfind(_MEMBER, max(start, 0))
    if at != -1:
        body, member = data[:at] + b"}", data[at + len(_MEMBER) - 1 : -1]
    elif data.startswith(_ONLY_MEMBER):
        body, member = b"{}", data[len(_ONLY_MEMBER) - 1 : -1]
    else:
        return data, None

    # A quote that follows a comma unescaped cannot be inside a string, so
    # a match is a member of some object; it is the top level's exactly when
    # the rest parses as one object followed by the final brace.
    try:
        context = json.loads(member)
    except ValueError:
        return data, None

    if not isinstance(context, dict):
        return data, None

    return body, {k: v for k, v in context.items() if k in TRACE_FIELDS and _ok(v)}


def to_fields(context: dict[str, str]) -> dict[FieldT, EncodableT]:
    """Return the stream entry fields that carry ``context``."""
    return {name: context[name] for name in TRACE_FIELDS if name in context}


def from_fields(fields: dict[bytes, bytes]) -> dict[str, str] | None:
    """Return the trace context carried by a stream entry's fields, if any."""
    parent = fields.get(TRACEPARENT_FIELD)
    if parent is None:
        return None

    context = {TRACE_FIELDS[0]: parent.decode("ascii", "replace")}
    state = fields.get(_TRACESTATE)
    if state is not None:
        context[TRACE_FIELDS[1]] = state.decode("ascii", "replace")

    return context


def _ok(value: object) -> bool:
    return isinstance(value, str) and len(value) <= _TAIL
