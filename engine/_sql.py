"""Run checked SQL over dataset files with Polars' SQL context, and say its errors in the user's terms.

The SQL arrives checked and regenerated (`connectors.datasetsql`): one SELECT whose tables are
quoted dataset ids. Only those datasets are registered, each as a scan of its Parquet file, in a
fresh context that sees no Python globals. Polars' messages name the Parquet files it scans and
print its plan; the message a client gets is the first paragraph of Polars' own, with every server
path replaced by the dataset it belongs to (or `<path>`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from datagraph.errors import BadInput

__all__ = ["run_sql", "scrub_paths", "sql_error"]

_PATH = re.compile(r"(?<![\w.])/[^\s\]\)\"',]+")
_LONGEST = 400


def run_sql(sql: str, tables: Mapping[str, Path]) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """The query's rows as a LazyFrame over `tables` ({dataset id: Parquet file or folder of parts}),
    and its schema; a query Polars refuses is a `BadInput`."""
    context = pl.SQLContext({name: pl.scan_parquet(path) for name, path in tables.items()}, register_globals=False)
    try:
        frame = context.execute(sql, eager=False)
        return frame, dict(frame.collect_schema())
    except pl.exceptions.PolarsError as exc:
        raise sql_error(exc, tables) from None


def sql_error(exc: BaseException, tables: Mapping[str, Path]) -> BadInput:
    """A Polars error from SQL over datasets as a `BadInput`: its first paragraph, paths replaced."""
    text = " ".join(str(exc).strip().split("\n\n", 1)[0].split())
    text = scrub_paths(text, {path: f"dataset {name}" for name, path in tables.items()})
    if len(text) > _LONGEST:
        text = text[: _LONGEST - 3] + "..."
    return BadInput(f"The SQL could not run: {text or type(exc).__name__}")


def scrub_paths(text: str, named: Mapping[Path, str]) -> str:
    """`text` (an error, a plan) with each of `named`'s paths shown as its label, the longest first
    (a folder's parts inside it), and any other absolute path as <path>: no server path reaches a client."""
    for path, label in sorted(named.items(), key=lambda item: -len(str(item[0]))):
        text = text.replace(str(path), label)
    return _PATH.sub("<path>", text)
