"""The uniform payload: `Result { success data meta error }` and its parts."""

from __future__ import annotations

from enum import Enum

import strawberry
from strawberry.scalars import JSON

from engine import ColumnInfo
from resolvers import Outcome
from resolvers import Problem as PlainProblem

__all__ = ["Column", "Meta", "Problem", "ProblemCode", "Result", "column", "problem", "result"]


@strawberry.enum(description="What kind of failure a Problem reports.")
class ProblemCode(Enum):
    BAD_INPUT = "BAD_INPUT"
    NOT_FOUND = "NOT_FOUND"
    TIMEOUT = "TIMEOUT"
    TOO_LARGE = "TOO_LARGE"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    SOURCE_UNAVAILABLE = "SOURCE_UNAVAILABLE"
    READ_ONLY = "READ_ONLY"
    RATE_LIMITED = "RATE_LIMITED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    STORAGE_FULL = "STORAGE_FULL"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


@strawberry.type(description="An expected failure, in the user's terms.")
class Problem:
    code: ProblemCode
    message: str


@strawberry.type(description="One column of a dataset or result.")
class Column:
    name: str
    dtype: str
    null_count: int
    missing_rate: float


@strawberry.type(description="Facts about a result: its size, columns, timing and cache state.")
class Meta:
    row_count: int | None
    columns: list[Column]
    elapsed_ms: float
    cached: bool
    cache_key: str
    truncated: bool
    match_rate: float | None = strawberry.field(
        default=None, description="For a joined frame's summary: the share of left rows that found a match."
    )


@strawberry.type(description="Every analysis answer: success, data (JSON), meta, and a problem when it failed.")
class Result:
    success: bool
    data: JSON | None
    meta: Meta
    error: Problem | None


def column(info: ColumnInfo) -> Column:
    return Column(name=info.name, dtype=info.dtype, null_count=info.null_count, missing_rate=info.missing_rate)


def problem(p: PlainProblem | None) -> Problem | None:
    return None if p is None else Problem(code=ProblemCode(p.code), message=p.message)


def meta(outcome: Outcome) -> Meta:
    return Meta(
        row_count=outcome.row_count,
        columns=[column(c) for c in outcome.columns],
        elapsed_ms=outcome.elapsed_ms,
        cached=outcome.cached,
        cache_key=outcome.cache_key,
        truncated=outcome.truncated,
        match_rate=outcome.match_rate,
    )


def result(outcome: Outcome) -> Result:
    return Result(
        success=outcome.success,
        data=outcome.data if outcome.success else None,
        meta=meta(outcome),
        error=problem(outcome.problem),
    )
