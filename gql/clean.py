"""The GraphQL inputs of `clean(steps)` and their conversion to the engine's `Clean` step.

`CleanStep` is a `@oneOf` input: each step sets exactly one field, and a list of steps is applied
in order. `columns` left out means every column the step applies to.
"""

from __future__ import annotations

from enum import Enum

import strawberry
from strawberry.scalars import JSON

import engine
from engine import Cast, CleanStep, DropDuplicates, DropNulls, FillNulls, ParseDates, Rename, Trim

__all__ = [
    "CastInput",
    "CastType",
    "CleanStepInput",
    "DateType",
    "DropDuplicatesInput",
    "DropNullsInput",
    "DuplicateKeep",
    "FillNullsInput",
    "FillStrategy",
    "NullHow",
    "ParseDatesInput",
    "RenameInput",
    "TrimInput",
    "to_clean",
]


@strawberry.enum(description="ANY drops a row missing any of the columns; ALL one missing all of them.")
class NullHow(Enum):
    ANY = "ANY"
    ALL = "ALL"


@strawberry.enum(description="VALUE fills with a constant; FORWARD with the previous value; MEAN with the column mean.")
class FillStrategy(Enum):
    VALUE = "VALUE"
    FORWARD = "FORWARD"
    MEAN = "MEAN"


@strawberry.enum(description="Types a column can be cast to.")
class CastType(Enum):
    INT = "INT"
    FLOAT = "FLOAT"
    TEXT = "TEXT"
    BOOLEAN = "BOOLEAN"
    DATE = "DATE"
    DATETIME = "DATETIME"


@strawberry.enum(description="Which of the duplicate rows to keep: the FIRST, the LAST, or NONE of them.")
class DuplicateKeep(Enum):
    FIRST = "FIRST"
    LAST = "LAST"
    NONE = "NONE"


@strawberry.enum(description="What parseDates makes: dates, or timestamps (date and time).")
class DateType(Enum):
    DATE = "DATE"
    DATETIME = "DATETIME"


@strawberry.input(name="DropNullsInput", description="Drop rows with missing values in columns (all if left out).")
class DropNullsInput:
    how: NullHow | None = NullHow.ANY
    columns: list[str] | None = None


@strawberry.input(
    name="FillNullsInput",
    description="Fill missing values in columns (if left out: every column the value fits, every column for "
    "FORWARD, every numeric column for MEAN). VALUE needs value; integer columns filled with MEAN become floats.",
)
class FillNullsInput:
    value: JSON | None = None
    strategy: FillStrategy | None = FillStrategy.VALUE
    columns: list[str] | None = None


@strawberry.input(
    name="CastInput",
    description="Convert columns to a type; fails naming the values that do not convert (2.5 is not an INT).",
)
class CastInput:
    columns: list[str]
    to: CastType


@strawberry.input(name="RenameInput", description="Rename the column `from` to `to`; all renames happen at once.")
class RenameInput:
    from_: str = strawberry.field(name="from")
    to: str


@strawberry.input(
    name="DropDuplicatesInput",
    description="Drop rows equal on columns (all columns if left out) to an earlier or later row; order is kept.",
)
class DropDuplicatesInput:
    columns: list[str] | None = None
    keep: DuplicateKeep | None = DuplicateKeep.FIRST


@strawberry.input(name="TrimInput", description="Strip whitespace from both ends of text (all text columns if none).")
class TrimInput:
    columns: list[str] | None = None


@strawberry.input(
    name="ParseDatesInput",
    description='Read text columns as dates with a strftime format such as "%d/%m/%Y" or "%Y-%m-%d %H:%M".',
)
class ParseDatesInput:
    columns: list[str]
    format: str
    to: DateType | None = DateType.DATE


@strawberry.input(name="CleanStep", one_of=True, description="One cleaning step; a list of them is applied in order.")
class CleanStepInput:
    drop_nulls: DropNullsInput | None = strawberry.UNSET
    fill_nulls: FillNullsInput | None = strawberry.UNSET
    cast: CastInput | None = strawberry.UNSET
    rename: list[RenameInput] | None = strawberry.UNSET
    drop_duplicates: DropDuplicatesInput | None = strawberry.UNSET
    trim: TrimInput | None = strawberry.UNSET
    parse_dates: ParseDatesInput | None = strawberry.UNSET


def _columns(columns: list[str] | None) -> tuple[str, ...] | None:
    return None if columns is None else tuple(columns)


def _step(s: CleanStepInput) -> CleanStep:
    # @oneOf: exactly one field of each step is set; the others are UNSET.
    if isinstance(s.drop_nulls, DropNullsInput):
        return DropNulls((s.drop_nulls.how or NullHow.ANY).value, _columns(s.drop_nulls.columns))
    if isinstance(s.fill_nulls, FillNullsInput):
        fill = s.fill_nulls
        return FillNulls((fill.strategy or FillStrategy.VALUE).value, fill.value, _columns(fill.columns))
    if isinstance(s.cast, CastInput):
        return Cast(tuple(s.cast.columns), s.cast.to.value)
    if isinstance(s.rename, list):
        return Rename(tuple((r.from_, r.to) for r in s.rename))
    if isinstance(s.drop_duplicates, DropDuplicatesInput):
        keep = s.drop_duplicates.keep or DuplicateKeep.FIRST
        return DropDuplicates(_columns(s.drop_duplicates.columns), keep.value)
    if isinstance(s.trim, TrimInput):
        return Trim(_columns(s.trim.columns))
    if isinstance(s.parse_dates, ParseDatesInput):
        parse = s.parse_dates
        return ParseDates(tuple(parse.columns), parse.format, (parse.to or DateType.DATE).value)
    raise ValueError("a CleanStep sets exactly one field")  # GraphQL's @oneOf check makes this unreachable


def to_clean(steps: list[CleanStepInput]) -> engine.Clean:
    """The engine's `Clean` step for a list of GraphQL cleaning steps."""
    return engine.Clean(tuple(_step(s) for s in steps))
