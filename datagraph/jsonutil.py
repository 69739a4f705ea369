"""JSON encoding for responses and cache keys: orjson, NaN/inf as null, dates as ISO text."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
from typing import Any

import orjson

__all__ = ["Encoded", "canonical", "canonical_hash", "depth_over", "dumps", "loads"]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class Encoded:
    """A value already encoded as JSON bytes (by `dumps`), written out as it is, never decoded again:
    a page of rows encoded in a worker passes through the cache and the response untouched."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Encoded) and other.raw == self.raw

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Encoded({len(self.raw)} bytes)"


def _default(value: Any) -> Any:
    if isinstance(value, Encoded):
        return orjson.Fragment(value.raw)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Encode to JSON bytes; orjson writes NaN and infinities as null."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def canonical(value: Any) -> bytes:
    """The value's canonical JSON (sorted keys)."""
    return orjson.dumps(value, default=_default, option=_OPTIONS | orjson.OPT_SORT_KEYS)


def canonical_hash(value: Any) -> str:
    """sha256 of the value's canonical JSON (sorted keys), as hex."""
    return hashlib.sha256(canonical(value)).hexdigest()


def depth_over(value: Any, limit: int) -> bool:
    """Whether `value` (plain JSON data) nests lists and objects more than `limit` deep; walked
    without recursion, so a hostile value cannot exhaust the stack, and stopped at the first too-deep one."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
