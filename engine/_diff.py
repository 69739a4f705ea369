"""`diff`: what changed between two frames (after = this frame, before = the one it is compared to).

With a key, rows match by key: anti-joins give the added and removed rows, an inner join on the key
compares every common column (null equals null). Without one, whole rows (their common columns)
are compared as multisets. It is one lazy plan, collected once (with the checks that keys are unique).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from datagraph.errors import BadInput
from engine._columns import dtype_name
from engine._ops import collect
from engine._plan import Plan, build

__all__ = ["diff", "paired_stats"]

CHANGE = "_change"
BEFORE = "__before"


def diff(after: Plan, before: Plan, *, key: list[str] | None, limit: int) -> tuple[dict[str, Any], bool]:
    """The diff's {summary, rows}, and whether more than `limit` rows changed. The statistics of each
    side are `describe`'s, asked for (and cached) on their own: see `paired_stats`."""
    a_frame, a_schema = build(after)
    b_frame, b_schema = build(before)
    common = [c for c in a_schema if c in b_schema]
    if not common:
        raise BadInput("diff: the two frames have no column in common; there is nothing to compare.")
    summary: dict[str, Any] = {
        "columnsAdded": [c for c in a_schema if c not in b_schema],
        "columnsRemoved": [c for c in b_schema if c not in a_schema],
        "typeChanges": [
            {"column": c, "from": dtype_name(b_schema[c]), "to": dtype_name(a_schema[c])}
            for c in common
            if a_schema[c] != b_schema[c]
        ],
    }
    # Columns whose type changed are compared in a type both sides have.
    a_frame = a_frame.with_columns(_aligned(c, a_schema[c], b_schema[c]) for c in common)
    b_frame = b_frame.with_columns(_aligned(c, b_schema[c], a_schema[c]) for c in common)
    if key is None:
        counts, rows, truncated = _by_row(a_frame, b_frame, common, limit)
    else:
        _check_key(key, a_schema, b_schema)
        counts, rows, truncated = _by_key(a_frame, b_frame, key, common, limit)
    return {"summary": {**counts, **summary}, "rows": rows}, truncated


def paired_stats(after: list[dict[str, Any]], before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{column, before, after}] for each column both `describe` answers have, in the after order."""
    earlier = {record["column"]: record for record in before}
    return [
        {"column": r["column"], "before": earlier[r["column"]], "after": r} for r in after if r["column"] in earlier
    ]


def _aligned(name: str, mine: pl.DataType, theirs: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if mine == theirs:
        return col
    if mine.is_numeric() and theirs.is_numeric():
        return col.cast(pl.Float64)
    return col.cast(pl.String, strict=False)


def _check_key(key: list[str], a_schema: dict[str, Any], b_schema: dict[str, Any]) -> None:
    if not key:
        raise BadInput("diff: key needs at least one column (or leave key out to compare whole rows).")
    if len(set(key)) != len(key):
        raise BadInput("diff: key names a column more than once.")
    for side, schema in (("this frame (after)", a_schema), ("the frame it is compared against (before)", b_schema)):
        missing = [c for c in key if c not in schema]
        if missing:
            raise BadInput(f"diff: key column {', '.join(repr(c) for c in missing)} is not in {side}.")


def _duplicates(frame: pl.LazyFrame, key: list[str]) -> pl.LazyFrame:
    """How many rows share their key with another row (0 when the key is unique)."""
    return (
        frame.group_by(key)
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .select(pl.col("n").sum().alias("rows"), pl.len().alias("keys"))
    )


def _by_key(
    a: pl.LazyFrame, b: pl.LazyFrame, key: list[str], common: list[str], limit: int
) -> tuple[dict[str, int], list[dict[str, Any]], bool]:
    compared = [c for c in common if c not in key]
    a_names = list(a.collect_schema())
    b_names = list(b.collect_schema())
    removed_only = [c for c in b_names if c not in a_names]
    b_before = b.select(*key, *(pl.col(c).alias(c + BEFORE) for c in compared))
    both = a.join(b_before, on=key, how="inner", nulls_equal=True)
    differs = (
        pl.any_horizontal(pl.col(c).ne_missing(pl.col(c + BEFORE)) for c in compared) if compared else pl.lit(False)
    )
    both = both.with_columns(differs.alias("_differs"))
    added = a.join(b.select(key), on=key, how="anti", nulls_equal=True)
    removed = b.join(a.select(key), on=key, how="anti", nulls_equal=True)
    value_columns = [c for c in a_names if c not in key] + removed_only
    befores = [c + BEFORE for c in compared]
    shape = [CHANGE, *key, *value_columns, *befores]
    parts = [
        added.with_columns(pl.lit("added").alias(CHANGE)),
        removed.with_columns(pl.lit("removed").alias(CHANGE)),
        both.filter(pl.col("_differs")).drop("_differs").with_columns(pl.lit("changed").alias(CHANGE)),
    ]
    page = (
        pl.concat(parts, how="diagonal_relaxed")
        .select(pl.col(c) if c in _names(parts) else pl.lit(None).alias(c) for c in shape)
        .sort(key, nulls_last=True, maintain_order=True)
        .head(limit + 1)
    )
    counts = pl.concat(
        [
            added.select(pl.len().alias("n")),
            removed.select(pl.len().alias("n")),
            both.select(pl.col("_differs").sum().cast(pl.UInt32).alias("n")),
            both.select((~pl.col("_differs")).sum().cast(pl.UInt32).alias("n")),
        ]
    )
    dup_a, dup_b, n, found = collect(_duplicates(a, key), _duplicates(b, key), counts, page)
    for side, dups in (("this frame (after)", dup_a), ("the frame it is compared against (before)", dup_b)):
        if dups["rows"][0]:
            raise BadInput(
                f"diff: key {', '.join(key)} is not unique in {side}: {dups['rows'][0]:,} rows repeat"
                f" {dups['keys'][0]:,} key value(s). Choose columns that identify one row."
            )
    added_n, removed_n, changed_n, unchanged_n = (int(v or 0) for v in n["n"])
    summary = {"added": added_n, "removed": removed_n, "changed": changed_n, "unchanged": unchanged_n}
    return summary, found.head(limit).to_dicts(), found.height > limit


def _names(parts: list[pl.LazyFrame]) -> set[str]:
    return {name for part in parts for name in part.collect_schema()}


def _by_row(
    a: pl.LazyFrame, b: pl.LazyFrame, common: list[str], limit: int
) -> tuple[dict[str, int], list[dict[str, Any]], bool]:
    a_counts = a.group_by(common).agg(pl.len().cast(pl.Int64).alias("_after"))
    b_counts = b.group_by(common).agg(pl.len().cast(pl.Int64).alias("_before"))
    joined = a_counts.join(b_counts, on=common, how="full", nulls_equal=True, coalesce=True).with_columns(
        (pl.col("_after").fill_null(0) - pl.col("_before").fill_null(0)).alias("_delta")
    )
    differ = joined.filter(pl.col("_delta") != 0)
    totals = joined.select(
        pl.col("_delta").clip(lower_bound=0).sum().alias("added"),
        (-pl.col("_delta")).clip(lower_bound=0).sum().alias("removed"),
        pl.min_horizontal(pl.col("_after").fill_null(0), pl.col("_before").fill_null(0)).sum().alias("unchanged"),
    )
    page = (
        differ.with_columns(
            pl.when(pl.col("_delta") > 0).then(pl.lit("added")).otherwise(pl.lit("removed")).alias(CHANGE),
            pl.int_ranges(0, pl.col("_delta").abs()).alias("_i"),
        )
        .explode("_i")
        .sort([*common, CHANGE], nulls_last=True)
        .select(CHANGE, *common)
        .head(limit + 1)
    )
    t, found = collect(totals, page)
    summary = {"added": int(t["added"][0] or 0), "removed": int(t["removed"][0] or 0), "changed": 0}
    summary["unchanged"] = int(t["unchanged"][0] or 0)
    return summary, found.head(limit).to_dicts(), found.height > limit
