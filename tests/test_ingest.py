"""CSV ingest in the worker (`connectors.ingest`), run on files written here: the streaming typing
gives every column the type and values the in-memory rules give it (those the Excel path uses,
and the CSV path used when it held the file), pandas' missing-value tokens are missing wherever
they stand, and a file that is not UTF-8 is refused naming the line, wherever that line is."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from connectors import NA_TOKENS, IngestLimits, ingest
from connectors._files import _parse_dates, _type_columns
from datagraph.errors import BadInput

LIMITS = IngestLimits(max_columns=100, max_rows=1_000_000, xlsx_max_uncompressed=1 << 20, xlsx_max_ratio=100, xlsx_max_entries=100)  # fmt: skip
ROWS = 12_000  # past the 10,000 rows read at once for the samples

# Values of each kind, with the spellings where a rule could go either way.
KINDS: dict[str, list[str]] = {
    "int": ["0", "7", "-3", "007", "+5", "123456789012", "-0"],
    "float": ["1.5", "-0.25", "1e5", "2.5E-3", ".5", "5.", "inf", "-inf", "3"],
    "bool": ["True", "TRUE", "true", "False", "FALSE", "false"],
    "date": ["2024-01-31", "1999-12-01", "2024-02-29", "0001-01-01"],
    "datetime": ["2024-01-31T08:15:00", "2023-06-01T23:59:59", "2020-02-29T00:00:00"],
    "datetime-space": ["2024-01-31 08:15", "2023-06-01 23:59"],
    "datetime-fraction": ["2024-01-31T08:15:00.5", "2023-06-01T23:59:59.123456", "2021-07-14T05:34:49.000"],
    "text": ["cat", "a b", "N/A ", "x,y", 'say "hi"', "é", "line\nbreak"],
}
# A value that may break a column's rule, and where it lands.
ODD = [" 5", "5 ", "1_000", "99999999999999999999", "tRuE", "yes", "2024-02-30", "2024-1-05", "24:00:00",
       "2024-01-31T25:00:00", "2024-01-31 08:15:00", "1.5", "12", "true", "2024-03-01", "nan", "NaN", "-NaN", "NA",
       "", "seven", "0x10", "1,5", "１２"]  # fmt: skip


def _column(rng: random.Random) -> list[str | None]:
    """One column's values: one kind, some missing (None: an empty field), maybe an odd value."""
    kind = rng.choice(list(KINDS))
    values: list[str | None] = [rng.choice(KINDS[kind]) for _ in range(ROWS)]
    for _ in range(rng.choice([0, 5, 500])):
        values[rng.randrange(ROWS)] = rng.choice([None, *NA_TOKENS])
    if rng.random() < 0.3:
        values = [None] * rng.choice([100, 11_000]) + values[: ROWS - 11_000]  # sparse at the head
        values += [rng.choice(KINDS[kind]) for _ in range(ROWS - len(values))]
    if rng.random() < 0.7:
        where = rng.choice([0, 500, 999, 5_000, 10_500, ROWS - 1])
        values[where] = rng.choice(ODD)
    return values


def _write_csv(path: Path, columns: dict[str, list[str | None]], rng: random.Random) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), lineterminator="\n")
    writer.writerow(columns)
    for row in zip(*columns.values(), strict=True):
        writer.writerow(["" if v is None else v for v in row])
    path.write_text(buffer.getvalue(), "utf-8")


def _reference(path: Path) -> pl.DataFrame:
    """The in-memory rules on the whole file read as text, pandas' tokens missing."""
    frame = pl.read_csv(path, infer_schema=False, null_values=NA_TOKENS)
    return _parse_dates(_type_columns(frame))


@pytest.mark.parametrize("seed", range(6))
def test_streaming_ingest_types_every_column_as_the_in_memory_rules_do(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    columns = {f"c{i}": _column(rng) for i in range(10)}
    src = tmp_path / "mixed.csv"
    _write_csv(src, columns, rng)
    result = ingest(src, "csv", tmp_path / "out.parquet", LIMITS)
    written = pl.read_parquet(tmp_path / "out.parquet")
    expected = _reference(src)
    assert written.schema == expected.schema
    assert written.equals(expected, null_equal=True)
    assert result.row_count == ROWS
    assert [(c.name, c.dtype, c.null_count) for c in result.columns] == [
        (n, str(d.base_type()), expected.get_column(n).null_count()) for n, d in expected.schema.items()
    ]
    kinds = {str(d.base_type()) for d in expected.schema.values()}
    assert len(kinds) >= 3, kinds  # the seeds between them reach every type; each file several


def test_every_pandas_missing_value_token_is_missing_quoted_or_not(tmp_path: Path) -> None:
    lines = ["n,label,quoted"]
    lines += [f'{i},{token},"{token}"' for i, token in enumerate(NA_TOKENS)]
    lines += [f'{len(NA_TOKENS)}, NA,"NA "', f"{len(NA_TOKENS) + 1},text,x"]  # spaced: not a token
    src = tmp_path / "tokens.csv"
    src.write_text("\n".join(lines) + "\n", "utf-8")
    ingest(src, "csv", tmp_path / "out.parquet", LIMITS)
    written = pl.read_parquet(tmp_path / "out.parquet")
    oracle = pd.read_csv(src, dtype=str)
    for name in ("label", "quoted"):
        assert written.get_column(name).is_null().to_list() == oracle[name].isna().tolist(), name
    assert written.get_column("label").to_list()[-2:] == [" NA", "text"]
    # An integer column with tokens in it is still integers, the tokens missing.
    ints = tmp_path / "ints.csv"
    ints.write_text("v\n" + "\n".join(["1", *NA_TOKENS, "2"]) + "\n", "utf-8")
    result = ingest(ints, "csv", tmp_path / "ints.parquet", LIMITS)
    assert [(c.dtype, c.null_count) for c in result.columns] == [("Int64", len(NA_TOKENS))]


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("naïve,b\n1,2\n".encode("latin-1"), 1),  # in the header, whose names Polars is given, not reading them
        (b"a,b\n" + b"x,1\n" * 20_000 + b"\xe9t\xe9,2\n" + b"y,3\n", 20_002),  # far past the samples
        (b'a,b\n"x\xff",1\n', 2),  # inside quotes
    ],
    ids=["header", "late", "quoted"],
)
def test_text_that_is_not_utf8_is_refused_naming_its_line(tmp_path: Path, content: bytes, line: int) -> None:
    src = tmp_path / "latin.csv"
    src.write_bytes(content)
    out = tmp_path / "out.parquet"
    with pytest.raises(BadInput, match=f"not UTF-8 text: line {line} has the byte") as caught:
        ingest(src, "csv", out, LIMITS)
    assert str(tmp_path) not in str(caught.value)
    assert not out.exists()
