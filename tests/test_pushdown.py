"""Pushing plan steps down to linked tables: every pipeline, pushed to SQLite, PostgreSQL, MariaDB
and DuckDB and finished by the engine on the fetched rows, gives the frame the engine gives running all of it on
the same data; and each dialect pushes as many steps as it can express exactly."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb_engine
import duckfiles
import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal
from sqlalchemy.dialects import mysql, postgresql, sqlite
from support import DATA, scratch_schema

from connectors.linked import fetch_frame
from connectors.pushdown import Pushed, count_query, push_down
from datagraph.errors import BadInput
from engine import (
    Aggregation,
    Clean,
    Condition,
    Filter,
    GroupBy,
    Plan,
    Select,
    Slice,
    Sort,
    SortKey,
    Source,
    Step,
    build,
    count,
)
from engine._clean import DropNulls

# Text that case-blind, space-padding collations and LIKE wildcards would get wrong.
TEXTS = ["a", "A", "a ", "b", "B", "ab", "aB", "Ab", "é", "e", "%", "_", "a%b", "a_b", "\\", "'", "", None, "Zebra", "zebra", "ä", "ba", "bab"]  # fmt: skip
WORDS = pl.DataFrame(
    {
        "word": TEXTS,
        "g": [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, None, None],
        "n": [1, 2, None, 4, 5, 6, 7, 8, 9, 10, None, None, None, None, 1, 1, 2, 3, 4, 5, 6, 7, 8],
    }
)
FRAMES = {
    "tips": pl.read_csv(DATA / "tips.csv"),
    "penguins": pl.read_csv(DATA / "penguins.csv"),
    "words": WORDS,
    # Booleans, dates and decimals (DOUBLE on SQLite), compared with the engine on the fetched table.
    "events": pl.DataFrame(
        {
            "id": list(range(12)),
            "g": [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, None],
            "flag": [True, False, None, True, True, None, False, False, True, None, None, True],
            "when": [dt.date(2024, m, d) for m, d in [(1, 5), (1, 20), (2, 1), (3, 1), (3, 1), (4, 9)]]
            + [None, dt.date(2023, 12, 31), dt.date(2024, 2, 29), None, None, dt.date(2024, 1, 15)],
            "amount": [10.5, 12.0, None, 5.25, 99.99, 10.0, 0.01, None, 12.0, None, None, 7.5],
        }
    ),
}
DIALECTS = ("sqlite", "postgresql", "mysql")


def _pushes(by_dialect: tuple[int, int, int], dialect: str) -> int:
    """How many steps the dialect pushes; DuckDB exactly what PostgreSQL does."""
    return dict(zip(DIALECTS, by_dialect, strict=True))["postgresql" if dialect == "duckdb" else dialect]


@dataclass
class Db:
    dialect: str
    engine: sa.Engine
    tables: dict[str, sa.Table]


def _sql_type(dtype: pl.DataType) -> sa.types.TypeEngine[Any]:
    types: list[tuple[pl.DataType, sa.types.TypeEngine[Any]]] = [
        (pl.Int64(), sa.BigInteger()),
        (pl.Float64(), sa.Double()),
        (pl.Boolean(), sa.Boolean()),
        (pl.Date(), sa.Date()),
    ]
    return next((sql for polars, sql in types if dtype == polars), sa.String(64))


def _tables(dialect: str, schema: str | None) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    """A table per frame. The words are stored under a case-blind collation, so only a push that
    compares bytes gets them right (MariaDB's default utf8mb4_general_ci already is one)."""
    meta = sa.MetaData(schema=schema)
    created = {
        name: sa.Table(name, meta, *(sa.Column(c, _sql_type(t)) for c, t in frame.schema.items()))
        for name, frame in FRAMES.items()
    }
    if dialect in ("sqlite", "duckdb"):
        created["words"].c.word.type = sa.String(64, collation="NOCASE")
    if dialect != "sqlite":
        created["events"].c.amount.type = sa.Numeric(10, 2)
    return meta, created


def _fill(conn: sa.Connection, schema: str | None) -> None:
    meta, created = _tables(conn.dialect.name, schema)
    meta.create_all(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"CREATE COLLATION {schema}.blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        )
        conn.exec_driver_sql(f"ALTER TABLE {schema}.words ALTER COLUMN word TYPE varchar(64) COLLATE {schema}.blind")
    for name, frame in FRAMES.items():
        conn.execute(created[name].insert(), frame.to_dicts())


def _load(engine: sa.Engine, schema: str | None) -> dict[str, sa.Table]:
    """Create and fill the tables, then reflect them back as a linked table is."""
    with engine.begin() as conn:
        _fill(conn, schema)
    reflected = sa.MetaData(schema=schema)
    with engine.connect() as conn:
        return {name: sa.Table(name, reflected, autoload_with=conn) for name in FRAMES}


@pytest.fixture(scope="module", params=(*DIALECTS, "duckdb"))
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    dialect: str = request.param
    if dialect == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('pushdown') / 'linked.sqlite'}")
        yield Db(dialect, engine, _load(engine, None))
        engine.dispose()
        return
    if dialect == "duckdb":  # a file read through the server's read-only engine, reflected as it reflects
        engine = duckfiles.build(tmp_path_factory.mktemp("pushdown") / "linked.duckdb", lambda conn: _fill(conn, None))
        yield Db(dialect, engine, duckfiles.reflect(engine, list(FRAMES)))
        return
    with scratch_schema(dialect, "pushdown") as (engine, name):
        yield Db(dialect, engine, _load(engine, name))


def _engine_run(frame: pl.DataFrame, steps: Sequence[Step], tmp_path: Path) -> pl.DataFrame:
    """Run `steps` through `engine.build` on `frame`, stored as a dataset's Parquet file is."""
    path = tmp_path / f"{uuid.uuid4().hex}.parquet"
    frame.write_parquet(path)
    lazy, _ = build(Plan(Source("linked", 1, path), tuple(steps)))
    return lazy.collect()


def _pushed_run(db: Db, table: str, steps: Sequence[Step], tmp_path: Path) -> tuple[pl.DataFrame, Pushed]:
    pushed = push_down(db.tables[table], steps, db.dialect)
    with db.engine.connect() as conn:
        fetched = fetch_frame(conn, pushed.query)  # the fetch linked tables use
    return _engine_run(fetched, pushed.remaining, tmp_path), pushed


def _assert_same(actual: pl.DataFrame, expected: pl.DataFrame, order: Sequence[str] | None) -> None:
    """Equal frames up to float rounding; rows in the same order of `order` columns, and the same rows."""
    assert actual.columns == expected.columns
    if expected.is_empty():
        assert actual.is_empty()
        return
    for name, want in expected.schema.items():
        got = actual.schema[name]
        # Only integer widths may differ: the database counts in BIGINT, Polars in UInt32.
        assert got == want or (got.is_integer() and want.is_integer()), (name, got, want)
    actual = actual.cast(expected.schema)
    if order:
        assert_frame_equal(actual.select(order), expected.select(order), rel_tol=1e-9)
    everything = expected.columns
    assert_frame_equal(
        actual.sort(everything, nulls_last=True), expected.sort(everything, nulls_last=True), rel_tol=1e-9
    )


def F(column: str, op: str, value: Any = None) -> Filter:
    return Filter((Condition(column, op, value),))


def G(keys: Sequence[str], *aggs: tuple[str, str] | Aggregation) -> GroupBy:
    return GroupBy(tuple(keys), tuple(a if isinstance(a, Aggregation) else Aggregation(*a) for a in aggs))


def S(*keys: str) -> Sort:
    """Sort keys; a leading "-" sorts that key descending."""
    return Sort(tuple(SortKey(k.lstrip("-"), k.startswith("-")) for k in keys))


ALL_FNS = [("bill_length_mm", f) for f in ("COUNT", "SUM", "MEAN", "MIN", "MAX", "N_UNIQUE")]
TIPS_ALL = ("total_bill", "tip", "size", "day", "time", "sex", "smoker")

# id: (table, steps, steps pushed on sqlite/postgresql/mysql, columns whose order is defined)
PIPELINES: dict[str, tuple[str, list[Step], tuple[int, int, int], Sequence[str] | None]] = {
    "eq-text": ("tips", [F("sex", "EQ", "Female")], (1, 1, 1), None),
    "ne-number": ("tips", [F("size", "NE", 2)], (1, 1, 1), None),
    "compare-floats-and-conditions": (
        "tips",
        [Filter((Condition("total_bill", "GT", 20.5), Condition("tip", "LE", 3), Condition("size", "GE", 2.5)))],
        (1, 1, 1),
        None,
    ),
    "lt-with-nulls": ("penguins", [F("bill_depth_mm", "LT", 15)], (1, 1, 1), None),
    "ne-with-nulls": ("penguins", [F("sex", "NE", "MALE")], (1, 1, 1), None),
    "in-text": ("tips", [F("day", "IN", ["Sat", "Sun", "sat"])], (1, 1, 1), None),
    "not-in-with-nulls": ("penguins", [F("flipper_length_mm", "NOT_IN", [181, 190, 195])], (1, 1, 1), None),
    "in-whole-floats-on-integers": ("penguins", [F("body_mass_g", "IN", [3750.0, 3800.0])], (1, 1, 1), None),
    "in-fractions-on-integers-stays": ("penguins", [F("body_mass_g", "IN", [3750.5, 3800])], (0, 0, 0), None),
    "in-integers-on-floats": ("penguins", [F("bill_length_mm", "IN", [39, 40, 46])], (1, 1, 1), None),
    "between": ("penguins", [F("bill_length_mm", "BETWEEN", [40, 45.5])], (1, 1, 1), None),
    "between-reversed-is-empty": ("tips", [F("tip", "BETWEEN", [5, 1])], (1, 1, 1), None),
    "is-null": ("penguins", [F("sex", "IS_NULL")], (1, 1, 1), None),
    "not-null": ("penguins", [F("bill_length_mm", "NOT_NULL")], (1, 1, 1), None),
    "eq-is-exact": ("words", [F("word", "EQ", "a")], (1, 1, 1), None),
    "eq-keeps-trailing-spaces": ("words", [F("word", "EQ", "a ")], (1, 1, 1), None),
    "eq-empty-text": ("words", [F("word", "EQ", "")], (1, 1, 1), None),
    "gt-text-by-bytes": ("words", [F("word", "GT", "a")], (1, 1, 1), None),
    "in-text-exact": ("words", [F("word", "IN", ["a", "b", "é"])], (1, 1, 1), None),
    "not-in-text-exact": ("words", [F("word", "NOT_IN", ["a", "B"])], (1, 1, 1), None),
    "contains-is-case-sensitive": ("words", [F("word", "CONTAINS", "a")], (1, 1, 1), None),
    "contains-wildcards-literally": ("words", [F("word", "CONTAINS", "%")], (1, 1, 1), None),
    "contains-underscore": ("words", [F("word", "CONTAINS", "_")], (1, 1, 1), None),
    "contains-backslash": ("words", [F("word", "CONTAINS", "\\")], (1, 1, 1), None),
    "contains-quote": ("words", [F("word", "CONTAINS", "'")], (1, 1, 1), None),
    "contains-accented": ("words", [F("word", "CONTAINS", "é")], (1, 1, 1), None),
    "contains-empty": ("words", [F("word", "CONTAINS", "")], (1, 1, 1), None),
    "starts-with": ("words", [F("word", "STARTS_WITH", "a")], (1, 1, 1), None),
    "starts-with-upper": ("tips", [F("day", "STARTS_WITH", "S")], (1, 1, 1), None),
    "ends-with": ("words", [F("word", "ENDS_WITH", "b")], (1, 1, 1), None),
    "ends-with-space": ("words", [F("word", "ENDS_WITH", " ")], (1, 1, 1), None),
    "ends-with-longer-than-values": ("words", [F("word", "ENDS_WITH", "xxxxab")], (1, 1, 1), None),
    "ends-with-accent": ("words", [F("word", "ENDS_WITH", "é")], (1, 1, 1), None),
    "select": ("tips", [Select(("tip", "day"))], (1, 1, 1), None),
    "sort-asc-nulls-last": ("penguins", [S("bill_length_mm")], (1, 1, 1), ["bill_length_mm"]),
    "sort-desc-nulls-last": ("penguins", [S("-sex", "body_mass_g")], (1, 1, 1), ["sex", "body_mass_g"]),
    "sort-text-by-bytes": ("words", [S("word")], (1, 1, 1), ["word"]),
    "sort-text-desc": ("words", [S("-word")], (1, 1, 1), ["word"]),
    "sort-after-sort-is-stable": ("tips", [S("tip"), S("day")], (2, 2, 2), ["day", "tip"]),
    "sort-then-slice": ("tips", [S("-total_bill", *TIPS_ALL[1:]), Slice(5, 10)], (2, 2, 2), TIPS_ALL),
    "slice-of-slice": ("tips", [S(*TIPS_ALL), Slice(3, 20), Slice(5, 5), Slice(2, 50)], (4, 4, 4), TIPS_ALL),
    "slice-past-the-end": ("tips", [S(*TIPS_ALL), Slice(240, 10)], (2, 2, 2), TIPS_ALL),
    "sort-slice-sort": (
        "tips",
        [S(*TIPS_ALL), Slice(0, 30), S("-tip", "total_bill")],
        (3, 3, 3),
        ["tip", "total_bill"],
    ),
    "group-each-aggregation": ("penguins", [G(["species"], *ALL_FNS)], (1, 1, 1), ["species"]),
    "group-std-var": (
        "penguins",
        [G(["island"], ("body_mass_g", "STD"), ("bill_depth_mm", "VAR"))],
        (0, 1, 1),
        ["island"],
    ),
    "group-median": (
        "penguins",
        [G(["island"], ("flipper_length_mm", "MEDIAN"), ("bill_length_mm", "MEDIAN"))],
        (0, 1, 0),
        ["island"],
    ),
    "group-first-stays": ("penguins", [F("sex", "NOT_NULL"), G(["island"], ("sex", "FIRST"))], (1, 1, 1), ["island"]),
    "group-null-keys-last": (
        "penguins",
        [G(["sex", "island"], ("body_mass_g", "SUM"), ("body_mass_g", "MEAN"), ("sex", "COUNT"))],
        (1, 1, 1),
        ["sex", "island"],
    ),
    "group-text-keys-exact": ("words", [G(["word"], ("n", "COUNT"), ("n", "SUM"))], (1, 1, 1), ["word"]),
    "group-text-min-max-unique": (
        "words",
        [G(["g"], ("word", "MIN"), ("word", "MAX"), ("word", "N_UNIQUE"), Aggregation("word", "COUNT", "words"))],
        (1, 1, 1),
        ["g"],
    ),
    "group-sum-of-nothing-is-zero": ("words", [G(["g"], ("n", "SUM"), ("n", "MEAN"), ("n", "MIN"))], (1, 1, 1), ["g"]),
    "group-alias": (
        "tips",
        [G(["day"], Aggregation("tip", "MEAN", "avg_tip"), ("total_bill", "MAX"))],
        (1, 1, 1),
        ["day"],
    ),
    "filter-group-sort-slice": (
        "tips",
        [F("size", "GE", 2), G(["day"], ("tip", "COUNT"), ("tip", "MEAN")), S("-tip_mean"), Slice(0, 3)],
        (4, 4, 4),
        ["day"],
    ),
    "group-then-filter-on-aggregate": (
        "tips",
        [G(["day", "time"], ("total_bill", "SUM")), F("total_bill_sum", "GT", 500)],
        (2, 2, 2),
        ["day", "time"],
    ),
    "group-sort-filter-keeps-order": (
        "penguins",
        [G(["island", "species"], ("body_mass_g", "MEAN")), S("-body_mass_g_mean"), F("island", "NE", "Dream")],
        (3, 3, 3),
        ["island", "species"],
    ),
    "group-select-sort": (
        "tips",
        [G(["day", "sex"], ("tip", "SUM")), Select(("tip_sum", "sex")), S("sex")],
        (3, 3, 3),
        ["sex", "tip_sum"],
    ),
    "group-after-slice": (
        "tips",
        [S(*TIPS_ALL), Slice(0, 50), G(["sex"], ("tip", "MEAN"), ("size", "SUM"))],
        (3, 3, 3),
        ["sex"],
    ),
    "group-after-group": (
        "tips",
        [G(["day", "sex"], ("tip", "COUNT"), ("tip", "MAX")), G(["sex"], ("tip_count", "SUM"), ("tip_max", "MIN"))],
        (2, 2, 2),
        ["sex"],
    ),
    "filter-on-text-key-after-group": (
        "words",
        [G(["word"], ("n", "MAX")), F("word", "STARTS_WITH", "a"), S("-n_max", "word")],
        (3, 3, 3),
        ["word"],
    ),
    "hidden-order-stops-the-push": (
        "tips",
        [S(*TIPS_ALL), Select(("tip", "day")), Slice(0, 40), F("day", "EQ", "Sat")],
        (3, 3, 3),
        None,
    ),
    "clean-stays": (
        "penguins",
        [F("island", "EQ", "Dream"), Clean((DropNulls(),)), S("bill_length_mm")],
        (1, 1, 1),
        None,
    ),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_pushed_pipeline_gives_what_the_engine_gives(db: Db, name: str, tmp_path: Path) -> None:
    table, steps, pushed_by_dialect, order = PIPELINES[name]
    expected_pushed = _pushes(pushed_by_dialect, db.dialect)
    actual, pushed = _pushed_run(db, table, steps, tmp_path)
    assert pushed.pushed == expected_pushed
    assert pushed.remaining == tuple(steps[expected_pushed:])
    expected = _engine_run(FRAMES[table], steps, tmp_path)
    _assert_same(actual, expected, order)


EVENTS: dict[str, tuple[list[Step], tuple[int, int, int]]] = {
    "eq-true": ([F("flag", "EQ", True)], (1, 1, 0)),  # MariaDB's BOOL is TINYINT: the engine refuses true
    "ne-false": ([F("flag", "NE", False)], (1, 1, 0)),
    "in-booleans": ([F("flag", "IN", [True])], (1, 1, 0)),
    "sort-booleans": ([S("-flag", "id")], (1, 1, 1)),
    "group-by-boolean": ([G(["flag"], ("amount", "SUM"), ("amount", "MEAN"), ("id", "COUNT"))], (1, 1, 1)),
    "boolean-and-date-extremes": (
        [G(["g"], ("flag", "MIN"), ("flag", "MAX"), ("flag", "N_UNIQUE"), ("when", "MIN"), ("when", "MAX"))],
        (0, 1, 1),
    ),
    "date-ge": ([F("when", "GE", "2024-03-01")], (0, 1, 1)),
    "date-between-timestamps": ([F("when", "BETWEEN", ["2024-01-15", "2024-03-01T10:00"])], (0, 1, 1)),
    "date-not-a-date": ([F("when", "GE", "March")], (0, 0, 0)),
    "sort-dates-slice": ([S("-when", "id"), Slice(0, 5)], (0, 2, 2)),
    "group-by-date": ([G(["when"], ("id", "COUNT"))], (0, 1, 1)),
    "decimal-gt-integer": ([F("amount", "GT", 10)], (1, 1, 1)),
    "decimal-in-integers": ([F("amount", "IN", [12, 5])], (1, 1, 1)),
    "decimal-le-float-stays": ([F("amount", "LE", 10.5)], (1, 0, 0)),
    "decimal-aggregates": ([G(["g"], ("amount", "SUM"), ("amount", "MIN"), ("amount", "STD"))], (0, 1, 1)),
}


@pytest.mark.parametrize("name", list(EVENTS))
def test_booleans_dates_and_decimals_match_the_engine_on_the_fetched_table(db: Db, name: str, tmp_path: Path) -> None:
    steps, pushed_by_dialect = EVENTS[name]
    pushed = push_down(db.tables["events"], steps, db.dialect)
    assert pushed.pushed == _pushes(pushed_by_dialect, db.dialect)
    with db.engine.connect() as conn:
        table = fetch_frame(conn, sa.select(db.tables["events"]))
    try:
        expected = _engine_run(table, steps, tmp_path)
    except BadInput as exc:  # then the pushed run must fail the same way
        with pytest.raises(BadInput, match=re.escape(exc.message)):
            _pushed_run(db, "events", steps, tmp_path)
        return
    actual, _ = _pushed_run(db, "events", steps, tmp_path)
    order = [k.column for s in steps if isinstance(s, Sort) for k in s.keys] or [
        k for s in steps if isinstance(s, GroupBy) for k in s.keys
    ]
    _assert_same(actual, expected, order)


@pytest.mark.parametrize(
    "bad",
    [
        F("tip", "NE", "1"),
        F("tip", "LIKE", 1),
        F("day", "IN", "Sat"),
        F("day", "BETWEEN", ["a"]),
        F("tip", "CONTAINS", "1"),
        F("tip", "IS_NULL", 1),
        Select(("tip", "tip")),
        Slice(-1, 5),
        G(["day"], ("sex", "MEAN")),
        G(["day"], ("tip", "TOTAL")),
        G(["day"], ("tip", "SUM"), Aggregation("size", "MAX", "tip_sum")),
    ],
)
def test_other_mistakes_are_left_for_the_engine_to_report(db: Db, bad: Step, tmp_path: Path) -> None:
    steps = [F("tip", "GT", 1), bad]
    pushed = push_down(db.tables["tips"], steps, db.dialect)
    assert (pushed.pushed, pushed.remaining) == (1, (bad,))
    with pytest.raises(BadInput) as engine_error:
        _engine_run(FRAMES["tips"], steps, tmp_path)
    with pytest.raises(BadInput, match=re.escape(engine_error.value.message)):
        _pushed_run(db, "tips", steps, tmp_path)


def test_an_unsorted_slice_takes_that_many_of_the_tables_rows(db: Db, tmp_path: Path) -> None:
    steps: list[Step] = [F("size", "GE", 3), Slice(4, 7), Select(("total_bill", "tip", "size"))]
    actual, pushed = _pushed_run(db, "tips", steps, tmp_path)
    assert pushed.pushed == 3
    assert actual.height == 7
    source = FRAMES["tips"].filter(pl.col("size") >= 3).select("total_bill", "tip", "size")
    assert actual.join(source, on=actual.columns, how="anti").is_empty()


def test_count_query_counts_the_pushed_rows(db: Db, tmp_path: Path) -> None:
    steps: list[Step] = [F("species", "NE", "Gentoo"), G(["island", "sex"], ("body_mass_g", "MEAN")), Slice(1, 4)]
    pushed = push_down(db.tables["penguins"], steps, db.dialect)
    assert not pushed.remaining
    with db.engine.connect() as conn:
        counted = conn.execute(count_query(pushed)).scalar_one()
    path = tmp_path / "penguins.parquet"
    FRAMES["penguins"].write_parquet(path)
    assert counted == count(Plan(Source("penguins", 1, path), tuple(steps))) == 4


def test_count_query_refuses_when_steps_remain(db: Db) -> None:
    pushed = push_down(db.tables["tips"], [F("tip", "GT", 2), Clean((DropNulls(),))], db.dialect)
    with pytest.raises(ValueError, match="remain"):
        count_query(pushed)


@pytest.mark.parametrize(
    ("steps", "where"),
    [
        ([F("tips", "EQ", 1)], "filter"),
        ([Select(("tip", "Tip"))], "select"),
        ([S("day", "weekday")], "sort"),
        ([G(["weekday"], ("tip", "SUM"))], "groupBy"),
        ([G(["day"], ("tipp", "SUM"))], "groupBy"),
        ([G(["day"], ("tip", "SUM")), F("tip", "GT", 1)], "filter"),
        ([Select(("tip",)), S("day")], "sort"),
    ],
)
def test_an_unknown_column_is_bad_input_naming_it_as_the_engine_does(
    steps: list[Step], where: str, tmp_path: Path
) -> None:
    table = sa.Table("tips", sa.MetaData(), *(sa.Column(c, _sql_type(t)) for c, t in FRAMES["tips"].schema.items()))
    with pytest.raises(BadInput) as pushed_error:
        push_down(table, steps, "postgresql")
    with pytest.raises(BadInput) as engine_error:
        _engine_run(FRAMES["tips"], steps, tmp_path)
    assert pushed_error.value.message == engine_error.value.message
    assert pushed_error.value.message.startswith(f"{where}: there is no column")


HOSTILE = "x'); DROP TABLE tips; --%_\\"


@pytest.mark.parametrize(
    "dialect",
    [postgresql.psycopg.dialect(), mysql.pymysql.dialect(), sqlite.pysqlite.dialect(), duckdb_engine.Dialect()],
    ids=["postgresql", "mysql", "sqlite", "duckdb"],
)
@pytest.mark.parametrize("op", ["EQ", "IN", "CONTAINS", "STARTS_WITH", "ENDS_WITH", "BETWEEN"])
def test_values_only_travel_as_bound_parameters(dialect: sa.Dialect, op: str) -> None:
    table = sa.Table("tips", sa.MetaData(), sa.Column("day", sa.String(20)), sa.Column("tip", sa.Double()))
    value: Any = [HOSTILE, HOSTILE + "z"] if op in ("IN", "BETWEEN") else HOSTILE
    steps: list[Step] = [F("day", op, value), Slice(7, 13), G(["day"], Aggregation("tip", "SUM", "t"))]
    pushed = push_down(table, steps, dialect.name)
    assert pushed.pushed == 3
    compiled = pushed.query.compile(dialect=dialect)
    sql = str(compiled)
    assert "DROP" not in sql and "13" not in sql
    params = [p.decode() if isinstance(p, bytes) else p for p in compiled.params.values()]
    assert HOSTILE in params and 13 in params


def test_an_unknown_dialect_is_refused() -> None:
    table = sa.Table("t", sa.MetaData(), sa.Column("a", sa.Integer()))
    with pytest.raises(ValueError, match="oracle"):
        push_down(table, [], "oracle")


def test_nothing_to_push_selects_the_whole_table() -> None:
    table = sa.Table("t", sa.MetaData(), sa.Column("a", sa.Integer()), sa.Column("b", sa.String()))
    pushed = push_down(table, [], "sqlite")
    assert (pushed.pushed, pushed.remaining) == (0, ())
    assert str(pushed.query.compile(dialect=sqlite.dialect())).split() == ["SELECT", "t.a,", "t.b", "FROM", "t"]


@pytest.mark.parametrize(
    ("type_", "dialect", "value"),
    [
        (postgresql.REAL(), "postgresql", 0.1),
        (mysql.FLOAT(), "mysql", 0.1),
        (sa.CHAR(4), "postgresql", "ab"),
        (sa.DateTime(timezone=True), "postgresql", "2024-01-31"),
        (sa.Date(), "sqlite", "2024-01-31"),
        (sa.JSON(), "postgresql", 1),
        # DuckDB: FLOAT (single precision), TIMESTAMPTZ, and the types its reflection leaves untyped
        # (HUGEINT, ENUM, nanosecond timestamps, lists: connectors._duckdb).
        (sa.REAL(), "duckdb", 0.1),
        (sa.DateTime(timezone=True), "duckdb", "2024-01-31"),
        (sa.types.NullType(), "duckdb", 1),
    ],
)
def test_columns_whose_comparisons_could_differ_are_not_pushed(
    type_: sa.types.TypeEngine[Any], dialect: str, value: Any
) -> None:
    table = sa.Table("t", sa.MetaData(), sa.Column("v", type_))
    assert push_down(table, [F("v", "NOT_NULL"), F("v", "EQ", value)], dialect).pushed == 1
    assert push_down(table, [S("v")], dialect).pushed == 0
    assert push_down(table, [G(["v"], ("v", "COUNT"))], dialect).pushed == 0
    assert push_down(table, [Select(("v",)), Slice(0, 1), G(["v"], ("v", "COUNT"))], dialect).pushed == 2
