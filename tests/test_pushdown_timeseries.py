"""Window and resample steps pushed down to linked PostgreSQL, MariaDB and DuckDB tables: each pushed form
gives exactly the frame the engine gives on the table's rows (fetched in primary-key order, one of
the orders a table may come in), with missing values and ties; steps the database cannot do exactly
stay in Polars, and the push stops before them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckfiles
import pandas as pd
import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal
from sqlalchemy.dialects import mysql
from support import make_settings, scratch_schema, serving
from test_pushdown import _engine_run

from connectors.linked import fetch_frame
from connectors.pushdown import push_down
from datagraph.errors import BadInput
from engine import (
    Aggregation,
    Condition,
    Filter,
    GroupBy,
    JoinAsof,
    Pivot,
    Resample,
    Select,
    Slice,
    Sort,
    SortKey,
    Source,
    Step,
    Unpivot,
    WindowSpec,
    WindowStep,
)

T = dt.datetime
SERIES = pl.DataFrame(
    {
        "id": list(range(18)),
        # Byte-wise distinct group keys ("a" and "A"), a missing one.
        "g": ["a", "A", "a", "b", None, "a", "A", "b", "b", "a", None, "a", "A", "b", "a", "b", "a", "A"],
        # Ties in time (rows 1, 2, 3 and 9, 10), missing times, a time before 1970, period boundaries
        # and a microsecond either side of them.
        "t": [
            T(2024, 3, 1, 10, 0),
            T(2024, 3, 1, 10, 14, 59),
            T(2024, 3, 1, 10, 14, 59),
            T(2024, 3, 1, 10, 14, 59),
            T(2024, 3, 1, 10, 15),
            None,
            T(2024, 3, 1, 23, 59, 59),
            T(2024, 3, 2, 0, 0),
            T(2024, 2, 29, 7, 30),
            T(2024, 4, 1, 0, 0),
            T(2024, 4, 1, 0, 0),
            T(1969, 12, 31, 23, 50),
            None,
            T(2024, 3, 31, 12, 0),
            T(2024, 3, 1, 11, 44, 59, 999_999),
            T(2024, 3, 1, 11, 45),
            T(2024, 3, 2, 0, 0, 0, 1),
            T(2024, 2, 1, 0, 0),
        ],
        # Ties, zeros (PCT_CHANGE divides by them), negatives and missing values.
        "x": [5, 3, 3, None, 0, 7, -2, 3, 0, None, 4, 1, 9, 0, -6, 2, None, 3],
        "y": [0.5, None, 1.25, 2.0, -1.5, 3.0, 0.0, 4.5, 1.0, None, 2.5, 0.25, 8.0, 1.0, -3.5, 6.0, 7.0, None],
        # DECIMAL(10, 2) in the databases; a zero before for PCT_CHANGE.
        "amount": [1.25, 0.0, None, 3.5, -2.75, 10.0, 0.0, 4.4, 99.99, None, 0.01, 2.0, 2.0, -1.0, 5.5, 6.25, 0.0, 7.0],
        "d": [
            dt.date(2024, 3, 1),
            dt.date(2024, 3, 1),
            None,
            dt.date(2024, 2, 29),
            dt.date(2024, 1, 31),
            dt.date(2024, 3, 2),
            dt.date(2024, 3, 2),
            None,
            dt.date(1969, 12, 31),
            dt.date(2024, 4, 1),
            dt.date(2024, 3, 31),
            dt.date(2024, 3, 1),
            dt.date(2024, 2, 1),
            dt.date(2024, 2, 29),
            dt.date(2024, 3, 15),
            dt.date(2024, 3, 2),
            dt.date(2024, 1, 1),
            dt.date(2024, 3, 1),
        ],
    }
)


@dataclass
class Db:
    dialect: str
    engine: sa.Engine
    keyed: sa.Table  # with a primary key
    bare: sa.Table  # the same rows, no key


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("g", sa.String(16)),
        sa.Column("t", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")),  # microseconds
        sa.Column("x", sa.BigInteger()),
        sa.Column("y", sa.Double()),
        sa.Column("amount", sa.Numeric(10, 2)),
        sa.Column("d", sa.Date()),
    ]


def _fill(conn: sa.Connection, schema: str | None) -> None:
    meta = sa.MetaData(schema=schema)
    keyed = sa.Table(
        "series", meta, sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False), *_columns()
    )
    bare = sa.Table("bare", meta, sa.Column("id", sa.BigInteger()), *_columns())
    meta.create_all(conn)
    rows = SERIES.to_dicts()
    conn.execute(keyed.insert(), rows)
    conn.execute(bare.insert(), rows[::-1])


def _pushes(by_dialect: tuple[int, int], dialect: str) -> int:
    """Steps pushed on `dialect`: DuckDB pushes what PostgreSQL pushes."""
    return dict(zip(("postgresql", "mysql"), by_dialect, strict=True))["postgresql" if dialect == "duckdb" else dialect]


@pytest.fixture(scope="module", params=["postgresql", "mysql", "duckdb"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    dialect: str = request.param
    if dialect == "duckdb":  # a file read through the server's read-only engine, reflected as it reflects
        engine = duckfiles.build(tmp_path_factory.mktemp("pushts") / "series.duckdb", lambda conn: _fill(conn, None))
        yield Db(dialect, engine, *duckfiles.reflect(engine, ["series", "bare"]).values())
        return
    with scratch_schema(dialect, "pushts") as (engine, name):
        with engine.begin() as conn:
            _fill(conn, name)
        reflected = sa.MetaData(schema=name)
        with engine.connect() as conn:
            tables = [sa.Table(t, reflected, autoload_with=conn) for t in ("series", "bare")]
        yield Db(dialect, engine, *tables)


def _runs(
    db: Db, steps: Sequence[Step], tmp_path: Path, *, table: str = "keyed"
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(the pushed run finished by the engine, the engine on the table's rows in key order, steps pushed)."""
    linked: sa.Table = getattr(db, table)
    pushed = push_down(linked, steps, db.dialect)
    with db.engine.connect() as conn:
        fetched = fetch_frame(conn, pushed.query)
        rows = fetch_frame(conn, sa.select(linked).order_by(linked.c.id))
    actual = _engine_run(fetched, pushed.remaining, tmp_path)
    return actual, _engine_run(rows, steps, tmp_path), pushed.pushed


def _assert_same(actual: pl.DataFrame, expected: pl.DataFrame, *, ordered: bool = True) -> None:
    """Equal frames, row for row when `ordered`; only integer widths may differ (BIGINT counts)."""
    assert actual.columns == expected.columns
    for name, want in expected.schema.items():
        got = actual.schema[name]
        assert got == want or (got.is_integer() and want.is_integer()), (name, got, want)
    actual = actual.cast(expected.schema)
    if not ordered:
        actual, expected = (f.sort(f.columns, nulls_last=True) for f in (actual, expected))
    assert_frame_equal(actual, expected, rel_tol=1e-12)


def W(*specs: tuple[str, str] | WindowSpec) -> WindowStep:
    return WindowStep(tuple(s if isinstance(s, WindowSpec) else WindowSpec(*s) for s in specs))


def S(*keys: str) -> Sort:
    return Sort(tuple(SortKey(k.lstrip("-"), k.startswith("-")) for k in keys))


def R(every: str, *aggs: tuple[str, str], on: str = "t", by: Sequence[str] = ("g",)) -> Resample:
    return Resample(on, every, tuple(by), tuple(Aggregation(c, f) for c, f in aggs))


BY_TIME: dict[str, Any] = {"by": ("g",), "order_by": "t"}
RESAMPLE_AGGS = (("x", "COUNT"), ("x", "SUM"), ("x", "MEAN"), ("y", "MAX"), ("g", "N_UNIQUE"), ("d", "MIN"))

# id: (steps, steps pushed on postgresql / mysql)
WINDOWS: dict[str, tuple[list[Step], tuple[int, int]]] = {
    "lag-lead-row-number": (
        [
            W(
                WindowSpec("x", "LAG", **BY_TIME),
                WindowSpec("g", "LEAD", offset=2, **BY_TIME),
                WindowSpec("y", "LAG", alias="y_before", offset=3, order_by="t"),
                WindowSpec("x", "ROW_NUMBER", **BY_TIME),
                WindowSpec("x", "ROW_NUMBER", alias="n_by_day", order_by="d"),
            )
        ],
        (1, 1),
    ),
    "running-aggregates": (
        [
            W(
                WindowSpec("x", "CUM_SUM", **BY_TIME),
                WindowSpec("x", "CUM_MIN", order_by="t"),
                WindowSpec("x", "CUM_MAX", **BY_TIME),
                WindowSpec("y", "CUM_COUNT", order_by="t"),
                WindowSpec("d", "CUM_MAX", order_by="t"),
                WindowSpec("t", "CUM_MIN", by=("g",), order_by="d"),
            )
        ],
        (1, 1),
    ),
    "diff": (
        [W(WindowSpec("x", "DIFF", **BY_TIME), WindowSpec("x", "DIFF", alias="d2", offset=2, order_by="t"))],
        (1, 1),
    ),
    # Polars divides by zero to infinities and NaN; PostgreSQL is told to, MariaDB has neither.
    "pct-change": (
        [
            W(
                WindowSpec("x", "PCT_CHANGE", **BY_TIME),
                WindowSpec("x", "PCT_CHANGE", alias="p2", offset=2, order_by="t"),
            )
        ],
        (1, 0),
    ),
    "rank-needs-no-order": (
        [
            W(
                ("x", "RANK"),
                WindowSpec("g", "RANK", alias="g_rank"),
                WindowSpec("t", "RANK", by=("g",)),
                WindowSpec("d", "RANK", by=("x",)),
            )
        ],
        (1, 1),
    ),
    "rolling-rows": (
        [
            W(
                WindowSpec("x", "ROLLING_SUM", size=3, **BY_TIME),
                WindowSpec("x", "ROLLING_MEAN", size=3, min_periods=1, **BY_TIME),
                WindowSpec("x", "ROLLING_MIN", size=2, min_periods=1, order_by="t"),
                WindowSpec("x", "ROLLING_MAX", size=4, min_periods=2, order_by="d"),
                WindowSpec("x", "ROLLING_SUM", alias="one", size=1, order_by="t"),
            )
        ],
        (1, 1),
    ),
    "after-a-sort-without-order-by": ([S("g", "-x"), W(("x", "LAG"), ("y", "CUM_COUNT"), ("x", "ROW_NUMBER"))], (2, 2)),
    "order-by-then-the-sort": ([S("-x"), W(WindowSpec("y", "CUM_COUNT", order_by="d"))], (2, 2)),
    "filter-window-filter-on-its-column": (
        [
            Filter((Condition("x", "GE", 0),)),
            W(WindowSpec("x", "ROW_NUMBER", **BY_TIME)),
            Filter((Condition("x_row_number", "LE", 2),)),
            S("x_row_number", "-t"),
        ],
        (4, 4),
    ),
    "group-by-then-running-sum": (
        [GroupBy(("g",), (Aggregation("x", "SUM"),)), W(("x_sum", "CUM_SUM"), ("g", "RANK"))],
        (2, 2),
    ),
    "window-slice-window": (
        [
            W(WindowSpec("x", "ROW_NUMBER", order_by="t")),
            Slice(2, 9),
            W(WindowSpec("x", "LAG", order_by="d")),
            Select(("id", "x_row_number", "x_lag")),
        ],
        (4, 4),
    ),
    # Not pushed: no order to read the rows in; rolling std, period windows and float arithmetic.
    "no-order": ([W(("x", "LAG"))], (0, 0)),
    "rank-with-an-unordered-lag": ([W(("x", "RANK"), ("x", "LAG"))], (0, 0)),
    "rolling-std": ([W(WindowSpec("x", "ROLLING_STD", size=3, order_by="t"))], (0, 0)),
    # Period windows: a RANGE frame, over an interval (PostgreSQL) or microseconds (MariaDB).
    "rolling-period": (
        [
            W(
                WindowSpec("x", "ROLLING_SUM", period="15m", **BY_TIME),
                WindowSpec("x", "ROLLING_MEAN", period="1d", min_periods=2, order_by="t"),
                WindowSpec("x", "ROLLING_MIN", period="90s", **BY_TIME),
                WindowSpec("x", "ROLLING_MAX", period="1h", order_by="t"),
                WindowSpec("x", "ROLLING_SUM", alias="by_days", period="2d", by=("g",), order_by="d"),
                WindowSpec("x", "ROLLING_MAX", alias="max_days", period="31d", min_periods=3, order_by="d"),
                # Rows exactly one period apart (10:00 and 10:15; dates a day apart): the left end is open.
                WindowSpec("x", "ROLLING_SUM", alias="edge", period="15m", order_by="t"),
                WindowSpec("x", "ROLLING_SUM", alias="edge_day", period="1d", order_by="d"),
            )
        ],
        (1, 1),
    ),
    "decimals": (
        [
            W(
                WindowSpec("amount", "DIFF", **BY_TIME),
                WindowSpec("amount", "ROLLING_SUM", size=3, min_periods=1, order_by="t"),
                WindowSpec("amount", "ROLLING_MEAN", period="1d", order_by="t"),
            )
        ],
        (1, 1),
    ),
    "decimal-pct-change": ([W(WindowSpec("amount", "PCT_CHANGE", **BY_TIME))], (1, 0)),
    "rolling-period-std": ([W(WindowSpec("x", "ROLLING_STD", period="1d", order_by="t"))], (0, 0)),
    "float-diff": ([W(WindowSpec("y", "DIFF", order_by="t"))], (0, 0)),
    "filter-then-stops": ([Filter((Condition("x", "NOT_NULL"),)), W(WindowSpec("y", "CUM_SUM", order_by="t"))], (1, 1)),
}


@pytest.mark.parametrize("name", list(WINDOWS))
def test_a_pushed_window_gives_what_the_engine_gives(db: Db, name: str, tmp_path: Path) -> None:
    steps, by_dialect = WINDOWS[name]
    want = _pushes(by_dialect, db.dialect)
    # A window is pushed only with a later step that cuts rows: a slice longer than the table.
    steps, want = [*steps, Slice(0, 100)], want + (want == len(steps))
    actual, expected, pushed = _runs(db, steps, tmp_path)
    assert pushed == want
    _assert_same(actual, expected, ordered=name != "rank-needs-no-order")  # a table's rows have no order


def test_without_a_key_to_break_ties_a_window_is_not_pushed(db: Db, tmp_path: Path) -> None:
    steps: list[Step] = [S("x"), W(WindowSpec("y", "LAG", order_by="t"))]
    actual, _, pushed = _runs(db, steps, tmp_path, table="bare")
    assert pushed == 1
    assert actual.height == SERIES.height
    # RANK reads no row order: it is pushed all the same.
    actual, expected, pushed = _runs(db, [W(("x", "RANK")), Slice(0, 100)], tmp_path, table="bare")
    assert pushed == 2
    _assert_same(actual, expected, ordered=False)


def _pandas() -> pd.DataFrame:
    frame = pd.DataFrame(SERIES.to_dicts())
    frame["t"] = pd.to_datetime(frame["t"])
    return frame


def test_the_pushed_numbers_are_pandas_numbers(db: Db, tmp_path: Path) -> None:
    steps = [
        S("t", "id"),
        W(WindowSpec("x", "ROLLING_MEAN", size=3, min_periods=2, by=("g",)), WindowSpec("x", "DIFF", by=("g",))),
        Slice(0, 100),
    ]
    actual, _, pushed = _runs(db, steps, tmp_path)
    assert pushed == 3
    frame = _pandas().sort_values(["t", "id"], na_position="last", kind="stable")
    frame["x"] = frame["x"].astype("float64")
    grouped = frame.groupby("g", dropna=False)["x"]
    rolling = grouped.rolling(3, min_periods=2).mean().reset_index(level=0, drop=True)
    assert actual["x_rolling_mean"].fill_null(float("nan")).to_list() == pytest.approx(
        rolling.loc[frame.index].tolist(), nan_ok=True
    )
    assert actual["x_diff"].fill_null(float("nan")).to_list() == pytest.approx(
        grouped.diff().loc[frame.index].tolist(), nan_ok=True
    )


RESAMPLES: dict[str, tuple[list[Step], tuple[int, int]]] = {
    "15-minutes": ([R("15m", *RESAMPLE_AGGS)], (1, 1)),
    "hours": ([R("1h", *RESAMPLE_AGGS, by=())], (1, 1)),
    "90-seconds": ([R("90s", ("x", "SUM"), ("y", "MIN"))], (1, 1)),
    "days": ([R("1d", *RESAMPLE_AGGS)], (1, 1)),
    "months": ([R("1mo", *RESAMPLE_AGGS)], (1, 1)),
    "date-days": ([R("1d", ("x", "SUM"), ("t", "MAX"), on="d")], (1, 1)),
    "date-hours": ([R("6h", ("x", "COUNT"), on="d", by=())], (1, 1)),
    "date-months": ([R("1mo", ("x", "MAX"), ("y", "MEAN"), on="d")], (1, 1)),
    "filter-resample-window": (
        [
            Filter((Condition("x", "NE", 0),)),
            R("1d", ("x", "SUM")),
            W(WindowSpec("x_sum", "CUM_SUM", by=("g",))),
            Slice(0, 6),
        ],
        (4, 4),
    ),
    "after-a-group-by": ([GroupBy(("g", "t"), (Aggregation("x", "SUM"),)), R("1h", ("x_sum", "SUM"))], (2, 2)),
    # Periods that start from the data's first day or month, and FIRST/LAST: left to Polars.
    "2-days": ([R("2d", ("x", "SUM"))], (0, 0)),
    "weeks": ([R("1w", ("x", "SUM"))], (0, 0)),
    "years": ([R("1y", ("x", "SUM"))], (0, 0)),
    "7-minutes": ([R("7m", ("x", "SUM"))], (0, 0)),
    "first": ([R("1h", ("x", "FIRST"))], (0, 0)),
}


@pytest.mark.parametrize("name", list(RESAMPLES))
def test_a_pushed_resample_gives_what_the_engine_gives(db: Db, name: str, tmp_path: Path) -> None:
    steps, by_dialect = RESAMPLES[name]
    actual, expected, pushed = _runs(db, steps, tmp_path)
    assert pushed == _pushes(by_dialect, db.dialect)
    _assert_same(actual, expected)


@pytest.mark.parametrize("every", ["15min", "1h", "1D", "MS"])
def test_a_pushed_resample_is_pandas_resample(db: Db, every: str, tmp_path: Path) -> None:
    actual, _, pushed = _runs(db, [R(every, ("x", "SUM"), ("x", "COUNT"), by=())], tmp_path)
    assert pushed == 1
    frame = _pandas().dropna(subset=["t"])
    grouped = frame.groupby(pd.Grouper(key="t", freq=every))["x"].agg(["sum", "count", "size"])
    grouped = grouped[grouped["size"] > 0]  # empty periods are left out
    assert actual["t"].to_list() == [t.to_pydatetime() for t in grouped.index]
    assert actual["x_sum"].to_list() == grouped["sum"].astype(int).tolist()
    assert actual["x_count"].to_list() == grouped["count"].tolist()


@pytest.mark.parametrize(
    ("step", "where"),
    [
        (W(("z", "LAG")), "window column"),
        (W(WindowSpec("x", "LAG", by=("h",))), "window by"),
        (W(WindowSpec("x", "LAG", order_by="when")), "window orderBy"),
        (R("1h", ("x", "SUM"), on="when"), "resample on"),
        (R("1h", ("x", "SUM"), by=("h",)), "resample by"),
        (R("1h", ("z", "SUM")), "resample aggregations"),
    ],
)
def test_an_unknown_column_is_bad_input_as_the_engine_words_it(db: Db, step: Step, where: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput) as pushed_error:
        push_down(db.keyed, [step], db.dialect)
    with pytest.raises(BadInput) as engine_error:
        _engine_run(SERIES, [step], tmp_path)
    assert pushed_error.value.message == engine_error.value.message
    assert pushed_error.value.message.startswith(f"{where}: there is no column")


@pytest.mark.parametrize(
    "bad",
    [
        W(WindowSpec("x", "LAG", offset=0, order_by="t")),
        W(WindowSpec("x", "ROLLING_SUM", order_by="t")),
        W(WindowSpec("x", "ROLLING_SUM", size=2, min_periods=3, order_by="t")),
        W(WindowSpec("x", "LAG", size=2, order_by="t")),
        W(WindowSpec("g", "DIFF", order_by="t")),
        W(WindowSpec("x", "ROLLING_SUM", period="1d", order_by="x")),
        W(WindowSpec("x", "ROLLING_SUM", period="1mo", order_by="t")),
        W(WindowSpec("x", "ROLLING_SUM", period="1d", min_periods=0, order_by="t")),
        W(WindowSpec("x", "LAG", alias="y", order_by="t")),
        R("1M", ("x", "SUM")),
        R("1h", ("g", "SUM")),
        R("1h", ("x", "SUM"), on="x", by=()),
        R("1h", ("x", "SUM"), by=("t",)),
    ],
)
def test_other_mistakes_are_left_for_the_engine_to_report(db: Db, bad: Step, tmp_path: Path) -> None:
    steps: list[Step] = [S("t", "id"), bad]
    pushed = push_down(db.keyed, steps, db.dialect)
    assert (pushed.pushed, pushed.remaining) == (1, (bad,))
    with pytest.raises(BadInput) as engine_error:
        _engine_run(SERIES, steps, tmp_path)
    with pytest.raises(BadInput, match=re.escape(engine_error.value.message)):
        _runs(db, steps, tmp_path)


def test_the_push_stops_before_join_asof_pivot_and_unpivot(db: Db, tmp_path: Path) -> None:
    """They run in Polars on the pushed rows, and give what the engine gives on the table's rows."""
    right = tmp_path / "right.parquet"
    pl.DataFrame({"t": [T(2024, 3, 1, 10), T(2024, 3, 1, 23)], "price": [1.5, 2.5]}).write_parquet(right)
    asof = JoinAsof(Source("prices", 1, right), "t")
    cases: list[tuple[list[Step], int]] = [
        ([Filter((Condition("t", "NOT_NULL"),)), Select(("id", "t", "x")), asof, S("id")], 2),
        ([R("1d", ("x", "SUM")), Pivot(("t",), "g", "x_sum", "SUM"), S("t")], 1),
        (
            [
                W(WindowSpec("x", "CUM_SUM", order_by="t")),
                Filter((Condition("x_cum_sum", "NOT_NULL"),)),
                Unpivot(("id",), ("x", "x_cum_sum")),
                S("id", "variable"),
            ],
            2,
        ),
    ]
    for steps, pushed_before in cases:
        actual, expected, pushed = _runs(db, steps, tmp_path)
        assert pushed == pushed_before, steps
        assert not isinstance(steps[pushed], WindowStep | Resample | Filter | Select | Sort)
        _assert_same(actual, expected)


LINKED_STEPS = [
    {"sort": [{"column": "t"}, {"column": "id"}]},
    {"window": [{"column": "x", "fn": "CUM_SUM", "by": ["g"]}, {"column": "x", "fn": "LAG", "orderBy": "d"}]},
    {"resample": {"on": "t", "every": "15m", "by": ["g"], "aggregations": [{"column": "x_cum_sum", "fn": "MAX"}]}},
]
LINKED = """query($d: ID!, $steps: [Step!]!) { dataset(id: $d) { pipeline(steps: $steps) {
  rows(limit: 100) { success data error { message } }
  explain { success data error { message } }
  recipe { success data error { message } } } } }"""


@pytest.mark.slow  # an app start, a worker's connections
def test_a_linked_table_runs_window_and_resample_in_postgresql(tmp_path: Path) -> None:
    """Through the API: `explain` and the recipe show the pushed SQL; the rows equal the same
    pipeline on a copy of the table."""
    with scratch_schema("postgresql", "dg_pushts") as (admin, schema):
        meta = sa.MetaData(schema=schema)
        table = sa.Table(
            "series", meta, sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False), *_columns()
        )
        with admin.begin() as conn:
            meta.create_all(conn)
            conn.execute(table.insert(), SERIES.to_dicts())
        sources = tmp_path / "sources.yaml"
        sources.write_text(
            "sources:\n  live:\n    kind: postgresql\n    url: postgresql://postgres@127.0.0.1:5432/test\n"
            f"    schema: {schema}\n"
        )
        imports = """mutation($mode: ImportMode!) { importTable(source: "live", table: "series", mode: $mode) {
          success error { message } dataset { id } } }"""
        with serving(make_settings(tmp_path, sources=str(sources))) as api:
            ids = {}
            for mode in ("LINK", "SNAPSHOT"):
                made = api.data(imports, {"mode": mode})["importTable"]
                assert made["success"], made["error"]
                ids[mode] = made["dataset"]["id"]
            linked = api.data(LINKED, {"d": ids["LINK"], "steps": LINKED_STEPS})["dataset"]["pipeline"]
            copied = api.data(LINKED, {"d": ids["SNAPSHOT"], "steps": LINKED_STEPS})["dataset"]["pipeline"]
            sql = linked["explain"]["data"]["sql"]
            assert "OVER (PARTITION BY" in sql and "date_bin" in sql
            assert linked["recipe"]["data"]["sql"] == sql
            assert linked["rows"]["success"], linked["rows"]["error"]
            assert linked["rows"]["data"] == copied["rows"]["data"]


def test_sqlite_pushes_neither_window_nor_resample() -> None:
    table = sa.Table("s", sa.MetaData(), sa.Column("id", sa.Integer(), primary_key=True), *_columns())
    steps: list[Step] = [S("id"), W(WindowSpec("x", "LAG", order_by="id")), R("1d", ("x", "SUM"))]
    assert push_down(table, steps, "sqlite").pushed == 1
    assert push_down(table, [steps[2]], "sqlite").pushed == 0


@pytest.mark.parametrize(
    ("steps", "pushed"),
    [
        ([W(WindowSpec("x", "LAG", order_by="t"))], 0),
        ([Filter((Condition("x", "NOT_NULL"),)), W(WindowSpec("x", "LAG", order_by="t"))], 1),
        ([W(WindowSpec("x", "LAG", order_by="t")), Select(("id", "x_lag"))], 0),
        ([W(WindowSpec("x", "LAG", order_by="t")), Select(("id", "x_lag")), Slice(0, 5)], 3),
        ([W(WindowSpec("x", "LAG", order_by="t")), R("1d", ("x_lag", "MAX"))], 2),
        ([W(WindowSpec("x", "LAG", order_by="t")), Filter((Condition("x_lag", "GT", 0),))], 2),
        ([S("t", "id"), Select(("id", "t", "x"))], 2),
    ],
)
def test_a_window_is_pushed_only_with_a_later_step_that_cuts_rows(db: Db, steps: list[Step], pushed: int) -> None:
    """It gives as many rows as it reads, and SQL windows ran slower than Polars (connectors/pushdown.py)."""
    assert push_down(db.keyed, steps, db.dialect).pushed == pushed
