"""The uniform payload: `Result { success data meta error }` and its parts."""

from __future__ import annotations

from enum import Enum
from typing import Any

import strawberry
from strawberry.scalars import JSON

from engine import ColumnInfo
from resolvers import Outcome
from resolvers import Problem as PlainProblem
from resolvers.context import Context

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


# The two fields a stored whole answer patches (server/answers.py): where they are is recorded.
def _elapsed_ms(root: Meta, info: strawberry.Info[Context, None]) -> float:
    if (reads := info.context.reads) is not None:
        reads.mark(tuple(info.path.as_list()), "elapsedMs")
    return root.took_ms


def _cached(root: Meta, info: strawberry.Info[Context, None]) -> bool:
    if (reads := info.context.reads) is not None:
        reads.mark(tuple(info.path.as_list()), "cached")
    return root.from_cache


@strawberry.type(description="Facts about a result: its size, columns, timing and cache state.")
class Meta:
    row_count: int | None
    columns: list[Column]
    took_ms: strawberry.Private[float]
    from_cache: strawberry.Private[bool]
    elapsed_ms: float = strawberry.field(resolver=_elapsed_ms)
    cached: bool = strawberry.field(resolver=_cached)
    cache_key: str = ""
    truncated: bool = False
    match_rate: float | None = strawberry.field(
        default=None, description="For a joined frame's summary: the share of left rows that found a match."
    )
    null_keys: int | None = strawberry.field(
        default=None,
        description="For rows of a frame with resample or period windows: the rows without a time (left out"
        " of a resample, given no value by a period window).",
    )
    read: strawberry.Private[dict[str, int] | None] = None

    @strawberry.field(
        description="For a watch's result: the version of each dataset it was computed on ({dataset: version})."
    )
    def versions(self) -> JSON | None:
        return self.read  # type: ignore[return-value]


@strawberry.type(description="Every analysis answer: success, data (JSON), meta, and a problem when it failed.")
class Result:
    ok: strawberry.Private[bool]
    value: strawberry.Private[Any]
    about: strawberry.Private[Meta]
    failure: strawberry.Private[Problem | None]

    # A failed result is never kept as part of a whole answer, whichever of its fields were asked for.
    @strawberry.field
    def success(self, info: strawberry.Info[Context, None]) -> bool:
        _note(info, self.ok)
        return self.ok

    @strawberry.field
    def data(self, info: strawberry.Info[Context, None]) -> JSON | None:
        _note(info, self.ok)
        return self.value  # type: ignore[no-any-return]

    @strawberry.field
    def meta(self, info: strawberry.Info[Context, None]) -> Meta:
        _note(info, self.ok)
        return self.about

    @strawberry.field
    def error(self, info: strawberry.Info[Context, None]) -> Problem | None:
        _note(info, self.ok)
        return self.failure


def _note(info: strawberry.Info[Context, None], ok: bool) -> None:
    if not ok and (reads := info.context.reads) is not None:
        reads.refuse("a result failed")


def column(info: ColumnInfo) -> Column:
    return Column(name=info.name, dtype=info.dtype, null_count=info.null_count, missing_rate=info.missing_rate)


def problem(p: PlainProblem | None) -> Problem | None:
    return None if p is None else Problem(code=ProblemCode(p.code), message=p.message)


def meta(outcome: Outcome, versions: dict[str, int] | None = None) -> Meta:
    return Meta(
        row_count=outcome.row_count,
        columns=[column(c) for c in outcome.columns],
        took_ms=outcome.elapsed_ms,
        from_cache=outcome.cached,
        cache_key=outcome.cache_key,
        truncated=outcome.truncated,
        match_rate=outcome.match_rate,
        null_keys=outcome.null_keys,
        read=versions,
    )


def result(outcome: Outcome, versions: dict[str, int] | None = None) -> Result:
    """The Result of an outcome; `versions` ({dataset: version}) when the caller knows what it read."""
    return Result(
        ok=outcome.success,
        value=outcome.data if outcome.success else None,
        about=meta(outcome, versions),
        failure=problem(outcome.problem),
    )
