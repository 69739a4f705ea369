"""clean(steps): every cleaning step checked against pandas doing the same work, and wrong steps as BAD_INPUT."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import polars as pl
import pytest
from starlette.testclient import TestClient
from support import DATA, Api, make_settings

from datagraph.errors import BadInput
from engine._clean import translate_error
from server.app import create_app

CLEAN = """query($id: ID!, $steps: [CleanStep!]!) { dataset(id: $id) { clean(steps: $steps) {
  rows(limit: 10000) { success error { code message } data meta { rowCount columns { name dtype } cacheKey } } } } }"""
PIPELINE = """query($id: ID!, $steps: [Step!]!) { dataset(id: $id) { pipeline(steps: $steps) {
  rows(limit: 10000) { success error { code message } data meta { rowCount columns { name dtype } cacheKey } } } } }"""
FILES = ("titanic.csv", "penguins.csv", "taxis.csv")
# Text columns that need cleaning: padded codes, yes/no words, ISO and day-first dates. The last row
# holds values that convert to nothing, so every column is read as text.
MESSY = (
    b"code,flag,day,when,stamp,note\n"
    b" 007 ,yes,2024-01-31,31/01/2024,2024-01-31 08:15:00,  spaced  \n"
    b"12,No,2024-02-29,29/02/2024,2024-02-29T23:59,\ttabbed\n"
    b"-3,1,2023-12-01,1/12/2023,2023-12-01,plain\n"
    b",FALSE,,,,gaps\n"
    b"x,maybe,soon,2024-13-01,later,last\n"
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module: every test here only reads the datasets it uploads once."""
    settings = make_settings(tmp_path_factory.mktemp("clean"))
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)


@pytest.fixture(scope="module")
def ids(api: Api) -> dict[str, str]:
    found = {name: api.upload_ok(DATA / name) for name in FILES}
    found["messy.csv"] = api.upload_ok(MESSY, "messy.csv")
    return found


def _read(name: str) -> pd.DataFrame:
    if name == "messy.csv":  # every column as text, as the server reads it (empty cells missing)
        return pd.read_csv(io.BytesIO(MESSY), dtype=str, keep_default_na=False).replace("", None)
    return pd.read_csv(DATA / name, parse_dates=["pickup", "dropoff"] if name == "taxis.csv" else None)


def _answer(api: Api, dataset_id: str, steps: list[dict[str, Any]], *, pipeline: bool = False) -> dict[str, Any]:
    if pipeline:
        got = api.data(PIPELINE, {"id": dataset_id, "steps": steps})["dataset"]["pipeline"]["rows"]
    else:
        got = api.data(CLEAN, {"id": dataset_id, "steps": steps})["dataset"]["clean"]["rows"]
    assert isinstance(got, dict)
    return got


def _ok(api: Api, dataset_id: str, steps: list[dict[str, Any]], *, pipeline: bool = False) -> list[dict[str, Any]]:
    answer = _answer(api, dataset_id, steps, pipeline=pipeline)
    assert answer["success"], answer["error"]
    rows: list[dict[str, Any]] = answer["data"]
    return rows


def _bad(api: Api, dataset_id: str, steps: list[dict[str, Any]]) -> str:
    answer = _answer(api, dataset_id, steps)
    assert answer["success"] is False and answer["data"] is None, answer
    assert answer["error"]["code"] == "BAD_INPUT", answer["error"]
    message: str = answer["error"]["message"]
    assert "Traceback" not in message and "polars" not in message.lower() and "/tmp" not in message
    return message


def _plain(value: Any) -> Any:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (pd.Timestamp, dt.date)):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _same(got: Any, want: Any) -> bool:
    if isinstance(got, (int, float)) and isinstance(want, (int, float)) and not isinstance(got, bool):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    return bool(got == want)


def _assert_rows(got: list[dict[str, Any]], expected: pd.DataFrame) -> None:
    want = _records(expected)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g) == list(w), (i, list(g), list(w))
        assert all(_same(g[k], w[k]) for k in w), (i, g, w)


Case = tuple[str, list[dict[str, Any]], Callable[[pd.DataFrame], pd.DataFrame]]


def _case_id(value: Any) -> str:
    """Test ids: the file's stem, the steps as compact JSON, nothing for the pandas side."""
    if isinstance(value, str):
        return value.removesuffix(".csv")
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return json.dumps(value, separators=(",", ":"))[:70] or "[]"
    return "-"


TEXT_COLUMNS = ["sex", "embarked", "class", "who", "deck", "embark_town", "alive"]
PENGUIN_NUMBERS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]

DROP_NULLS: list[Case] = [
    ("titanic.csv", [{"dropNulls": {}}], lambda f: f.dropna()),
    ("titanic.csv", [{"dropNulls": {"columns": ["age"]}}], lambda f: f.dropna(subset=["age"])),
    (
        "titanic.csv",
        [{"dropNulls": {"how": "ALL", "columns": ["age", "deck"]}}],
        lambda f: f.dropna(how="all", subset=["age", "deck"]),
    ),
    ("penguins.csv", [{"dropNulls": {"how": "ANY"}}], lambda f: f.dropna()),
    (
        "penguins.csv",
        [{"dropNulls": {"how": "ALL", "columns": PENGUIN_NUMBERS}}],
        lambda f: f.dropna(how="all", subset=PENGUIN_NUMBERS),
    ),
]


@pytest.mark.parametrize(("file", "steps", "pandas"), DROP_NULLS, ids=lambda case: _case_id(case))
def test_drop_nulls_keeps_the_rows_pandas_dropna_keeps(
    api: Api,
    ids: dict[str, str],
    file: str,
    steps: list[dict[str, Any]],
    pandas: Callable[[pd.DataFrame], pd.DataFrame],
) -> None:
    frame = _read(file)
    expected = pandas(frame)
    assert 0 < len(expected) < len(frame)
    _assert_rows(_ok(api, ids[file], steps), expected)


FILL_NULLS: list[Case] = [
    ("titanic.csv", [{"fillNulls": {"value": 0, "columns": ["age"]}}], lambda f: f.fillna({"age": 0})),
    ("titanic.csv", [{"fillNulls": {"value": "unknown"}}], lambda f: f.fillna(dict.fromkeys(TEXT_COLUMNS, "unknown"))),
    ("titanic.csv", [{"fillNulls": {"value": 29.5}}], lambda f: f.fillna({"age": 29.5, "fare": 29.5})),  # float columns
    (
        "titanic.csv",
        [{"fillNulls": {"strategy": "MEAN", "columns": ["age"]}}],
        lambda f: f.fillna({"age": f["age"].mean()}),
    ),
    ("penguins.csv", [{"fillNulls": {"strategy": "MEAN"}}], lambda f: f.fillna(f.mean(numeric_only=True))),
    ("penguins.csv", [{"fillNulls": {"strategy": "FORWARD"}}], lambda f: f.ffill()),
    (
        "taxis.csv",
        [{"fillNulls": {"strategy": "FORWARD", "columns": ["payment", "pickup_borough"]}}],
        lambda f: f.assign(payment=f["payment"].ffill(), pickup_borough=f["pickup_borough"].ffill()),
    ),
]


@pytest.mark.parametrize(("file", "steps", "pandas"), FILL_NULLS, ids=lambda case: _case_id(case))
def test_fill_nulls_gives_what_pandas_fillna_gives(
    api: Api,
    ids: dict[str, str],
    file: str,
    steps: list[dict[str, Any]],
    pandas: Callable[[pd.DataFrame], pd.DataFrame],
) -> None:
    frame = _read(file)
    expected = pandas(frame)
    assert expected.isna().sum().sum() < frame.isna().sum().sum()
    _assert_rows(_ok(api, ids[file], steps), expected)


def test_fill_nulls_converts_a_whole_number_and_an_iso_date_to_the_column_type(api: Api) -> None:
    dataset_id = api.upload_ok(b"n,day,ok\n1,2024-01-02,true\n,,\n3,2024-01-05,false\n", "gaps.csv")
    steps = [
        {"fillNulls": {"value": 2.0, "columns": ["n"]}},
        {"fillNulls": {"value": "2024-01-01", "columns": ["day"]}},
    ]
    steps.append({"fillNulls": {"value": False}})
    answer = _answer(api, dataset_id, steps)
    assert answer["success"], answer["error"]
    frame = pd.DataFrame({"n": [1, None, 3], "day": ["2024-01-02", None, "2024-01-05"], "ok": [True, None, False]})
    expected = frame.fillna({"n": 2, "day": "2024-01-01", "ok": False}).astype({"n": int, "ok": bool})
    _assert_rows(answer["data"], expected)
    assert [c["dtype"] for c in answer["meta"]["columns"]] == ["Int64", "Date", "Boolean"]


CASTS: list[tuple[str, str, str, str, Callable[[pd.Series], pd.Series]]] = [
    ("titanic.csv", "survived", "BOOLEAN", "Boolean", lambda s: s.astype(bool)),
    ("titanic.csv", "adult_male", "INT", "Int64", lambda s: s.astype(int)),
    ("titanic.csv", "pclass", "FLOAT", "Float64", lambda s: s.astype(float)),
    ("titanic.csv", "fare", "TEXT", "String", lambda s: s.astype(str)),
    ("penguins.csv", "body_mass_g", "TEXT", "String", lambda s: s.astype("Int64").astype(str).replace("<NA>", None)),
    ("penguins.csv", "flipper_length_mm", "FLOAT", "Float64", lambda s: s.astype(float)),
    ("taxis.csv", "pickup", "DATE", "Date", lambda s: s.dt.date),
    ("taxis.csv", "dropoff", "TEXT", "String", lambda s: s.astype(str)),
    ("messy.csv", "code", "INT", "Int64", lambda s: pd.to_numeric(s.str.strip()).astype("Int64")),
    ("messy.csv", "code", "FLOAT", "Float64", lambda s: s.astype(float)),
    (
        "messy.csv",
        "flag",
        "BOOLEAN",
        "Boolean",
        lambda s: s.str.lower().map({"yes": True, "no": False, "1": True, "false": False}),
    ),
    ("messy.csv", "day", "DATE", "Date", lambda s: pd.to_datetime(s, format="%Y-%m-%d").dt.date),
    ("messy.csv", "stamp", "DATETIME", "Datetime", lambda s: pd.to_datetime(s, format="ISO8601")),
]


@pytest.mark.parametrize(("file", "column", "to", "dtype", "pandas"), CASTS, ids=[f"{c[1]}-{c[2]}" for c in CASTS])
def test_cast_converts_as_pandas_astype_does(
    api: Api, ids: dict[str, str], file: str, column: str, to: str, dtype: str, pandas: Callable[[pd.Series], pd.Series]
) -> None:
    frame = _read(file)
    steps: list[dict[str, Any]] = [{"clean": [{"cast": {"columns": [column], "to": to}}]}]
    if file == "messy.csv":  # its last row holds the values that do not convert
        steps.insert(0, {"filter": [{"column": "note", "op": "NE", "value": "last"}]})
        frame = frame[frame["note"] != "last"]
    answer = _answer(api, ids[file], steps, pipeline=True)
    assert answer["success"], answer["error"]
    assert {c["name"]: c["dtype"] for c in answer["meta"]["columns"]}[column] == dtype
    _assert_rows(answer["data"], frame.assign(**{column: pandas(frame[column])}))


def test_cast_failure_names_the_column_counts_the_values_and_shows_the_first(api: Api, ids: dict[str, str]) -> None:
    age = _read("titanic.csv")["age"]
    fractional = age[age.notna() & (age % 1 != 0)]
    message = _bad(api, ids["titanic.csv"], [{"cast": {"columns": ["age"], "to": "INT"}}])
    shown = ", ".join(repr(v) for v in fractional.unique()[:3].tolist())
    assert (
        message
        == f'clean cast: "age" to INT failed for {len(fractional)} values, e.g. {shown}; INT needs whole numbers.'
    )

    message = _bad(api, ids["messy.csv"], [{"trim": {}}, {"cast": {"columns": ["code", "day"], "to": "INT"}}])
    assert message.startswith('clean cast: "code" to INT failed for 1 value, e.g. "x";'), message
    message = _bad(api, ids["messy.csv"], [{"cast": {"columns": ["day"], "to": "DATE"}}])
    assert '"day" to DATE failed for 1 value, e.g. "soon"' in message and "parseDates" in message


def test_a_cast_failure_is_reported_by_every_result_that_reads_the_column(api: Api, ids: dict[str, str]) -> None:
    query = """query($id: ID!) { dataset(id: $id) { clean(steps: [{cast: {columns: ["embark_town"], to: FLOAT}}]) {
      describe(columns: ["embark_town"]) { success error { code message } }
      valueCounts(column: "embark_town") { success error { code message } } } } }"""
    frame = api.data(query, {"id": ids["titanic.csv"]})["dataset"]["clean"]
    towns = _read("titanic.csv")["embark_town"].dropna()
    for answer in frame.values():
        assert answer["success"] is False and answer["error"]["code"] == "BAD_INPUT"
        assert f'"embark_town" to FLOAT failed for {len(towns)} values' in answer["error"]["message"]


def test_rename_renames_at_once_as_pandas_rename(api: Api, ids: dict[str, str]) -> None:
    mapping = {"class": "klass", "who": "person", "sex": "alive", "alive": "sex"}
    steps = [{"rename": [{"from": old, "to": new} for old, new in mapping.items()]}]
    _assert_rows(_ok(api, ids["titanic.csv"], steps), _read("titanic.csv").rename(columns=mapping))


@pytest.mark.parametrize("keep", ["FIRST", "LAST", "NONE"])
@pytest.mark.parametrize("columns", [["class", "sex"], ["embark_town"], None])
def test_drop_duplicates_keeps_the_rows_and_order_pandas_keeps(
    api: Api, ids: dict[str, str], keep: str, columns: list[str] | None
) -> None:
    frame = _read("titanic.csv")
    expected = frame.drop_duplicates(subset=columns, keep={"FIRST": "first", "LAST": "last", "NONE": False}[keep])
    assert 0 < len(expected) < len(frame) or (keep == "NONE" and columns is not None)
    got = _ok(api, ids["titanic.csv"], [{"dropDuplicates": {"columns": columns, "keep": keep}}])
    _assert_rows(got, expected)


@pytest.mark.parametrize("columns", [None, ["note"]])
def test_trim_strips_whitespace_as_pandas_str_strip(api: Api, ids: dict[str, str], columns: list[str] | None) -> None:
    frame = _read("messy.csv")
    expected = frame.assign(**{c: frame[c].str.strip() for c in columns or frame.columns})
    assert not expected.equals(frame)
    _assert_rows(_ok(api, ids["messy.csv"], [{"trim": {"columns": columns}}]), expected)


PARSES = [
    (b"when\n31/01/2024\n1/2/2024\n\n29/02/2024\n", "%d/%m/%Y", "DATE"),
    (b"when\n31/01/2024 08:15\n1/2/2024 23:59\n\n29/02/2024 00:00\n", "%d/%m/%Y %H:%M", "DATETIME"),
    (b'when\n"Jan 31, 2024"\n"Feb 1, 2024"\n', "%b %d, %Y", "DATE"),
    (b"when\n20240131 0815\n20240201 2359\n", "%Y%m%d %H%M", "DATETIME"),
]


@pytest.mark.parametrize(("content", "fmt", "to"), PARSES, ids=[p[1] for p in PARSES])
def test_parse_dates_reads_what_pandas_to_datetime_reads(api: Api, content: bytes, fmt: str, to: str) -> None:
    dataset_id = api.upload_ok(content, "dates.csv")
    got = _ok(api, dataset_id, [{"parseDates": {"columns": ["when"], "format": fmt, "to": to}}])
    parsed = pd.to_datetime(pd.read_csv(io.BytesIO(content), dtype=str, skip_blank_lines=False)["when"], format=fmt)
    expected = pd.DataFrame({"when": parsed.dt.date if to == "DATE" else parsed})
    assert expected["when"].notna().sum() >= 2
    _assert_rows(got, expected)


def test_parse_dates_mismatch_names_the_column_the_format_and_the_values(api: Api, ids: dict[str, str]) -> None:
    text = _read("messy.csv")["when"]
    bad = text[text.notna() & pd.to_datetime(text, format="%d/%m/%Y", errors="coerce").isna()]
    message = _bad(api, ids["messy.csv"], [{"parseDates": {"columns": ["when"], "format": "%d/%m/%Y"}}])
    shown = ", ".join(f'"{v}"' for v in bad.unique()[:3])
    values, verb = (f"{len(bad)} values", "do") if len(bad) != 1 else ("1 value", "does")
    assert message == f'clean parseDates: {values} of "when" {verb} not match the format "%d/%m/%Y", e.g. {shown}.'


BAD_STEPS: list[tuple[str, list[dict[str, Any]], list[str]]] = [
    ("titanic.csv", [{"dropNulls": {"columns": ["age", "ghost"]}}], ['"ghost"', "Columns: survived, pclass"]),
    ("titanic.csv", [{"fillNulls": {"value": "young", "columns": ["age"]}}], ['"age"', "a number"]),
    ("titanic.csv", [{"fillNulls": {"value": 2.5, "columns": ["pclass"]}}], ['"pclass"', "whole number"]),
    ("titanic.csv", [{"fillNulls": {"value": 1, "columns": ["alone"]}}], ['"alone"', "true or false"]),
    ("titanic.csv", [{"fillNulls": {"value": [1, 2]}}], ["one number, text"]),
    ("titanic.csv", [{"fillNulls": {"columns": ["age"]}}], ["needs a value"]),
    ("titanic.csv", [{"fillNulls": {"strategy": "FORWARD", "value": 0}}], ["takes no value"]),
    ("titanic.csv", [{"fillNulls": {"strategy": "MEAN", "columns": ["deck"]}}], ['"deck"', "numeric"]),
    ("titanic.csv", [{"cast": {"columns": ["ghost"], "to": "INT"}}], ['"ghost"', "Columns:"]),
    ("taxis.csv", [{"cast": {"columns": ["pickup"], "to": "FLOAT"}}], ['"pickup"', "cannot become FLOAT"]),
    ("titanic.csv", [{"cast": {"columns": ["fare"], "to": "DATE"}}], ['"fare"', "parseDates"]),
    ("titanic.csv", [{"rename": [{"from": "sex", "to": "age"}]}], ['"sex" and "age"', '"age"']),
    ("titanic.csv", [{"rename": [{"from": "sexx", "to": "gender"}]}], ['"sexx"', "Columns:"]),
    ("titanic.csv", [{"rename": [{"from": "sex", "to": "a"}, {"from": "sex", "to": "b"}]}], ['"sex" is renamed twice']),
    ("titanic.csv", [{"rename": [{"from": "sex", "to": " "}]}], ['"sex"', "empty"]),
    ("titanic.csv", [{"rename": []}], ["at least one"]),
    ("titanic.csv", [{"dropDuplicates": {"columns": []}}], ["at least one column"]),
    ("titanic.csv", [{"dropDuplicates": {"columns": ["ghost"]}}], ['"ghost"']),
    ("titanic.csv", [{"trim": {"columns": ["age"]}}], ['"age"', "not text"]),
    ("titanic.csv", [{"parseDates": {"columns": ["age"], "format": "%Y"}}], ['"age"', "not text"]),
    ("titanic.csv", [{"parseDates": {"columns": ["sex"], "format": "%H:%M"}}], ['"%H:%M"', "year"]),
    ("titanic.csv", [{"parseDates": {"columns": ["sex"], "format": "%Y"}}], ['of "sex" do not match', '"male"']),
    (
        "titanic.csv",
        [{"rename": [{"from": "sex", "to": "gender"}]}, {"trim": {"columns": ["sex"]}}],
        ['"sex"', "gender"],
    ),
    ("titanic.csv", [], ["at least one step"]),
]


@pytest.mark.parametrize(("file", "steps", "fragments"), BAD_STEPS, ids=lambda case: _case_id(case))
def test_a_wrong_step_is_bad_input_naming_what_was_wrong(
    api: Api, ids: dict[str, str], file: str, steps: list[dict[str, Any]], fragments: list[str]
) -> None:
    message = _bad(api, ids[file], steps)
    assert message.startswith("clean"), message
    assert all(f in message for f in fragments), message


def test_steps_apply_in_order_and_chain_with_other_transforms(api: Api, ids: dict[str, str]) -> None:
    query = """query($id: ID!, $steps: [CleanStep!]!) { dataset(id: $id) {
      clean(steps: $steps) { groupBy(by: ["town"], aggregations: [{column: "fare", fn: COUNT}]) { rows { success data } } } } }"""
    steps = [
        {"fillNulls": {"value": "nowhere", "columns": ["embark_town"]}},
        {"rename": [{"from": "embark_town", "to": "town"}]},
        {"dropDuplicates": {"columns": ["town", "fare"], "keep": "LAST"}},
    ]
    answer = api.data(query, {"id": ids["titanic.csv"], "steps": steps})["dataset"]["clean"]["groupBy"]["rows"]
    frame = _read("titanic.csv").fillna({"embark_town": "nowhere"}).rename(columns={"embark_town": "town"})
    expected = frame.drop_duplicates(["town", "fare"], keep="last").groupby("town")["fare"].count()
    assert answer["data"] == [{"town": t, "fare_count": n} for t, n in expected.items()]


def test_nested_clean_and_pipeline_clean_share_a_cache_key(api: Api, ids: dict[str, str]) -> None:
    steps: list[dict[str, Any]] = [
        {"dropNulls": {"columns": ["embarked"]}},
        {"fillNulls": {"strategy": "MEAN", "columns": ["age"]}},
        {"cast": {"columns": ["pclass"], "to": "TEXT"}},
        {"rename": [{"from": "class", "to": "klass"}]},
        {"dropDuplicates": {"keep": "LAST"}},
        {"trim": {}},
    ]
    nested = _answer(api, ids["titanic.csv"], steps)
    piped = _answer(api, ids["titanic.csv"], [{"clean": steps}], pipeline=True)
    assert nested["success"] and piped["success"]
    assert nested["meta"]["cacheKey"] == piped["meta"]["cacheKey"]
    assert nested["data"] == piped["data"]
    # Spelling out a default is the same step; changing any part is another.
    explicit = [{"dropNulls": {"how": "ANY", "columns": ["embarked"]}}, *steps[1:4], *steps[4:]]
    explicit[5] = {"trim": {"columns": None}}
    assert _answer(api, ids["titanic.csv"], explicit)["meta"]["cacheKey"] == nested["meta"]["cacheKey"]
    for changed in ({"dropDuplicates": {"keep": "FIRST"}}, {"dropDuplicates": {"keep": "LAST", "columns": ["age"]}}):
        other = [*steps[:4], changed, steps[5]]
        assert _answer(api, ids["titanic.csv"], other)["meta"]["cacheKey"] != nested["meta"]["cacheKey"]


def test_cast_error_while_collecting_is_translated_to_the_users_terms() -> None:
    frame = pl.DataFrame({"age": ["1", "abc", "n/a"]}).lazy()
    with pytest.raises(pl.exceptions.InvalidOperationError) as raised:
        frame.select(pl.col("age").cast(pl.Int64)).collect()
    translated = translate_error(raised.value)
    assert isinstance(translated, BadInput)
    # Polars reports whichever bad value its threads met first, so either may be named.
    assert re.match(r'clean: "age" does not convert to INT; values such as "(abc|n/a)"', translated.message)
    assert translate_error(pl.exceptions.ComputeError("something else")) is None
    assert translate_error(ValueError("conversion from `str` to `i64` failed in column 'age'")) is None
