"""Data checks as the API shows them: `Dataset.checks`, and the rules `setChecks` takes."""

from __future__ import annotations

from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from resolvers.checks import CheckView

__all__ = ["AllowedCheck", "Check", "CheckInput", "FreshnessCheck", "RangeCheck", "check_rules"]


@strawberry.type(description="A data check of a dataset and its result on the latest version checked.")
class Check:
    name: str = strawberry.field(description='Readable and stable: "notNull(dish)", "range(score, 1..5)".')
    rule: JSON = strawberry.field(description="The rule as set, in canonical form ({kind: value}).")
    passed: bool | None = strawberry.field(description="Null until a run finished, or when the run itself failed.")
    message: str | None = strawberry.field(description="What the run found, in words.")
    version: int | None = strawberry.field(description="The dataset version the result is of.")

    @classmethod
    def of(cls, view: CheckView) -> Check:
        return cls(
            name=view.name, rule=cast(JSON, view.rule), passed=view.passed, message=view.message, version=view.version
        )


@strawberry.input(description="Values of a column between min and max (either may be left out); nulls are not counted.")
class RangeCheck:
    column: str
    min: JSON | None = None
    max: JSON | None = None


@strawberry.input(description="Values of a column among these (nulls are not counted).")
class AllowedCheck:
    column: str
    values: list[JSON]


@strawberry.input(
    description='The newest value of a date or time column no older than maxAge ("30s", "15m", "1h30m", "2d").'
)
class FreshnessCheck:
    column: str
    max_age: str


@strawberry.input(
    one_of=True,
    description="One rule. rowCountChange r: the row count changes by at most r (0.5: 50 %) from the version before;"
    " sameSchema: the columns and their types are those of the version before. Both pass on a first version.",
)
class CheckInput:
    not_null: list[str] | None = strawberry.UNSET
    unique: list[str] | None = strawberry.UNSET
    range: RangeCheck | None = strawberry.UNSET
    allowed: AllowedCheck | None = strawberry.UNSET
    row_count_change: float | None = strawberry.UNSET
    freshness: FreshnessCheck | None = strawberry.UNSET
    same_schema: bool | None = strawberry.UNSET


def check_rules(checks: list[CheckInput]) -> list[dict[str, Any]]:
    """The rules as plain data, as the resolvers check them."""
    rules: list[dict[str, Any]] = []
    for given in checks:
        if isinstance(given.not_null, list):
            rules.append({"notNull": given.not_null})
        elif isinstance(given.unique, list):
            rules.append({"unique": given.unique})
        elif isinstance(given.range, RangeCheck):
            rules.append({"range": {"column": given.range.column, "min": given.range.min, "max": given.range.max}})
        elif isinstance(given.allowed, AllowedCheck):
            rules.append({"allowed": {"column": given.allowed.column, "values": given.allowed.values}})
        elif isinstance(given.freshness, FreshnessCheck):
            rules.append({"freshness": {"column": given.freshness.column, "maxAge": given.freshness.max_age}})
        elif isinstance(given.row_count_change, int | float):
            rules.append({"rowCountChange": given.row_count_change})
        else:
            rules.append({"sameSchema": given.same_schema})
    return rules
