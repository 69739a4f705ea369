"""Data checks: rules a dataset's versions should keep, checked when set and evaluated per version.

A rule is plain data, one key naming its kind: `{"notNull": [columns]}`, `{"unique": [columns]}`,
`{"range": {"column", "min", "max"}}`, `{"allowed": {"column", "values"}}`, `{"rowCountChange": r}`,
`{"freshness": {"column", "maxAge"}}` or `{"sameSchema": true}`. `checked_rules` validates rules
against a version's columns and gives them their canonical form and readable, stable names.

Every rule that reads rows is answered by ONE lazy plan over the version's Parquet (`evaluate`, run
in a worker): one scan, one row of aggregates. The rules that compare a version with the one before
(rowCountChange, sameSchema) need no rows: `compare_shapes` answers them from the metadata.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from datagraph.durations import DURATION_HELP, format_duration, parse_duration
from datagraph.errors import BadInput

__all__ = [
    "CHECK_KINDS",
    "ROW_RULES",
    "Shape",
    "check_name",
    "checked_rules",
    "compare_shapes",
    "evaluate",
    "inapplicable",
    "schema_changes",
]

CHECK_KINDS = ("notNull", "unique", "range", "allowed", "rowCountChange", "freshness", "sameSchema")
ROW_RULES = frozenset({"notNull", "unique", "range", "allowed", "freshness"})  # those that read rows
_SHOWN = 3  # offending values a message quotes
_INT64, _UINT64 = -(2**63), 2**64  # the integers a rule may hold: those a column (and the metadata's JSON) can


@dataclass(frozen=True, slots=True)
class Shape:
    """What the metadata says of a version: its rows and its columns' dtypes, in order."""

    rows: int
    columns: Mapping[str, str]


def _kind(dtype: str) -> str:
    """The kind of value a column of `dtype` (a dtype name as the API reports it) holds."""
    if dtype.startswith(("Int", "UInt", "Float", "Decimal")):
        return "number"
    return {"String": "text", "Boolean": "bool", "Date": "date", "Datetime": "datetime"}.get(dtype, "other")


_ORDERABLE = {"number", "date", "datetime"}


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _show(value: Any) -> str:
    return repr(_clip(value)) if isinstance(value, str) else str(value)


# --- validation ----------------------------------------------------------------------------------


def checked_rules(
    raw: list[dict[str, Any]], columns: Mapping[str, str], *, max_rules: int, max_values: int
) -> list[dict[str, Any]]:
    """`raw` rules in canonical form, each checked against `columns` (name -> dtype name); BAD_INPUT
    naming the rule (by its position) and what is wrong, in the user's terms."""
    if len(raw) > max_rules:
        raise BadInput(f"setChecks takes at most {max_rules:,} checks per dataset (setting checks_max_rules).")
    rules: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, given in enumerate(raw):
        where = f"checks[{index}]"
        kinds = [k for k, v in given.items() if v is not None]
        if len(kinds) != 1 or kinds[0] not in CHECK_KINDS:
            raise BadInput(f"{where}: give exactly one of {', '.join(CHECK_KINDS)}.")
        kind = kinds[0]
        rule = {kind: _checked(kind, given[kind], columns, where, max_values)}
        name = check_name(rule)
        if name in names:
            raise BadInput(f"{where}: {name} is given twice; give each check once.")
        names.add(name)
        rules.append(rule)
    return rules


def _column(name: Any, columns: Mapping[str, str], where: str) -> str:
    if not isinstance(name, str) or name not in columns:
        shown = ", ".join(list(columns)[:25]) + (" ..." if len(columns) > 25 else "")
        raise BadInput(f'{where}: there is no column "{_clip(str(name))}". Columns: {shown}.')
    return name


def _checked(kind: str, value: Any, columns: Mapping[str, str], where: str, max_values: int) -> Any:
    where = f"{where}.{kind}"
    if kind in ("notNull", "unique"):
        if not isinstance(value, list) or not value:
            raise BadInput(f"{where}: give one or more column names.")
        if len(value) > max_values:
            raise BadInput(f"{where}: at most {max_values:,} columns (setting checks_max_values).")
        names = [_column(c, columns, where) for c in value]
        if len(set(names)) != len(names):
            raise BadInput(f"{where}: name each column once.")
        return names
    if kind == "range":
        column = _column(value.get("column"), columns, where)
        dtype = columns[column]
        if _kind(dtype) not in _ORDERABLE:
            raise BadInput(
                f'{where}: "{column}" holds {dtype} values, which have no order; a range takes a column of'
                " numbers, dates or times (for text, list the allowed values)."
            )
        low, high = (_bound(value.get(end), dtype, f"{where}.{end}") for end in ("min", "max"))
        if low is None and high is None:
            raise BadInput(f"{where}: give min, max or both.")
        if low is not None and high is not None and _ordered(low, dtype) > _ordered(high, dtype):
            raise BadInput(f"{where}: min ({_show(low)}) is greater than max ({_show(high)}).")
        return {"column": column, "min": low, "max": high}
    if kind == "allowed":
        column = _column(value.get("column"), columns, where)
        values = value.get("values")
        dtype = columns[column]
        if not isinstance(values, list) or not values:
            raise BadInput(f"{where}: give the allowed values, one or more.")
        if len(values) > max_values:
            raise BadInput(f"{where}: at most {max_values:,} allowed values (setting checks_max_values).")
        if _kind(dtype) not in ("number", "text", "bool", "date"):
            raise BadInput(f'{where}: "{column}" holds {dtype} values; allowed takes numbers, text, booleans or dates.')
        checked = [_value(v, dtype, f"{where}.values[{i}]") for i, v in enumerate(values)]
        return {"column": column, "values": list(dict.fromkeys(checked))}
    if kind == "rowCountChange":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise BadInput(f"{where}: give the largest change allowed as a fraction, 0 or more (0.5 for 50 %).")
        return float(value)
    if kind == "freshness":
        column = _column(value.get("column"), columns, where)
        if _kind(columns[column]) not in ("date", "datetime"):
            raise BadInput(
                f'{where}: "{column}" holds {columns[column]} values; freshness takes a date or time column.'
            )
        max_age = value.get("maxAge")
        try:
            parse_duration(max_age)
        except ValueError:
            raise BadInput(f"{where}.maxAge: {_show(max_age)} is not {DURATION_HELP}.") from None
        return {"column": column, "maxAge": max_age.strip().lower()}
    # sameSchema
    if value is not True:
        raise BadInput(f"{where}: give sameSchema: true (leave the check out to allow changes).")
    return True


def _value(value: Any, dtype: str, where: str) -> Any:
    """A rule's value for a column of `dtype`, as JSON keeps it; BAD_INPUT when it is of another kind."""
    kind = _kind(dtype)
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool) and not _INT64 <= value < _UINT64:
        bits = value.bit_length() + (value < 0)  # its digits are not shown: there may be thousands
        raise BadInput(f"{where}: a {bits}-bit integer is not a number of at most 64 bits, as a column's values are.")
    ok = {
        "number": isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        "text": isinstance(value, str),
        "bool": isinstance(value, bool),
    }.get(kind)
    if kind in ("date", "datetime"):
        ok = isinstance(value, str) and _when(value, kind) is not None
    if not ok:
        wanted = {"number": "a number", "text": "text", "bool": "true or false", "date": "a date (2024-05-01)",
                  "datetime": "a date and time (2024-05-01T12:00:00)"}[kind]  # fmt: skip
        raise BadInput(f"{where}: {_clip(repr(value))} is not {wanted}, as the column's {dtype} values are.")
    return value


def _bound(value: Any, dtype: str, where: str) -> Any:
    return None if value is None else _value(value, dtype, where)


def _when(text: str, kind: str) -> dt.date | dt.datetime | None:
    try:
        if kind == "date":
            return dt.date.fromisoformat(text)
        moment = dt.datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _ordered(value: Any, dtype: str) -> Any:
    kind = _kind(dtype)
    return _when(value, kind) if kind in ("date", "datetime") else value


def check_name(rule: dict[str, Any]) -> str:
    """A readable name that stays the same for the same rule: "notNull(dish)", "range(score, 1..5)"."""
    ((kind, value),) = rule.items()
    if kind in ("notNull", "unique"):
        return f"{kind}({', '.join(value)})"
    if kind == "range":
        low = "" if value["min"] is None else value["min"]
        high = "" if value["max"] is None else value["max"]
        return f"range({value['column']}, {low}..{high})"
    if kind == "allowed":
        values = value["values"]
        listed = "|".join(str(v) for v in values)
        shown = listed if len(values) <= 5 and len(listed) <= 60 else f"{len(values)} values"
        return f"allowed({value['column']}, {shown})"
    if kind == "rowCountChange":
        return f"rowCountChange({value:g})"
    if kind == "freshness":
        return f"freshness({value['column']}, {value['maxAge']})"
    return "sameSchema"


# --- evaluation ----------------------------------------------------------------------------------


def _literal(value: Any, dtype: pl.DataType) -> Any:
    """A rule's JSON value as a literal comparable with a column of `dtype`."""
    if isinstance(dtype, pl.Date):
        return _when(value, "date")
    if isinstance(dtype, pl.Datetime):
        moment = _when(value, "datetime")  # checked when the rule was set: it parses
        assert isinstance(moment, dt.datetime)
        if dtype.time_zone is None:  # naive times are taken as UTC
            return moment.astimezone(dt.UTC).replace(tzinfo=None)
        # The same instant in the column's own zone: Polars compares times of one zone only.
        return pl.lit(moment.astimezone(dt.UTC)).dt.convert_time_zone(dtype.time_zone)
    return value


def _plan(frame: pl.LazyFrame, rules: list[dict[str, Any]]) -> pl.LazyFrame:
    """One select of every row rule's aggregates (columns named r<index>_...) over `frame`."""
    schema = frame.collect_schema()
    exprs: list[pl.Expr] = [pl.len().alias("rows")]
    for i, rule in enumerate(rules):
        ((kind, value),) = rule.items()
        if kind == "notNull":
            exprs += [pl.col(c).null_count().alias(f"r{i}_{j}") for j, c in enumerate(value)]
        elif kind == "unique":
            keys = pl.col(value[0]) if len(value) == 1 else pl.struct(value)
            exprs.append(keys.n_unique().alias(f"r{i}_distinct"))
        elif kind == "range":
            column = pl.col(value["column"])
            dtype = schema[value["column"]]
            outside = pl.lit(False)
            if value["min"] is not None:
                outside = outside | (column < _literal(value["min"], dtype))
            if value["max"] is not None:
                outside = outside | (column > _literal(value["max"], dtype))
            exprs += [
                outside.fill_null(False).sum().alias(f"r{i}_outside"),
                column.min().cast(pl.String).alias(f"r{i}_low"),
                column.max().cast(pl.String).alias(f"r{i}_high"),
            ]
        elif kind == "allowed":
            column = pl.col(value["column"])
            dtype = schema[value["column"]]
            allowed = pl.Series([_literal(v, dtype) for v in value["values"]], dtype=dtype, strict=False)
            bad = ~column.is_in(allowed.implode()) & column.is_not_null()
            exprs += [
                bad.sum().alias(f"r{i}_bad"),
                column.filter(bad).unique().sort().head(_SHOWN).cast(pl.String).implode().alias(f"r{i}_shown"),
            ]
        elif kind == "freshness":
            exprs.append(pl.col(value["column"]).max().alias(f"r{i}_newest"))
    return frame.select(exprs)


def evaluate(path: Path, rules: list[dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """Run in a worker: the result of each row rule in `rules` ({name: {passed, message}}) on the
    version at `path` (a file or a parts folder), in one pass; `now` is the time freshness counts from."""
    wanted = [rule for rule in rules if next(iter(rule)) in ROW_RULES]
    if not wanted:
        return {}
    row = _plan(pl.scan_parquet(path), wanted).collect().row(0, named=True)
    rows = int(row["rows"])
    results = {}
    for i, rule in enumerate(wanted):
        passed, message = _judged(rule, i, row, rows, now)
        results[check_name(rule)] = {"passed": passed, "message": message}
    return results


def _judged(rule: dict[str, Any], i: int, row: dict[str, Any], rows: int, now: float) -> tuple[bool, str]:
    ((kind, value),) = rule.items()
    if kind == "notNull":
        nulls = {c: int(row[f"r{i}_{j}"]) for j, c in enumerate(value)}
        missing = [f"{c} has {n:,} null{'s' if n != 1 else ''}" for c, n in nulls.items() if n]
        return (not missing, "; ".join(missing) if missing else f"no nulls in {', '.join(value)}")
    if kind == "unique":
        repeated = rows - int(row[f"r{i}_distinct"])
        what = ", ".join(value)
        if repeated:
            return False, f"{repeated:,} row{'s' if repeated != 1 else ''} repeat a value of {what} seen before"
        return True, f"every value of {what} is unique"
    if kind == "range":
        outside = int(row[f"r{i}_outside"])
        low, high = row[f"r{i}_low"], row[f"r{i}_high"]
        bounds = f"{'' if value['min'] is None else value['min']}..{'' if value['max'] is None else value['max']}"
        seen = f"lowest {low}, highest {high}" if low is not None else "no values"
        if outside:
            return (
                False,
                f"{outside:,} value{'s' if outside != 1 else ''} of {value['column']} outside {bounds} ({seen})",
            )
        return True, f"every value of {value['column']} is within {bounds} ({seen})"
    if kind == "allowed":
        bad = int(row[f"r{i}_bad"])
        if bad:
            shown = ", ".join(_show(v) for v in row[f"r{i}_shown"])
            return False, f"{bad:,} value{'s' if bad != 1 else ''} of {value['column']} not allowed, e.g. {shown}"
        return True, f"every value of {value['column']} is allowed"
    # freshness
    newest = row[f"r{i}_newest"]
    column, max_age = value["column"], value["maxAge"]
    if newest is None:
        return False, f"{column} has no values"
    if isinstance(newest, dt.datetime):
        moment = newest if newest.tzinfo else newest.replace(tzinfo=dt.UTC)
    elif newest >= dt.date.max:  # the last day there is ("never expires") never ends
        return True, f"the newest {column} is {newest.isoformat()}, within {max_age}"
    else:  # a date is current until its day ends
        moment = dt.datetime.combine(newest + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    age = now - moment.timestamp()
    if age > parse_duration(max_age):
        old = format_duration(age, parts=2)
        return False, f"the newest {column} is {newest.isoformat()}, {old} old, older than {max_age}"
    return True, f"the newest {column} is {newest.isoformat()}, within {max_age}"


# --- comparing with the version before ------------------------------------------------------------


def schema_changes(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, list[dict[str, str]]]:
    """The columns added, removed and retyped from `before` to `after` (name -> dtype name)."""
    return {
        "added": [{"name": n, "dtype": t} for n, t in after.items() if n not in before],
        "removed": [{"name": n, "dtype": t} for n, t in before.items() if n not in after],
        "retyped": [
            {"name": n, "from": before[n], "to": t} for n, t in after.items() if n in before and before[n] != t
        ],
    }


def compare_shapes(rules: list[dict[str, Any]], now: Shape, before: Shape | None) -> dict[str, dict[str, Any]]:
    """The result of each rule in `rules` that compares a version with the one before it; both pass
    on a first version (or when the one before is no longer known)."""
    results = {}
    for rule in rules:
        ((kind, value),) = rule.items()
        if kind == "rowCountChange":
            if before is None:
                passed, message = True, "the first version: nothing to compare with"
            else:
                change = (now.rows - before.rows) / before.rows if before.rows else (0.0 if not now.rows else math.inf)
                passed = abs(change) <= value
                shown = "from none" if math.isinf(change) else f"{change:+.0%}"
                message = f"rows went from {before.rows:,} to {now.rows:,} ({shown})" + (
                    "" if passed else f", more than {value:.0%}"
                )
        elif kind == "sameSchema":
            if before is None:
                passed, message = True, "the first version: nothing to compare with"
            else:
                changes = schema_changes(before.columns, now.columns)
                passed = not any(changes.values()) and list(before.columns) == list(now.columns)
                message = "the columns and their types are unchanged" if passed else _said(changes)
        else:
            continue
        results[check_name(rule)] = {"passed": passed, "message": message}
    return results


def inapplicable(rules: list[dict[str, Any]], columns: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """A failed result for each rule that no longer fits the version's `columns` (a column it reads is
    gone, or now holds values of another kind), saying why."""
    results = {}
    for rule in rules:
        ((kind, value),) = rule.items()
        try:
            _checked(kind, value, columns, "", max_values=2**31)
        except BadInput as exc:
            why = exc.message.split(": ", 1)[-1].split(". Columns:")[0]
            results[check_name(rule)] = {"passed": False, "message": f"this version does not fit the check: {why}"}
    return results


def _said(changes: dict[str, list[dict[str, str]]]) -> str:
    parts = []
    if changes["added"]:
        parts.append("added " + ", ".join(c["name"] for c in changes["added"]))
    if changes["removed"]:
        parts.append("removed " + ", ".join(c["name"] for c in changes["removed"]))
    if changes["retyped"]:
        parts.append("retyped " + ", ".join(f"{c['name']} ({c['from']} -> {c['to']})" for c in changes["retyped"]))
    return "columns changed: " + ("; ".join(parts) if parts else "their order")
