"""Pages of rows are encoded to JSON where they are read (in a worker) and pass through the cache and
the response as bytes: the bytes are the ones the server wrote before (orjson of the records, NaN
and infinities as null, dates as ISO text, decimals as numbers), and a cached page is the same bytes."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterator

import numpy as np
import orjson
import polars as pl
import pytest
from support import Api, make_settings, serving

import engine
from datagraph import jsonutil
from engine import Plan, Source

FRAME = pl.DataFrame(
    {
        "n": [1, None, -3, 2**40],
        "x": [1.5, math.nan, math.inf, None],
        "neg": [-math.inf, 0.1, 1e300, -0.0],
        "day": [dt.date(2024, 1, 31), None, dt.date(1900, 1, 1), dt.date(2099, 12, 31)],
        "at": [dt.datetime(2024, 1, 31, 12, 30, 5, 123456), None, dt.datetime(1970, 1, 1), dt.datetime(2000, 2, 29)],
        "price": pl.Series(
            [decimal.Decimal("1.10"), None, decimal.Decimal("-2.50"), decimal.Decimal("0")], dtype=pl.Decimal(10, 2)
        ),
        "text": ["plain", 'quo"te\nnew line', "ünïcødé ✓", None],
        "flag": [True, False, None, True],
        "took": [dt.timedelta(seconds=90), None, dt.timedelta(milliseconds=5), dt.timedelta(days=1)],
    }
)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    path = tmp_path_factory.mktemp("encoding") / "v1.parquet"
    FRAME.write_parquet(path)
    return Plan(Source("mixed", 1, path), ())


def test_a_page_is_the_bytes_the_records_encoded_to(plan: Plan) -> None:
    for limit, offset in [(4, 0), (2, 1), (10, 3), (0, 0)]:
        page = engine.page(plan, limit=limit, offset=offset)
        reference = engine.rows(plan, limit=limit, offset=offset)
        assert page.json == jsonutil.dumps(reference.records)  # the server's encoding of the same frame
        assert (page.count, page.columns, page.truncated) == (
            len(reference.records),
            reference.columns,
            reference.truncated,
        )


def _native_frame() -> pl.DataFrame:
    """Columns of the types Polars writes itself: floats from every range (NaN, infinities, -0.0,
    subnormals, the largest), text with control and non-ASCII characters, timestamps in us and ms."""
    rng = np.random.default_rng(18)
    n = 4000
    extremes = [
        0.0,
        -0.0,
        1.0,
        0.1,
        1e16,
        1e17,
        1e21,
        1e22,
        1.5e-7,
        5e-324,
        1.7976931348623157e308,
        math.nan,
        math.inf,
        -math.inf,
    ]
    floats = np.concatenate(
        [rng.normal(0, 1e6, n // 2), np.exp(rng.uniform(-700, 700, n // 2 - len(extremes))), extremes]
    )
    moments = [
        dt.datetime(1, 1, 1) + dt.timedelta(microseconds=int(m)) for m in rng.integers(0, 315_537_897_599_999_999, n)
    ]
    moments[:4] = [
        dt.datetime(2024, 1, 31),
        dt.datetime(1970, 1, 1, 0, 0, 0, 10),
        dt.datetime(999, 5, 5, 1, 1, 1, 500000),
        None,
    ]  # type: ignore[list-item]
    return pl.DataFrame(
        {
            "x": floats,
            "s": ["".join(chr(c) for c in rng.integers(0, 0x2FF, 6)) + '"\\/✓' for _ in range(n)],
            "i": rng.integers(-(2**63), 2**63 - 1, n),
            "u": pl.Series(rng.integers(0, 2**63, n), dtype=pl.UInt64) * 2,
            "small": pl.Series(rng.integers(-128, 127, n), dtype=pl.Int8),
            "b": [None if k % 7 == 0 else bool(k % 2) for k in range(n)],
            "at": moments,
            "ms": pl.Series(moments).cast(pl.Datetime("ms")),
            "day": [m.date() if m is not None else None for m in moments],
            "nothing": [None] * n,
            'odd "name"\n': rng.random(n),
        }
    )


def test_polars_writes_the_same_bytes_as_the_records_encode_to() -> None:
    frame = _native_frame()
    assert engine.records_json(frame) == jsonutil.dumps(frame.to_dicts())
    assert engine.records_json(frame.head(0)) == jsonutil.dumps([]) == b"[]"


def test_other_column_types_are_encoded_through_python_values() -> None:
    frame = FRAME.with_columns(
        pl.col("x").cast(pl.Float32).alias("f32"),
        pl.col("at").dt.replace_time_zone("Europe/Paris").alias("zoned"),
        pl.col("at").cast(pl.Datetime("ns")).alias("ns"),
        pl.col("text").cast(pl.Categorical).alias("cat"),
        pl.col("n").map_elements(lambda v: [v], return_dtype=pl.List(pl.Int64)).alias("listed"),
    )
    assert engine.records_json(frame) == jsonutil.dumps(frame.to_dicts())


def test_nan_inf_dates_and_decimals_encode_as_before(plan: Plan) -> None:
    first, second, third, _ = orjson.loads(engine.page(plan, limit=4, offset=0).json)
    assert second["x"] is None and third["x"] is None and first["neg"] is None  # NaN, inf, -inf: null
    assert first["day"] == "2024-01-31" and first["at"] == "2024-01-31T12:30:05.123456"
    assert first["price"] == 1.1 and third["price"] == -2.5 and second["price"] is None
    assert first["took"] == 90.0 and second["text"] == 'quo"te\nnew line' and third["text"] == "ünïcødé ✓"


def test_encoded_json_is_written_as_it_is() -> None:
    inner = jsonutil.dumps([{"a": math.nan}])
    assert jsonutil.dumps({"data": jsonutil.Encoded(inner)}) == b'{"data":[{"a":null}]}'


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(make_settings(tmp_path_factory.mktemp("api"))) as api:
        yield api


def test_a_page_through_the_api_uncached_and_cached_is_the_same_bytes(api: Api) -> None:
    csv = b"n,x,day,text\n" + b"".join(
        b"%d,%s,2024-01-%02d,t%d\n" % (i, b"NaN" if i % 3 else b"%d.5" % i, 1 + i % 28, i) for i in range(50)
    )
    dataset = api.upload_ok(csv, "enc.csv")
    query = '{ dataset(id: "%s") { rows(limit: 20, offset: 5, cache: %s) { data meta { cached } } } }'
    bodies = []
    for mode in ("BYPASS", "USE", "USE"):
        response = api.client.post("/graphql", json={"query": query % (dataset, mode)})
        assert response.status_code == 200
        bodies.append(response.content)
    expected = pl.read_csv(csv, null_values=["NaN"], try_parse_dates=True).slice(5, 20).to_dicts()
    assert orjson.loads(bodies[0])["data"]["dataset"]["rows"]["data"] == orjson.loads(jsonutil.dumps(expected))
    assert b'"cached":false' in bodies[1] and b'"cached":true' in bodies[2]
    assert bodies[0] == bodies[1] == bodies[2].replace(b'"cached":true', b'"cached":false')
