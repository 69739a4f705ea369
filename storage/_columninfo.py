"""A column as the API reports it, in a module of its own: the engine's worker processes need it, and
must not pay for importing SQLAlchemy (the metadata tables) to get it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ColumnInfo"]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """A column as the API reports it: name, dtype name, null count and missing rate."""

    name: str
    dtype: str
    null_count: int
    missing_rate: float
