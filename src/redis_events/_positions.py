"""Positions in a stream: ``new``, ``all``, an entry id, or an ISO 8601 time."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from redis_events.exceptions import ConfigurationError

__all__ = ["MAX_SEQUENCE", "check_position", "position_to_id"]

MAX_SEQUENCE = 2**64 - 1
# ASCII digits only: \d also takes other scripts' digits, which Redis refuses.
_ENTRY_ID = re.compile(r"[0-9]+(-[0-9]+)?")
# What each use of a position accepts, as error messages name it: a range
# has no "new" end, and "all" only makes sense as its start.
_ACCEPTED = {
    "group": "new, all, an entry id (1700000000000-0) or an ISO 8601 time",
    "first": "all, an entry id (1700000000000-0) or an ISO 8601 time",
    "last": "an entry id (1700000000000-0) or an ISO 8601 time",
}
_KEYWORDS = {"group": {"new", "all"}, "first": {"all"}, "last": set[str]()}


def check_position(value: str, *, name: str = "start_from") -> str:
    """Return ``value`` if it is a usable position.

    Raises:
        ConfigurationError: It is not ``new``, ``all``, an entry id
            (``1700000000000-0``) or an ISO 8601 time with dashes.
    """
    _millis(value, name=name, edge="group")
    return value


def position_to_id(value: str, *, edge: str, name: str = "start_from") -> str:
    """Turn a position into a stream id.

    ``edge`` says what the id is for: ``"first"`` is the first entry to
    include (XRANGE start), ``"last"`` the last one to include (XRANGE end),
    ``"group"`` the last one a new group must not deliver (XGROUP CREATE,
    where an entry id keeps Redis's meaning: start after it).

    Raises:
        ConfigurationError: The position is not usable, or not for this
            ``edge`` (``new`` only starts a group, ``all`` never ends a range).
    """
    if value in _KEYWORDS[edge]:
        return "$" if value == "new" else "0"

    if _is_entry_id(value, name=name, edge=edge):
        return value

    millis = _millis(value, name=name, edge=edge)
    if edge == "first":
        return f"{millis}-0"

    if edge == "last":
        return f"{millis}-{MAX_SEQUENCE}"

    return f"{millis - 1}-{MAX_SEQUENCE}" if millis > 0 else "0"


def _millis(value: str, *, name: str, edge: str) -> int:
    if _is_entry_id(value, name=name, edge=edge):
        return 0

    if value in _KEYWORDS[edge]:
        return 0

    if "-" not in value:
        # "20240101" would parse as a date, but an all-digit value is an id.
        raise _bad(value, name, edge)

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad(value, name, edge) from None

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    millis = int(moment.timestamp() * 1000)
    if millis < 0:
        raise _bad(value, name, edge)

    return millis


def _is_entry_id(value: str, *, name: str, edge: str) -> bool:
    if not _ENTRY_ID.fullmatch(value):
        return False

    # Both parts of an id are 64-bit: Redis refuses a larger one, and that
    # is a bad setting, not a Redis failure.
    if any(int(part) > MAX_SEQUENCE for part in value.split("-")):
        raise _bad(value, name, edge)

    return True


def _bad(value: str, name: str, edge: str) -> ConfigurationError:
    return ConfigurationError(
        f"{name} must be {_ACCEPTED[edge]} such as 2024-01-01T00:00:00Z, not {value!r}"
    )
